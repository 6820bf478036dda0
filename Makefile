# Two commands on a fresh machine: `make demo` and `make test`. Both set up what they need.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

.PHONY: setup demo test lint models clean bench bench-quick

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	# torch first and pinned: the CPU build on this machine's disk, never the CUDA one.
	$(BIN)/pip install --quiet "torch==2.13.0"
	$(BIN)/pip install --quiet -e ".[dev,torch]"
	touch $(STAMP)

demo: setup
	$(BIN)/distinfer demo

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/lint-imports

test: lint
	$(BIN)/pytest -q

# Re-train and re-export the bundled demo models (deterministic; no downloads).
models: setup
	$(BIN)/python scripts/train_digits.py

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache *.egg-info

# Benchmarks (JSON under bench-results/). nginx is the reference proxy hop; installed when missing.
bench: setup
	command -v nginx >/dev/null || test -x /usr/sbin/nginx || { apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q nginx; } || echo "nginx not installed: measuring without it"
	$(BIN)/distinfer bench overhead

bench-quick: setup
	$(BIN)/distinfer bench overhead --quick
