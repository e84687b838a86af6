# Two commands do everything on a fresh machine: `make run` and `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
RUNDIR := run
# Debian packages the tests drive for real: the browser for the page, curl as a second TLS client.
SYSTEM_PACKAGES := chromium curl

.PHONY: install system-deps run test screenshots clean

$(STAMP): setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

# Installs only what is missing, and only where it can (root with apt-get); otherwise it says what to
# install and the tests that need it fail with that message instead of skipping silently.
system-deps:
	@missing=""; \
	command -v chromium >/dev/null || missing="$$missing chromium"; \
	command -v curl >/dev/null || missing="$$missing curl"; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    echo "installing:$$missing"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	  else \
	    echo "please install:$$missing (Debian: sudo apt-get install$$missing)"; \
	  fi; \
	fi

# Test runs write their page screenshots under tests/artifacts so they leave the tree clean;
# `make screenshots` refreshes the committed ones the README links to.
test: $(STAMP) system-deps
	OPENSEG_SCREENSHOT_DIR=tests/artifacts/screenshots $(BIN)/pytest -q

screenshots: $(STAMP) system-deps
	OPENSEG_SCREENSHOT_DIR=docs/screenshots $(BIN)/pytest -q -m browser tests/test_page_browser.py

run: $(STAMP)
	$(BIN)/python -m openseg_emulator.devstack --dir $(RUNDIR)

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .hypothesis

# `make audit`: the security evidence on one screen (SECURITY.md, "Audit in one hour"). Installs what
# it uses itself: the Python tools into the venv if missing, systemd-analyze and openssl with apt (root).
AUDIT_PYTHON_PACKAGES := 'import-linter>=2.1' 'sslyze>=6.0,<7'
.PHONY: audit
audit: $(STAMP)
	@$(BIN)/python -c "import importlinter, sslyze" 2>/dev/null || $(BIN)/pip install --quiet $(AUDIT_PYTHON_PACKAGES)
	@missing=""; \
	command -v systemd-analyze >/dev/null || missing="$$missing systemd"; \
	command -v openssl >/dev/null || missing="$$missing openssl"; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    echo "installing:$$missing"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	  else \
	    echo "please install:$$missing (Debian: sudo apt-get install$$missing)"; exit 1; \
	  fi; \
	fi
	$(BIN)/python deploy/audit.py
