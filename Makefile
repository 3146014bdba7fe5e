VENV ?= .venv
PY := $(VENV)/bin/python
export TF_CPP_MIN_LOG_LEVEL ?= 2

.PHONY: install test test-slow lint demo bench clean

$(VENV)/.installed: setup.cfg pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install --upgrade pip
	$(PY) -m pip install -e '.[dev]'
	touch $@

install: $(VENV)/.installed

test: install
	$(PY) -m pytest -q -n 2 --dist loadfile tests

test-slow: install
	$(PY) -m pytest -q --runslow tests

lint: install
	$(VENV)/bin/ruff check malign malign_launcher.py tests recipes benchmarks tokenizers

demo: install
	$(VENV)/bin/malign demo --recipe recipes/demo.py --workdir runs/demo

# Benchmarks that append their own section to benchmarks/RESULTS.md (--write).
bench: install
	$(PY) benchmarks/bench_loss.py --write
	$(PY) benchmarks/bench_flops.py --write

clean:
	rm -rf runs build *.egg-info
