# Two commands on a fresh machine:  `make demo` (the main job) and `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN     = $(VENV)/bin
# torch/torchvision are pinned to the releases this machine keeps on disk (no download).
TORCH_PINS = torch==2.14.1 torchvision==0.29.1

.PHONY: install demo test test-fast clean

$(BIN)/tscm: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q $(TORCH_PINS)
	$(BIN)/pip install -q -e '.[dev]'
	touch $@

install: $(BIN)/tscm

demo: install
	$(BIN)/tscm demo

test: install
	$(BIN)/python -m pytest

# The unit tests only (integration tests are marked slow): about 1.5 min on 2 cores (the full suite: about 7).
test-fast: install
	$(BIN)/python -m pytest -m "not slow"

clean:
	rm -rf $(VENV) build src/*.egg-info .pytest_cache
