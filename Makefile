# Two entry points: `make demo` and `make test`. Both create .venv and install the project
# with its test, ray, serve, mlflow and docs extras (the Ray distributor's, the server's, the tracking
# and the documentation tests run in every `make test`).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DEMO := build/demo

# Offline machines of this workplace keep the ImageNet weights next to the project;
# elsewhere CELLEMBED_WEIGHTS stays as the user set it (empty = Keras downloads them).
CELLEMBED_WEIGHTS ?= $(wildcard $(abspath ../shared/models/xception_imagenet_notop.weights.h5))
export CELLEMBED_WEIGHTS

.PHONY: demo test docs install clean

$(STAMP): setup.cfg pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test,ray,serve,mlflow,docs]'
	touch $(STAMP)

install: $(STAMP)

# The whole pipeline on the 64 sample images. The fit uses a small tuning budget (3-fold CV,
# one XGBoost trial) so it runs in a few minutes; predicting the sample folder only shows
# the command (those images were used for training, so the scores are not a real test) and
# reuses the extracted embeddings as its cache, so it embeds nothing.
demo: $(STAMP)
	$(BIN)/cellembed extract data/sample -o $(DEMO)/embeddings.parquet
	$(BIN)/cellembed info $(DEMO)/embeddings.parquet
	$(BIN)/cellclf fit $(DEMO)/embeddings.parquet -o $(DEMO)/run --cv 3 --xgb-trials 1 --overwrite
	$(BIN)/cellclf predict $(DEMO)/run data/sample -o $(DEMO)/predictions.csv \
		--cache $(DEMO)/embeddings.parquet --report $(DEMO)/predictions.html
	@echo "report: $(abspath $(DEMO)/run/report.html)"
	@echo "What the numbers say: 64 sample images are a demo of the commands, not a model."
	@echo "- fit's test accuracy is on its 10 held-out images (hence the wide interval);"
	@echo "- predict ran on the same 64 images, most of which trained the model (it says so): its"
	@echo "  accuracy is recall of seen cells, not a test;"
	@echo "- every cell is 'uncertain' because 95% prediction sets need at least 19 validation"
	@echo "  images to leave any class out, and this fit had 11 (fit says so above). Fit your own folder (hundreds of"
	@echo "  cells per class) for a model and figures that mean something."

# pytest exits 5 when it collected no test: make treats that, like any failure, as an error.
test: $(STAMP)
	$(BIN)/python -m pytest

# The documentation site in site/ (open site/index.html); warnings are errors. `python -m`:
# the mkdocs script's folder holds the cellclf script, which the API reference would take
# for the package.
docs: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(BIN)/python -m mkdocs build --strict

clean:
	rm -rf $(VENV) build site .pytest_cache
