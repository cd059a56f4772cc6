"""cellembed: frozen ImageNet Xception embeddings of single-cell images, cached in Parquet.

Public API::

    from cellembed import extract, load_embeddings, embedding_matrix

    result = extract("images/", "embeddings.parquet")      # embeds new images only
    frame, spec = load_embeddings("embeddings.parquet")    # DataFrame + EmbeddingSpec
    X, labels = embedding_matrix(frame, spec, taps=["add_6"])

TensorFlow is imported only when :func:`extract` (or the model module) is used, so reading
embeddings stays light.
"""

from cellembed.errors import InputError
from cellembed.spec import EmbeddingSpec, Tap
from cellembed.store import embedding_matrix, load_embeddings, read_errors, read_spec

__version__ = "0.1.0"

__all__ = [
    "EmbeddingSpec",
    "InputError",
    "Tap",
    "embedding_matrix",
    "extract",
    "load_embeddings",
    "read_errors",
    "read_spec",
    "__version__",
]


def extract(*args, **kwargs):  # noqa: D103 - documented on cellembed.extract.extract
    from cellembed.extract import extract as _extract

    return _extract(*args, **kwargs)


extract.__doc__ = "Embed a folder of images into a Parquet cache; see cellembed.extract.extract."
