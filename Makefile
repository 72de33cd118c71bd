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

demo: $(STAMP)
	$(BIN)/python scripts/demo.py

test: $(STAMP)
	$(BIN)/python -m pytest -q -n 2

# A longer experiment (about 12 min): memorise modular addition, then generalise (docs/grokking.md).
grokking: $(STAMP)
	test -f runs/grokking-data/train.jsonl || $(BIN)/rg-tracer data modular --p 23 --op + --train-frac 0.4 --seed 0 --out runs/grokking-data
	test -d runs/grokking/model || $(BIN)/rg-tracer init-model runs/grokking/model --arch qwen2 --layers 1 --hidden 128 --heads 4
	$(BIN)/rg-tracer train --config configs/grokking/mod23_add.yaml --overwrite
	$(BIN)/rg-tracer analyze runs/grokking --out reports/grokking

clean:
	rm -rf $(VENV) runs reports/demo
