# The two commands of the README: `make demo` (the main job) and `make test`.
# Both create .venv and install the apt and pip needs on first use.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
APT_NEEDS := espeak-ng sox

.PHONY: setup demo test test-fast clean

setup: $(STAMP)

$(STAMP): pyproject.toml setup.py requirements/constraints.txt
	@command -v espeak-ng >/dev/null && command -v sox >/dev/null || \
		{ $(SUDO) apt-get update -qq && $(SUDO) DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(APT_NEEDS); }
	[ -x $(BIN)/python ] || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q -c requirements/constraints.txt -e '.[s3prl,superb,test]'
	touch $@

demo: $(STAMP)
	$(BIN)/s3prl-star demo demo_out

test: $(STAMP)
	$(BIN)/python -m pytest -q -ra --durations=40

test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -ra -m 'not slow'

clean:
	rm -rf $(VENV) demo_out result
