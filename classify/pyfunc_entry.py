"""The code of the logged MLflow model (MLflow's "models from code": the model is this file,
run when the model loads, not a pickle): :class:`cellclf.pyfunc_model.CellclfModel`."""

from mlflow.models import set_model

from cellclf.pyfunc_model import CellclfModel

set_model(CellclfModel())
