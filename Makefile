VENV ?= .venv
PY := $(VENV)/bin/python
export TF_CPP_MIN_LOG_LEVEL ?= 2

.PHONY: install test test-slow lint demo bench bench-install clean

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

# The performance suite (issue 11): each script appends its section to
# benchmarks/RESULTS.md (--write) with the command, machine, versions, load average,
# min/median/max and the ratios. The comparison with transformers needs torch and
# transformers in TORCH_PYTHON (`make bench-install` puts them in the project's venv; or
# TORCH_PYTHON=/path/to/python of another venv). About 1.5 h on 2 cores; run it on a quiet
# machine (each process waits up to 60 s for the other processes to stay under 0.3 cores).
# The other benchmarks/ scripts measure one feature each; their commands are in RESULTS.md.
TORCH_PYTHON ?= $(PY)
VS_TRANSFORMERS := $(PY) benchmarks/bench_vs_transformers.py --torch-python $(TORCH_PYTHON) \
	--repeats 5 --quiet-wait 60 --quiet-cores 0.3 --write

bench: install
	$(VS_TRANSFORMERS) --configs a --modes train,image,text --warmup 3 --steps 5
	$(VS_TRANSFORMERS) --configs b --modes train,image,text --warmup 2 --steps 3
	$(VS_TRANSFORMERS) --configs base --modes image,text --warmup 1 --steps 3
	$(PY) benchmarks/bench_loss.py --write
	$(PY) benchmarks/bench_flops.py --quiet-wait 60 --measured-from benchmarks/RESULTS.md --write

bench-install: install
	$(PY) -m pip install -e '.[bench]'

clean:
	rm -rf runs build *.egg-info
