# Two commands on a fresh machine: `make demo` and `make test`. Both set up what they need.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

.PHONY: setup system-packages demo test lint models clean bench bench-quick bench-balance bench-shard bench-scaleout bench-batching minilm bench-minilm bench-peer bench-peer-gateway

setup: $(STAMP) system-packages

# Debian packages the tests drive for real, installed when missing: dnsmasq-base (DNS SRV discovery),
# redis-server (the shared task store; tests start their own servers, never the system one).
system-packages:
	@command -v dnsmasq >/dev/null || test -x /usr/sbin/dnsmasq || { apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q dnsmasq-base; } || echo "dnsmasq not installed: the DNS discovery tests will be skipped"
	@command -v redis-server >/dev/null || test -x /usr/bin/redis-server || { apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q redis-server; } || echo "redis-server not installed: the shared task store tests will be skipped"

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	# torch first and pinned: the CPU build on this machine's disk, never the CUDA one.
	$(BIN)/pip install --quiet "torch==2.13.0"
	echo "torch==2.13.0" > $(VENV)/torch-constraint.txt
	$(BIN)/pip install --quiet -c $(VENV)/torch-constraint.txt -e ".[dev,torch,models]"
	touch $(STAMP)

demo: setup
	$(BIN)/distinfer demo

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/lint-imports

test: lint
	@# The MiniLM export (~7 s) feeds the sharding equivalence test; without it that test skips.
	@test -f $(MINILM) || $(BIN)/python scripts/export_minilm.py --out build/models || echo "MiniLM export failed: its tests skip"
	$(BIN)/pytest -q

# Re-train and re-export the bundled demo models (deterministic; no downloads).
models: setup
	$(BIN)/python scripts/train_digits.py
	$(BIN)/python scripts/train_charlm.py

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache *.egg-info

# Benchmarks (JSON under bench-results/). nginx is the reference proxy hop; installed when missing.
bench: setup
	command -v nginx >/dev/null || test -x /usr/sbin/nginx || { apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q nginx; } || echo "nginx not installed: measuring without it"
	$(BIN)/distinfer bench overhead

bench-quick: setup
	$(BIN)/distinfer bench overhead --quick

# Every balancing strategy with one 10x-slower node, then a node killed mid-load (QUICK=1: smoke run).
bench-balance: setup
	$(BIN)/distinfer bench balance $(if $(QUICK),--quick)

# 1 node vs a model cut into 2 stages on 2 nodes: micro-batches, relayed vs node-to-node (QUICK=1: ~1 min).
bench-shard: setup
	$(BIN)/distinfer bench shard $(if $(QUICK),--quick)

# 1, 2, 4 nodes serving one request at a time (20 ms model time): efficiency vs ideal, target 0.9 (QUICK=1: ~20 s).
bench-scaleout: setup
	$(BIN)/distinfer bench scaleout $(if $(QUICK),--quick)

# Dynamic batching on vs off, one node each, digits and MiniLM (when exported: `make minilm`) at c=1 and c=64;
# target 3x for digits at c=64 (QUICK=1: ~25 s).
bench-batching: setup
	$(BIN)/distinfer bench batching $(if $(QUICK),--quick)

# all-MiniLM-L6-v2 exported to ONNX from the offline PyPI package (~90 MB, not committed).
MINILM := build/models/minilm/model.onnx
minilm: $(MINILM)
$(MINILM): scripts/export_minilm.py | setup
	$(BIN)/python scripts/export_minilm.py --out build/models

bench-minilm: $(MINILM)
	$(BIN)/distinfer bench minilm

# Peers from their own venvs under build/venvs/ (made on first use, ~1.5 min each): MLServer vs a node,
# Ray Serve vs gateway + nodes at equal replicas. QUICK=1 for a smoke run.
bench-peer: setup
	$(BIN)/distinfer bench peer $(if $(QUICK),--quick)

bench-peer-gateway: setup
	$(BIN)/distinfer bench peer-gateway $(if $(QUICK),--quick)
