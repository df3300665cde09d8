# Quick start: `make demo` (set-up + the main job) and `make test` (set-up + the tests).
.PHONY: setup setup-dev demo test lint format bench clean

setup:
	@bash scripts/setup.sh

setup-dev:
	@bash scripts/setup.sh --dev

demo: setup
	@bash scripts/demo.sh

test: setup-dev
	HF_HUB_OFFLINE=1 .venv/bin/python -m pytest -q

lint: setup-dev
	.venv/bin/ruff check src tests bench
	.venv/bin/ruff format --check src tests bench

format: setup-dev
	.venv/bin/ruff format src tests bench
	.venv/bin/ruff check --fix src tests bench

clean:
	rm -rf runs .pytest_cache
