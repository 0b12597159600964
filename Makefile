# Both targets create the virtual environment themselves (Python >= 3.11 as $(PYTHON)).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: run test bench clean

run: $(STAMP)
	$(PY) -m genvis.main --config=configs/gpt_lm.py:size=tiny --workdir=runs/demo

# Two workers by default: XLA compiles on one thread, which left half of a 2-core machine idle.
# --dist loadscope keeps a module's tests on one worker, so its compiled fixtures are shared.
TEST_WORKERS ?= 2

test: $(STAMP)
	$(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadscope --durations=15

bench: $(STAMP)
	$(PY) experiments/bench/lm_shakespeare.py --data ../shared/data/tinyshakespeare.txt --config tiny --reference

$(STAMP): requirements.txt requirements-ref.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip 2>&1 | grep -v "is ignored" || true
	$(PY) -m pip install -q -r requirements.txt -r requirements-ref.txt 2>&1 | grep -v "is ignored" || true
	$(PY) -c "import jax, flax, optax, orbax.checkpoint, ml_collections, tensorflow_datasets, torch"
	touch $(STAMP)

clean:
	rm -rf $(VENV) runs .pytest_cache
