# The two commands of the README: `make demo` and `make test`. Both bootstrap what
# they need on a fresh Debian machine with Python 3.11: a .venv with the controller
# and the local worker stack (CPU torch, transformers, trl, peft, datasets,
# bitsandbytes), and, for the tests, the system parts they use for real
# (openssh-server, SLURM, munge) installed with apt when missing.

PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
SYS_STAMP := .venv/.sysdeps
APT_PKGS := openssh-server openssh-client slurmd slurmctld slurm-client munge git

.PHONY: demo test lint bench sysdeps venv clean

demo: $(STAMP)
	$(PY) examples/demo.py

# llm-compressor pins transformers <= 5.17 (the main venv has a newer one), so it lives in an
# overlay venv that sees the main venv's torch through a .pth file; the quantize tests use it.
LLMC_VENV := .venv-llmc
LLMC_STAMP := $(LLMC_VENV)/.installed

test: $(STAMP) $(SYS_STAMP) $(LLMC_STAMP)
	LLMCOMPRESSOR_PYTHON=$(CURDIR)/$(LLMC_VENV)/bin/python $(PY) -m pytest -q $(PYTEST_ARGS)

lint: $(STAMP)
	$(VENV)/bin/ruff check server tools runners tests bench examples
	$(VENV)/bin/ruff format --check server tools runners tests bench examples

venv: $(STAMP)

# Debian's own python3.11 ships venv/ensurepip in a separate package: install it when missing (as root).
$(STAMP): pyproject.toml
	@command -v $(PYTHON) >/dev/null 2>&1 || { echo "need $(PYTHON)"; exit 1; }
	@$(PYTHON) -c "import ensurepip, venv" 2>/dev/null || { \
	  if [ "$$(id -u)" != 0 ]; then echo "$(PYTHON) lacks venv/ensurepip: apt-get install python3.11-venv"; exit 1; fi; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3.11-venv >/dev/null; }
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	DS_BUILD_OPS=0 $(PY) -m pip install -q -e '.[worker,dev]'
	touch $(STAMP)

$(LLMC_STAMP): $(STAMP)
	test -x $(LLMC_VENV)/bin/python || $(PYTHON) -m venv $(LLMC_VENV)
	$(PY) -c "import site; print(site.getsitepackages()[0])" > \
	  "$$($(LLMC_VENV)/bin/python -c 'import site; print(site.getsitepackages()[0])')/zz_main_venv.pth"
	$(LLMC_VENV)/bin/python -m pip install -q "transformers==5.17.0" "llmcompressor==0.14.0.1" "compressed-tensors==0.19.0"
	touch $(LLMC_STAMP)

sysdeps: $(SYS_STAMP)

$(SYS_STAMP):
	@mkdir -p $(VENV)
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
