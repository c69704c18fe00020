# Two commands do everything on a fresh machine: `make demo` and `make test`.
# Both create .venv and install neuroflood into it. On a CPU-only machine the CPU build of
# torch is installed first (TORCH_SPEC); users with GPUs set TORCH_SPEC to their own torch.
PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
# `make demo SEED=1`: the demo with another training and test volume
SEED ?= 0
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: test lint demo install clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q "$(TORCH_SPEC)"
	$(BIN)/python -m pip install -q -e ".[test]"
	touch $(STAMP)

install: $(STAMP)

# ruff (configured in pyproject.toml) checks and format-checks the code before the tests run
lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks

test: $(STAMP) lint
	$(BIN)/python -m pytest -q

demo: $(STAMP)
	$(BIN)/neuroflood demo --out demo_out --seed $(SEED) --overwrite

clean:
	rm -rf $(VENV) demo_out
