# The front door: `make run` and `make test` install what they need themselves.
# The interpreter: Debian's /usr/bin/python3.11 where it can make a venv (package python3.11-venv),
# else python3 (any >= 3.11). Debian builds it with PGO and LTO, libpython linked in: the beacon path
# costs ~5–8 % less CPU than on a --enable-shared build such as pyenv's (bench/RESULTS.md, "The interpreter").
# `make PYTHON=/path/to/python3.x install` picks another (after `make clean` if .venv exists).
PYTHON ?= $(shell /usr/bin/python3.11 -m ensurepip --version >/dev/null 2>&1 && echo /usr/bin/python3.11 || echo python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install run test bench clean distclean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

run: $(STAMP)
	$(BIN)/ingestd serve

test: $(STAMP)
	$(BIN)/python -m pytest -q tests

bench: $(STAMP)
	bash bench/run.sh

# clean keeps ./data: it holds the spool (events already answered 200 but not yet shipped) and the
# embedded database. distclean deletes them too.
clean:
	rm -rf $(VENV) *.egg-info .pytest_cache .hypothesis
	find . -name __pycache__ -type d -prune -exec rm -rf {} +

distclean: clean
	rm -rf data
