"""``python -m metalab`` — the command line, e.g. under torchrun:
``torchrun -m metalab train ...``."""

import sys

from metalab.cli import main

sys.exit(main())
