# The two commands: `make workbook` and `make test`. Both run `setup`: create .venv when missing
# and install the verified lock requirements.lock (exact versions, hashes) once, then medkit
# itself (editable); the stamp is keyed by the file's hash, so a set-up machine never calls pip
# again (and runs with no network at all). `setup` then registers the `medkit` Jupyter kernel
# in .venv (no pip, no network), so `papermill … -k medkit` works right after it.
# `make test REQUIREMENTS=requirements.txt` installs the version ranges instead of the lock.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PROFILE ?= tiny
REQUIREMENTS ?= requirements.lock
REQ_HASH := $(shell $(PYTHON) -c "import hashlib;print(hashlib.sha256(open('$(REQUIREMENTS)','rb').read()).hexdigest()[:12])")
STAMP := $(VENV)/.installed-$(REQ_HASH)
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export MPLBACKEND := Agg

.PHONY: workbook test lab setup lock clean-outputs

setup: $(STAMP)
	@$(PY) -m medkit kernel

# requirements.lock is in pip's hash-checking mode, which refuses editable installs:
# medkit goes in afterwards, without dependencies (they are all in the file above).
$(STAMP): $(REQUIREMENTS)
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --disable-pip-version-check -r $(REQUIREMENTS)
	$(PY) -m pip install --disable-pip-version-check --no-deps -e .
	@rm -f $(VENV)/.installed-* && touch $@

workbook: setup
	$(PY) -m medkit workbook --profile $(PROFILE)

# the slowest tests are listed at the end, so a CI log shows where the 20 minutes go
test: setup
	$(PY) -m pytest -q --durations=25 tests

# JupyterLab on the project's venv and its `medkit` kernel, on loopback only, opening notebooks/
# (the project root is the server's root, so outputs/ and data/ are one click away). Inline
# figures need matplotlib's inline backend: the Agg exported above is unset for the server.
LAB_PORT ?= 8888
lab: setup
	env -u MPLBACKEND $(PY) -m jupyter lab --ServerApp.ip=127.0.0.1 --ServerApp.port=$(LAB_PORT) \
	  --ServerApp.root_dir="$(CURDIR)" --LabApp.default_url=/lab/tree/notebooks \
	  --LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate --LabApp.news_url=None \
	  $(if $(filter 0,$(shell id -u)),--allow-root)

# Regenerate requirements.lock from the versions installed in $(VENV) — run it only on a venv
# `make test` passed on. Needs uv (`pip install uv`, or UV=/path/to/uv) and the package registry.
# To move to newer versions: rm -rf .venv && make test REQUIREMENTS=requirements.txt && make lock
UV ?= uv
LOCK_PLATFORM ?= x86_64-manylinux_2_28
LOCK_PYTHON = $(shell $(PY) -c "import sys;print('%d.%d' % sys.version_info[:2])")
# uv reads "3.11" as ">=3.11", and a package needing 3.11.5 then cannot resolve: give it the patch level
LOCK_PYTHON_FULL = $(shell $(PY) -c "import sys;print('%d.%d.%d' % sys.version_info[:3])")
LOCK_FLAGS = --python-version $(LOCK_PYTHON_FULL) --python-platform $(LOCK_PLATFORM) --generate-hashes --annotation-style line --no-header
define LOCK_HEADER
# requirements.lock: the exact versions `make setup` installs, verified (`make test` passed on
# them), with hashes; for CPython $(LOCK_PYTHON) on Linux x86_64 ($(LOCK_PLATFORM), glibc >= 2.28),
# torch's CUDA wheels (nvidia-*, cuda-*, triton) included. Other platforms or Pythons:
# `make setup REQUIREMENTS=requirements.txt` (the version ranges).
# Made by `make lock` from requirements.txt, the tested venv's packages as constraints:
#   $(PY) -m pip freeze --all --exclude-editable |
#     uv pip compile requirements.txt -c - $(LOCK_FLAGS)
# (uv $(shell $(UV) --version 2>/dev/null | cut -d' ' -f2)). To regenerate after new versions pass:
#   rm -rf .venv && make test REQUIREMENTS=requirements.txt && make lock
# medkit itself is not listed: the Makefile installs it after this file (pip install --no-deps -e .).
endef
export LOCK_HEADER

lock:
	@test -x $(PY) || { echo "no $(PY): set up and test a venv first"; exit 1; }
	{ printf '%s\n' "$$LOCK_HEADER"; $(PY) -m pip freeze --all --exclude-editable \
	  | $(UV) pip compile requirements.txt -c - $(LOCK_FLAGS); } > requirements.lock.tmp \
	  || { rm -f requirements.lock.tmp; exit 1; }
	mv requirements.lock.tmp requirements.lock

clean-outputs:
	rm -rf outputs/runs outputs/results.csv outputs/executed
