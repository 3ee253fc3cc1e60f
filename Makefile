# The two commands a fresh machine needs: `make serve` and `make test`.
# Each creates its own virtual environment (.venv-serve has no torch; .venv has everything).

PYTHON ?= python3
VENV ?= .venv
SERVE_VENV ?= .venv-serve
PYTEST_ARGS ?=
MNIST_DIR ?= ../shared/data/mnist
DEFAULT_PRESET ?= compact

.PHONY: serve test lint typecheck pytest bench bench-quick default-model seed-model clean

$(SERVE_VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(SERVE_VENV)
	$(SERVE_VENV)/bin/pip install --quiet -e '.[serve]'
	touch $@

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet -e '.[serve,train,dev]'
	touch $@

## serve: run the service on 127.0.0.1:8000 with the embedded default model
serve: $(SERVE_VENV)/.installed
	$(SERVE_VENV)/bin/vae-serve

## test: lint, format check, type check and the whole test suite
test: $(VENV)/.installed lint typecheck pytest

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

typecheck: $(VENV)/.installed
	$(VENV)/bin/mypy service training

pytest: $(VENV)/.installed
	$(VENV)/bin/pytest $(PYTEST_ARGS)

## bench: every benchmark (training, model path, HTTP, threading model, GC, start-up/memory); needs wrk
bench: $(VENV)/.installed
	$(VENV)/bin/python bench/run_all.py

## bench-quick: a ~2-minute smoke run of the same scripts (figures not for the record)
bench-quick: $(VENV)/.installed
	$(VENV)/bin/python bench/run_all.py --quick

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
	rm -rf $(VENV) $(SERVE_VENV) .pytest_cache .mypy_cache .ruff_cache
