"""Defaults of ``cellclf fit`` that its command line shows: plain numbers, so that building
the command (``cellclf --help``) imports no numpy, pandas or scikit-learn."""

#: Share of the labelled images held out to check and choose the models, and to test them.
DEFAULT_VAL_FRACTION = 0.15
DEFAULT_TEST_FRACTION = 0.15
#: Most test images SHAP explains per model.
DEFAULT_SHAP_ROWS = 1000
