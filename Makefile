# make demo   the main job, offline, on the embedded engine -> runs/demo/
# make test   lint, then the whole test suite (starts its own local Ray, Spark and web servers)
# make test-fast  lint, then the tests not marked `slow` (unit tests and fast integration; minutes)
# make lint   ruff check (errors, warnings, import order, bugbear; see [tool.ruff] in pyproject.toml)
# make bench  side-by-side benchmarks (ratios against the raw libraries)
# make bench-scale  every stage at three sizes and the 400M-pair plan -> docs/scaling.md
VENV := .venv
STAMP := $(VENV)/.installed

.PHONY: setup demo lint test test-fast bench bench-scale clean

$(STAMP): pyproject.toml infra/setup.sh
	bash infra/setup.sh

setup:
	bash infra/setup.sh

demo: $(STAMP)
	$(VENV)/bin/curate demo --output runs/demo

lint: $(STAMP)
	$(VENV)/bin/ruff check pipeline tests bench

test: lint
	$(VENV)/bin/python -m pytest -q -p no:cacheprovider --durations=25 tests

test-fast: lint
	$(VENV)/bin/python -m pytest -q -p no:cacheprovider -m "not slow" tests

bench: $(STAMP)
	$(VENV)/bin/python bench/run_all.py

bench-scale: $(STAMP)
	$(VENV)/bin/python bench/bench_scale.py

clean:
	rm -rf runs bench/results
