# Two entry points: `make demo` and `make test`. Both create .venv on first use.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1

.PHONY: demo test venv chromium clean foundation

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	$(PIP) install --quiet torch==2.13.0
	$(PIP) install --quiet -e '.[test,milvus]'
	touch $@

venv: $(VENV)/.installed

demo: venv
	$(VENV)/bin/tbps demo --out runs/demo

test: venv chromium
	$(PY) -m pytest -q

# The two shipped foundations (src/tbps/foundation/tiny-clip, tiny-blip) made again from scratch:
# render the pretraining corpus and the small benchmark (skipped when rendered), pretrain both layouts
# with configs/pretrain_tiny_{clip,blip}.yaml (hours on 2 CPU cores; re-running resumes a killed run
# from its last checkpoint), then ship each with its model card. Never part of `make test`.
FOUNDATION_RUNS ?= runs/foundation
rendered = $(PY) -c "import sys; from tbps.synth.generator import is_current; sys.exit(not is_current('$(1)', '$(2)', 0))"
foundation: venv
	$(call rendered,data/synth-pretrain,pretrain) || $(VENV)/bin/tbps synth --preset pretrain --seed 0 --out data/synth-pretrain
	$(call rendered,data/synth-small,small) || $(VENV)/bin/tbps synth --preset small --seed 0 --out data/synth-small
	set -e; for layout in clip blip; do \
		run=$(FOUNDATION_RUNS)/pretrain_tiny_$$layout; \
		resume=$$([ -e $$run/checkpoints/last ] && echo --resume || true); \
		$(VENV)/bin/tbps pretrain --config pretrain_tiny_$$layout --out $$run --export $$run-export $$resume; \
		$(VENV)/bin/tbps foundation ship $$run-export --name tiny-$$layout --run $$run --eval-root data/synth-small; \
	done

# The browser test drives Debian's chromium through Playwright (never `playwright install`).
CHROMIUM ?= /usr/bin/chromium
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
chromium:
	@if [ ! -x $(CHROMIUM) ]; then \
		echo "installing chromium for the browser test"; \
		$(SUDO) apt-get update && $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y chromium; \
	fi

clean:
	rm -rf $(VENV) runs
