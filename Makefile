# Levee's verbs. `make run` serves the whole platform locally; `make test` sets up and runs the tests.
SHELL := /bin/bash
PYTHON ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin
# torch is installed first and on its own, pinned: on this project's CI/dev machines pip finds the
# local CPU wheel; on a GPU host the same pin takes the CUDA build from PyPI. Override to choose.
TORCH_SPEC ?= torch==2.13.0
# Tests use the machine's PostgreSQL and Redis (see .ci/run); `make run` uses SQLite + embedded Redis.
TEST_DATABASE_URL ?= postgres://postgres@127.0.0.1:5432/test
TEST_REDIS_URL ?= redis://127.0.0.1:6379/15

.PHONY: install run test lint bench clean browser catalogs nginx

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	@command -v $(PYTHON) >/dev/null || { echo "Python 3.11 is required ($(PYTHON) not found)"; exit 1; }
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/pip install -q "$(TORCH_SPEC)"
	$(BIN)/pip install -q -e '.[inference,dev]'
	touch $@

run: install catalogs
	$(BIN)/python ops/run.py

test: install browser catalogs nginx
	DATABASE_URL="$${DATABASE_URL:-$(TEST_DATABASE_URL)}" REDIS_URL="$${REDIS_URL:-$(TEST_REDIS_URL)}" \
	LEVEE_ENV=test $(BIN)/python -m pytest $(PYTEST_ARGS)

# Browser tests (tests/e2e/test_browser.py, test_web_ui.py) drive Debian's chromium: Playwright cannot
# download its own browser here. Installed when missing if we are root with apt-get; otherwise those
# tests skip. A Chinese font comes with it (WenQuanYi Zen Hei), so the Chinese screenshots show text.
browser:
	@if [ -x /usr/bin/chromium ] && fc-list :lang=zh 2>/dev/null | grep -q .; then :; \
	elif [ "$$(id -u)" != "0" ] || ! command -v apt-get >/dev/null 2>&1; then \
	  [ -x /usr/bin/chromium ] || echo "browser: /usr/bin/chromium is missing and cannot be installed (needs root and apt-get); browser tests will skip"; \
	else \
	  echo "browser: installing Debian's chromium and a Chinese font for the browser tests"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium fonts-wqy-zenhei >/dev/null; \
	fi

# Translations: platform/locale/*/LC_MESSAGES/*.po compiled to .mo (gitignored) with the standard
# library (ops/compile_messages.py), so no machine needs GNU gettext. Only stale ones are rewritten.
catalogs:
	@$(PYTHON) ops/compile_messages.py

# The proxy configuration (ops/nginx/) is checked by Debian's nginx (tests/ops/test_nginx_config.py):
# installed when missing if we are root with apt-get; otherwise those tests skip, saying why.
nginx:
	@if command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ]; then :; \
	elif [ "$$(id -u)" != "0" ] || ! command -v apt-get >/dev/null 2>&1; then \
	  echo "nginx: nginx is missing and cannot be installed (needs root and apt-get); the proxy configuration tests will skip"; \
	else \
	  echo "nginx: installing Debian's nginx for the proxy configuration tests"; \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends nginx >/dev/null) \
	    || echo "nginx: apt-get could not install nginx; the proxy configuration tests will skip"; \
	fi

# Static checks, also run by CI (.ci/run) and by the pre-commit hook (.pre-commit-config.yaml):
# ruff; mypy (strict on inference/ and kernels/, every platform function annotated; what predates
# the switch is in .mypy-baseline.txt, see ops/lint/mypy_gate.py); import-linter's layer contracts
# (pyproject.toml [tool.importlinter]); and no model change without its migration.
lint: install
	$(BIN)/ruff check platform inference kernels ops tests
	LEVEE_ENV=test $(BIN)/python ops/lint/mypy_gate.py
	PYTHONPATH=platform:. $(BIN)/lint-imports --no-cache
	LEVEE_ENV=test DATABASE_URL=sqlite:///:memory: $(BIN)/python manage.py makemigrations --check --dry-run

bench: install
	@ls ops/bench/*.py | sed 's/^/available: /'

clean:
	rm -rf $(VENV) var .pytest_cache
