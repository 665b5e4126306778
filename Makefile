# The two commands: `make workbook` and `make test`. Both create .venv when missing and
# install requirements.txt once; the stamp is keyed by the file's hash, so a set-up
# machine never calls pip again (and runs with no network at all).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PROFILE ?= tiny
REQ_HASH := $(shell $(PYTHON) -c "import hashlib;print(hashlib.sha256(open('requirements.txt','rb').read()).hexdigest()[:12])")
STAMP := $(VENV)/.installed-$(REQ_HASH)
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export MPLBACKEND := Agg

.PHONY: workbook test setup clean-outputs

setup: $(STAMP)

$(STAMP): requirements.txt
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --disable-pip-version-check -r requirements.txt
	@rm -f $(VENV)/.installed-* && touch $@

workbook: $(STAMP)
	$(PY) -m medkit workbook --profile $(PROFILE)

test: $(STAMP)
	$(PY) -m pytest -q tests

clean-outputs:
	rm -rf outputs/runs outputs/results.csv outputs/executed
