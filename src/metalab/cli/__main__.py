"""``python -m metalab.cli`` (what benchmarks/accuracy.py runs)."""

import sys

from metalab.cli import main

sys.exit(main())
