# The two set-up commands of the README: `make demo` and `make test`. Each builds .venv first when it is
# missing or stale (scripts/setup_venv.sh decides). `make bench` does the same, adds the `bench` extras (peers that
# only the benchmarks use) and runs every script of benchmarks/, printing one table of the headline ratios.
VENV ?= .venv
PY := $(VENV)/bin/python
DEMO_DIR ?= runs/demo
PYTEST_ARGS ?=
BENCH_ARGS ?=

.PHONY: venv test test-fast test-gpu demo bench bench-extras lint clean

venv:
	@bash scripts/setup_venv.sh

test: venv
	$(PY) -m pytest -q -rs $(PYTEST_ARGS)

test-fast: venv
	$(PY) -m pytest -q -rs -m "not slow and not vllm" $(PYTEST_ARGS)

# tests/gpu and benchmarks/gpu_sft_tokens.py on a CUDA machine (exits 2 with a message without one)
test-gpu: venv
	PY=$(PY) bash scripts/gpu_suite.sh $(PYTEST_ARGS)

demo: venv
	bash scripts/demo.sh $(DEMO_DIR)

bench-extras: venv
	VENV=$(VENV) bash scripts/install_extras.sh bench

# Fails (exit 1) when any benchmark is missing, fails or prints no RESULT line; the table is printed either way.
bench: bench-extras
	$(PY) benchmarks/run_all.py $(BENCH_ARGS)

lint: venv
	$(VENV)/bin/ruff check postvl tests benchmarks scripts

clean:
	rm -rf $(VENV) runs .pytest_cache
