# Two entry points for users: `make demo` and `make test`. Both create the environment on first use.
PY ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.tempsamp-installed

.PHONY: env sysdeps demo test bench clean-env

$(STAMP): pyproject.toml scripts/setup_env.sh
	PY=$(PY) bash scripts/setup_env.sh $(VENV)
	touch $(STAMP)

env: $(STAMP)

# Debian packages the tests need (prometheus, chromium); installs only what is missing
sysdeps:
	bash scripts/system_packages.sh

demo: $(STAMP)
	$(BIN)/tempsamp demo --out outputs/demo

test: $(STAMP) sysdeps
	$(BIN)/python -m pytest -q -n 2 --dist loadfile --no-loadscope-reorder --timeout 900 --durations=15 tests

bench: $(STAMP)
	$(BIN)/python benchmarks/decode.py

clean-env:
	rm -rf $(VENV)
