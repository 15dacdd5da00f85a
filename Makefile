# Two commands a newcomer needs; both install what is missing first.
#   make demo   the whole stack with three demo agents on this host (Ctrl-C stops it)
#   make test   ruff, mypy and the whole test suite
.PHONY: demo test setup lint typecheck pytest lock

PY := .venv/bin/python
export HYPOTHESIS_PROFILE ?= ci

demo: setup
	$(PY) -m enforcer.cli demo

test: setup lint typecheck pytest

setup:
	@bash scripts/setup.sh

lint:
	.venv/bin/ruff check enforcer netns webui policies tests bench
	.venv/bin/ruff format --check enforcer netns webui policies tests bench

typecheck:
	.venv/bin/mypy

pytest:
	$(PY) -m pytest -q -ra $(PYTEST_ARGS)

# Regenerate requirements.lock from requirements.in (maintainers only).
lock:
	rm -rf /tmp/hb-lock && /usr/bin/python3 -m venv --system-site-packages /tmp/hb-lock
	/tmp/hb-lock/bin/pip install -q -r requirements.in
	/tmp/hb-lock/bin/pip freeze --local > requirements.lock
