# Two commands: `make demo` and `make test`. Each creates .venv when it is missing.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
# torch is installed first and pinned, so pip never resolves a multi-GB CUDA build by accident.
# On a CUDA machine: make demo TORCH="torch==2.13.0" TORCH_INDEX=https://download.pytorch.org/whl/cu128
TORCH  ?= torch==2.13.0
TORCH_INDEX ?=
EXTRAS ?= dev,serve
DEMO_SECONDS ?= 240

.PHONY: demo test install clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.installed-$(EXTRAS): pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX)) "$(TORCH)"
	$(BIN)/pip install -q -e ".[$(EXTRAS)]"
	rm -f $(VENV)/.installed-*
	touch $@

install: $(VENV)/.installed-$(EXTRAS)

demo: install
	$(BIN)/gptlab train --preset fast --time-budget $(DEMO_SECONDS) --eval-interval 400 --out runs/demo --overwrite
	@echo; echo "== samples at T=1.0 and T=0.5, and two whole reviews from an empty prompt"
	$(BIN)/gptlab generate runs/demo "wine review : germany :" -T 1.0 -n 3 --seed 1
	$(BIN)/gptlab generate runs/demo "wine review : us :" -T 0.5 -n 2 --seed 1
	$(BIN)/gptlab generate runs/demo -n 2 --seed 2
	@echo; echo "== what the model saw, step by step (also written to runs/demo/trace.html)"
	$(BIN)/gptlab explain runs/demo "wine review : germany :" --steps 3 --seed 1
	$(BIN)/gptlab explain runs/demo "wine review : germany :" --steps 3 --seed 1 --out runs/demo/trace.html
	@echo; echo "== temperature"
	$(BIN)/gptlab temperature runs/demo "wine review : germany :" -T 0.5 1 1.5 3
	@echo; echo "== what it learned, against the built-in generator's exact probabilities"
	$(BIN)/gptlab eval runs/demo --samples 100

test: install
	$(BIN)/ruff check gptlab tests benchmarks
	$(BIN)/mypy
	$(BIN)/python -m pytest

clean:
	rm -rf $(VENV) runs build *.egg-info
