# Two commands do all the set-up on a fresh machine:
#   make demo   install into .venv, then run the whole pipeline on the embedded demo cohort
#   make test   install into .venv, then run the test suite
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
CORES ?= 2

.PHONY: install demo test test-setup report dry-run lint clean

# Reinstall when the package metadata changes (a stale .venv) or the venv is missing.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/snakemake --cores $(CORES)

report: $(STAMP)
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/snakemake --cores $(CORES) --report results/report.html

dry-run: $(STAMP)
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/snakemake -n --cores $(CORES)

lint: $(STAMP)
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/snakemake --lint

# --- test set-up, idempotent, needs root to install: Debian's slurm-wlm, slurmdbd, munge and MariaDB
# for tests/test_slurm.py (a single-node SLURM the test starts and stops itself), and Chromium for
# tests/test_report.py (the Snakemake report opened in a real headless browser).
test-setup:
	bash tests/slurm/install.sh
	bash tests/report/install_chromium.sh
# --- end of test set-up

test: $(STAMP) test-setup
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/python -m pytest -q

clean:
	rm -rf results resources .snakemake
