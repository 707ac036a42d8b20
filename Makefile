# The two commands of the README: `make demo` and `make test`. Both bootstrap what
# they need on a fresh Debian machine with Python 3.11, installing exactly the versions
# in the committed lock files (hashes checked):
#   requirements.lock       .venv: the controller, the local worker stack (CPU torch,
#                           transformers, trl, peft, datasets, bitsandbytes, ...) and dev tools
#   requirements-llmc.lock  .venv-llmc: llm-compressor for the quantize tests (it pins an
#                           older transformers than the main environment has)
# The locker is uv (pinned in requirements.lock itself); `make lock` refreshes both files
# and prints what changed. For the tests, the system parts they use for real
# (openssh-server, SLURM, munge) are installed with apt when missing.

SHELL := /bin/bash
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
UV := $(VENV)/bin/uv
STAMP := $(VENV)/.installed
SYS_STAMP := $(VENV)/.sysdeps
LLMC_VENV := .venv-llmc
LLMC_STAMP := $(LLMC_VENV)/.installed
APT_PKGS := openssh-server openssh-client slurmd slurmctld slurm-client munge git
# One resolution for every platform, for the oldest Python we support; the lock is the
# same file whoever runs `make lock`.
LOCK_ARGS := --universal --python-version 3.11 --generate-hashes --quiet
MAIN_LOCK_ARGS := pyproject.toml --extra worker --extra dev $(LOCK_ARGS)
# uv trusts the machine's own certificate store, as pip and apt do: behind a proxy that
# re-signs TLS with a local CA (common in companies), uv's bundled roots would refuse it.
export UV_SYSTEM_CERTS := 1

.PHONY: demo test lint bench lock lock-check sysdeps venv clean

demo: $(STAMP)
	$(PY) examples/demo.py

test: lock-check $(STAMP) $(SYS_STAMP) $(LLMC_STAMP)
	LLMCOMPRESSOR_PYTHON=$(CURDIR)/$(LLMC_VENV)/bin/python $(PY) -m pytest -q --durations=25 $(PYTEST_ARGS)

lint: $(STAMP)
	$(VENV)/bin/ruff check server tools runners tests bench examples
	$(VENV)/bin/ruff format --check server tools runners tests bench examples

venv: $(STAMP)

# The bootstrap: a venv (Debian's python3.11 ships venv/ensurepip in a separate package:
# installed when missing, as root), uv into it from the lock's own pin and hashes, then
# `uv pip sync`: exactly the lock, nothing more (what the lock lacks is removed), hashes
# required. The project itself goes in editable, without dependencies.
$(UV):
	@command -v $(PYTHON) >/dev/null 2>&1 || { echo "need $(PYTHON)"; exit 1; }
	@$(PYTHON) -c "import ensurepip, venv" 2>/dev/null || { \
	  if [ "$$(id -u)" != 0 ]; then echo "$(PYTHON) lacks venv/ensurepip: apt-get install python3.11-venv"; exit 1; fi; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3.11-venv >/dev/null; }
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	awk '/^uv==/{p=1; print; next} p && /^ +--hash/{print; next} p{exit}' requirements.lock > $(VENV)/uv.req
	$(PY) -m pip install -q --disable-pip-version-check --no-deps --require-hashes -r $(VENV)/uv.req

# DeepSpeed comes as a source distribution; DS_BUILD_OPS=0 builds it without compiling its ops.
$(STAMP): requirements.lock pyproject.toml | $(UV)
	DS_BUILD_OPS=0 $(UV) pip sync --quiet --python $(PY) --require-hashes requirements.lock
	$(UV) pip install --quiet --python $(PY) --no-deps -e .
	touch $(STAMP)

$(LLMC_STAMP): requirements-llmc.lock $(STAMP)
	test -x $(LLMC_VENV)/bin/python || $(UV) venv --quiet --python $(PYTHON) $(LLMC_VENV)
	$(UV) pip sync --quiet --python $(LLMC_VENV)/bin/python --require-hashes requirements-llmc.lock
	touch $(LLMC_STAMP)

# pyproject.toml and the lock agree when resolving pyproject's requirements with the lock's
# pins as constraints gives back exactly the lock: a dependency added, dropped or re-pinned in
# pyproject without `make lock` fails here, before the tests run.
lock-check: | $(UV)
	@$(UV) pip compile $(MAIN_LOCK_ARGS) --no-header --no-annotate -c requirements.lock -o $(VENV)/lock-check.txt \
	  || { echo "requirements.lock does not satisfy pyproject.toml: run 'make lock'"; exit 1; }
	@grep -v '^ *#' requirements.lock | diff -u - $(VENV)/lock-check.txt >/dev/null \
	  || { echo "pyproject.toml and requirements.lock disagree (run 'make lock'):"; \
	       grep -v '^ *#' requirements.lock | diff -u - $(VENV)/lock-check.txt | grep '^[-+][a-z]'; exit 1; }
	@$(UV) pip compile requirements-llmc.in $(LOCK_ARGS) --no-header --no-annotate -c requirements-llmc.lock \
	  -o $(VENV)/lock-check-llmc.txt && grep -v '^ *#' requirements-llmc.lock | diff -q - $(VENV)/lock-check-llmc.txt >/dev/null \
	  || { echo "requirements-llmc.in and requirements-llmc.lock disagree: run 'make lock'"; exit 1; }
	@echo "lock-check: pyproject.toml and requirements-llmc.in agree with their locks"

# Refresh both locks to the newest versions the inputs allow, and say what changed.
# One package only: make lock UPGRADE="--upgrade-package transformers". After editing
# pyproject.toml, `make lock UPGRADE=` re-resolves keeping every pin it still allows.
UPGRADE ?= --upgrade
lock: | $(UV)
	cp requirements.lock $(VENV)/old.lock; cp requirements-llmc.lock $(VENV)/old-llmc.lock
	$(UV) pip compile $(MAIN_LOCK_ARGS) $(UPGRADE) -o requirements.lock
	$(UV) pip compile requirements-llmc.in $(LOCK_ARGS) $(UPGRADE) -o requirements-llmc.lock
	@for f in requirements requirements-llmc; do \
	  changes=$$(diff <(grep -o '^[A-Za-z0-9._-]*==[^ ;]*' $(VENV)/old$${f#requirements}.lock) \
	                  <(grep -o '^[A-Za-z0-9._-]*==[^ ;]*' $$f.lock) | sed -n 's/^</  was/p; s/^>/  now/p'); \
	  echo "$$f.lock: $${changes:-  unchanged}"; \
	done

sysdeps: $(SYS_STAMP)

$(SYS_STAMP): | $(UV)
	@missing=""; for p in $(APT_PKGS); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" != 0 ]; then echo "missing Debian packages:$$missing (run as root or install them)"; exit 1; fi; \
	  echo "installing:$$missing"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	fi
	touch $(SYS_STAMP)

bench: $(STAMP)
	$(PY) bench/startup.py

clean:
	rm -rf $(VENV) $(LLMC_VENV) .pytest_cache .ruff_cache
