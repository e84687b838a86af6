# Two commands do everything on a fresh machine: `make run` and `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
RUNDIR := run
# Programs the tests drive for real, as command:Debian-package: the browser for the page, curl and
# openssl as independent TLS clients, systemd-analyze for the unit checks, systemd itself and
# util-linux's namespace tools for the system test (tests/system/test_system_boot.py), which also needs the
# system python's venv module (deploy/install-gateway makes /opt/openseg/venv with it); a Prometheus
# server (and promtool) scraping /metrics, a mosquitto broker and its command-line client for
# openseg-mqtt.
SYSTEM_COMMANDS := chromium:chromium curl:curl openssl:openssl systemd-analyze:systemd node:nodejs npm:npm \
                   unshare:util-linux nsenter:util-linux setpriv:util-linux \
                   prometheus:prometheus mosquitto:mosquitto mosquitto_sub:mosquitto-clients
# Green Button parsers from npm the tests feed Download My Data to (pinned in tests/node).
NODE_STAMP := tests/node/node_modules/.package-lock.json

.PHONY: install system-deps run test screenshots audit bench clean

$(STAMP): setup.cfg pyproject.toml emulator/setup.cfg emulator/pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]' -e emulator
	touch $(STAMP)

install: $(STAMP)

# Installs only what is missing, and only where it can (root with apt-get); otherwise it says what to
# install and the tests that need it fail with that message instead of skipping silently.
system-deps:
	@missing=""; \
	for pair in $(SYSTEM_COMMANDS); do \
	  command -v $${pair%%:*} >/dev/null || missing="$$missing $${pair##*:}"; \
	done; \
	/usr/bin/python3 -c "import ensurepip, venv" 2>/dev/null || missing="$$missing python3-venv"; \
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
$(NODE_STAMP): tests/node/package.json tests/node/package-lock.json
	npm ci --prefix tests/node --no-audit --no-fund --loglevel=error

test: $(STAMP) system-deps $(NODE_STAMP)
	OPENSEG_SCREENSHOT_DIR=tests/artifacts/screenshots $(BIN)/pytest -q

screenshots: $(STAMP) system-deps
	OPENSEG_SCREENSHOT_DIR=docs/screenshots $(BIN)/pytest -q -m browser tests/system/test_page_browser.py

# The security evidence on one screen (SECURITY.md, "Audit in one hour").
audit: $(STAMP) system-deps
	$(BIN)/python deploy/audit.py

# Speed and memory goals (issues 6, 7, 13 and 16), measured and written to bench/RESULTS.md, never asserted:
# about 130 minutes (10 + 10 min of poll timing, an hour of memory, 35 min of LAN memory and an open
# page, plus the paged export). `make bench BENCH_ARGS=--quick` is a shorter smoke run of the same.
bench: $(STAMP)
	$(BIN)/python bench/run_all.py $(BENCH_ARGS)
	$(BIN)/python bench/bench_history.py
	$(BIN)/python bench/bench_espi_paging.py
	$(BIN)/python bench/bench_page.py $(BENCH_ARGS)

# `make run PORT=8444` serves on another port (also for a run/ made earlier); RUNDIR=run2 with another
# PORT runs a second, independent gateway. One run per folder: a second one says who holds it.
run: $(STAMP)
	$(BIN)/python -m openseg_emulator.devstack --dir $(RUNDIR) $(if $(PORT),--lan-port $(PORT))

clean:
	rm -rf $(VENV) build *.egg-info emulator/*.egg-info emulator/build .pytest_cache .hypothesis
