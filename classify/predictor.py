"""The class pickles written before ``cellclf.CellClassifier`` name, kept so they unpickle.

Until the classifier was a scikit-learn estimator, ``model.joblib`` held a pickled
``cellclf.predictor.Predictor`` (its fitted pipeline as ``model``, with ``classes``,
``spec``, ``taps``, ``family``, ``reference``, ``calibration``, ``summary``, ``versions``
and ``format``). Unpickling one gives an instance of this class with those attributes,
which :func:`cellclf.persistence.upgrade` turns into the same model as a
:class:`~cellclf.estimator.CellClassifier`; nothing else uses it.
"""

from __future__ import annotations


class Predictor:
    """A model saved by an earlier cellclf (unpickled only, then upgraded)."""

    source = None
    calibration = None
