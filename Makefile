# Two entry points: `make demo` and `make test`. Both create .venv and install the project.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DEMO := build/demo

# Offline machines of this workplace keep the ImageNet weights next to the project;
# elsewhere CELLEMBED_WEIGHTS stays as the user set it (empty = Keras downloads them).
CELLEMBED_WEIGHTS ?= $(wildcard $(abspath ../shared/models/xception_imagenet_notop.weights.h5))
export CELLEMBED_WEIGHTS

.PHONY: demo test install clean

$(STAMP): setup.cfg pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/cellembed extract data/sample -o $(DEMO)/embeddings.parquet
	$(BIN)/cellembed info $(DEMO)/embeddings.parquet

# pytest exits 5 when it collected no test: make treats that, like any failure, as an error.
test: $(STAMP)
	$(BIN)/python -m pytest

clean:
	rm -rf $(VENV) build .pytest_cache
