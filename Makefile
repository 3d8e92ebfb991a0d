# The two commands the README gives. Both do the whole set-up first (idempotent, cached).
PORT ?= 8188
PY := .host/env/venv/bin/python
COMFY := .host/env/ComfyUI
BASE := .host/base
PYTEST_ARGS ?=

.PHONY: setup browser run demo test lint

setup:
	bash scripts/setup.sh

# Debian's headless Chromium for the browser tests (installed once; needs root).
browser:
	bash scripts/setup_browser.sh

# Start the real ComfyUI host with the pack loaded and the demo models in place.
run: setup
	$(PY) $(COMFY)/main.py --cpu --listen 127.0.0.1 --port $(PORT) --disable-auto-launch \
	  --base-directory $(BASE) --database-url sqlite:///$(abspath $(BASE))/user/comfyui.db

# Every example workflow through a running ComfyUI's HTTP API, headless, with a local model
# mirror for the fetch step; prints what each did.
demo: setup
	$(PY) scripts/demo.py

# The whole test suite: lint, unit, in-process host, end-to-end through /prompt, browser.
test: setup browser lint
	$(PY) -m pytest $(PYTEST_ARGS)

lint:
	$(PY) -m ruff check .
