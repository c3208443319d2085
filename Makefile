# The two-command start: `make demo` (set up, then the main job) and `make test` (set up, then the
# tests). Each sets up .venv first when it is missing (./setup.sh), so both work on a fresh machine.
VENV ?= .venv
PY := $(VENV)/bin/python
DATA ?= ../shared/data
RUN ?= runs/protonet

.PHONY: setup demo test lint format

$(VENV)/bin/metalab:
	./setup.sh $(VENV)

setup: $(VENV)/bin/metalab

# Meta-train Prototypical Networks on Omniglot (a few minutes on a CPU), then evaluate it on 1000
# fixed 5-way 1-shot test episodes. `make demo DATA=DIR` points at another Omniglot folder.
demo: setup
	$(VENV)/bin/metalab train configs/omniglot/protonet-cpu.yaml --data-dir $(DATA) --out $(RUN) \
		$(if $(wildcard $(RUN)/last.pt),--resume,)
	$(VENV)/bin/metalab eval $(RUN)

# Lint, format check, then the whole test suite (data tests use $(DATA) when it exists).
test: setup lint
	METALAB_TEST_DATA=$${METALAB_TEST_DATA:-$(abspath $(DATA))} $(PY) -m pytest

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: setup
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .
