# The two setup commands of the README: `make demo` and `make test` (both create .venv if missing).
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install demo test bench clean

$(STAMP): pyproject.toml
	test -d $(VENV) || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# Pin the CPU build that lies on this machine's disk; pyproject accepts a range for CUDA users.
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q triton==3.7.1
	$(BIN)/pip install -q -e ".[test]"
	# Compile and cache the training kernels now, so the first `train` starts at once.
	$(BIN)/python -m recsys_metric.warmup
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/recsys-metric demo

test: $(STAMP)
	OPENBLAS_NUM_THREADS=1 $(BIN)/python -m pytest -q

clean:
	rm -rf $(VENV) build *.egg-info
