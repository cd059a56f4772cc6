"""cellclf: classical classifiers (logistic regression, XGBoost) on cellembed embeddings.

Public API::

    from cellclf import CellClassifier, fit, FitConfig

    config = FitConfig.build(cv=3, lr_Cs=(0.1, 1.0), xgb_trials=2)   # or FitConfig()
    result = fit("embeddings.parquet", "run/", config=config)        # writes run/ (cellclf.rundir)
    run = cellclf.rundir.read_run("run/")                            # the RunRecord of a run
    predictor = cellclf.persistence.load_classifier("run/")          # run/model.skops: cannot run code
    frame, spec = cellembed.load_embeddings("new.parquet")
    names = predictor.predict(frame)                    # refuses embeddings of another spec
    table = ImageClassifier(predictor).predict_images(["cell.jpg", open("b.jpg", "rb").read()])

Model families are plug-ins (cellclf.families). scikit-learn and XGBoost are imported only
when fitting or predicting; CellClassifier, FitConfig and ImageClassifier on first use.
"""

from cellclf.errors import ClassifierInputError, PredictorLoadError

__all__ = ["ClassifierInputError", "FitConfig", "ImageClassifier", "CellClassifier", "PredictorLoadError", "fit"]


def fit(*args, **kwargs):  # noqa: D103 - documented on cellclf.fitting.fit
    from cellclf.fitting import fit as _fit

    return _fit(*args, **kwargs)


fit.__doc__ = "Fit, evaluate and explain classifiers; see cellclf.fitting.fit."


def __getattr__(name: str):
    if name == "FitConfig":
        from cellclf.fitting import FitConfig

        return FitConfig
    if name == "ImageClassifier":
        from cellclf.classifier import ImageClassifier

        return ImageClassifier
    if name == "CellClassifier":  # imported on first use: `cellclf --help` needs no pandas
        from cellclf.estimator import CellClassifier

        return CellClassifier
    raise AttributeError(f"module 'cellclf' has no attribute {name!r}")
