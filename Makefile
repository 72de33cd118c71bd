# Two commands matter: `make demo` and `make test`. Both set up .venv on first use.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install demo test grokking clean

install: $(STAMP)

# torch goes first and pinned: an unpinned resolve pulls a multi-GB CUDA build.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $(STAMP)

# DEMO_SEED sets the model's random initialisation (the training seed is configs/demo/train.yaml's).
DEMO_SEED ?= 0
demo: $(STAMP)
	$(BIN)/python scripts/demo.py --seed $(DEMO_SEED)

test: $(STAMP)
	$(BIN)/python -m pytest -q -n 2

# A longer experiment (about 4 min here): memorise modular subtraction mod 31 by step ~100, then
# generalise to held-out pairs ~1,500 steps later (docs/grokking.md). GROKKING_SEED sets the model
# init (and train's --seed); the data split is fixed. Runs accumulate under runs/grokking-mod31,
# one per seed, and the last line says whether this run met the preset's criterion.
GROKKING_SEED ?= 0
GROK := runs/grokking-mod31
grokking: $(STAMP)
	test -f datasets/generated/mod31_sub/train.jsonl || $(BIN)/rg-tracer data modular --p 31 --op - --train-frac 0.5 --seed 0 --out datasets/generated/mod31_sub
	rm -rf $(GROK)/model
	$(BIN)/rg-tracer init-model $(GROK)/model --arch qwen2 --layers 1 --hidden 64 --heads 4 --number-tokens 31 --seed $(GROKKING_SEED)
	$(BIN)/rg-tracer train --config configs/grokking/mod31_sub.yaml --seed $(GROKKING_SEED) --output-dir $(GROK)/seed$(GROKKING_SEED) --overwrite
	$(BIN)/rg-tracer analyze $(GROK) --out reports/grokking
	$(BIN)/python scripts/grokking_check.py $(GROK)/seed$(GROKKING_SEED) reports/grokking/seed$(GROKKING_SEED)

clean:
	rm -rf $(VENV) runs reports/demo
