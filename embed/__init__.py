"""cellembed: frozen ImageNet Xception embeddings of single-cell images, cached in Parquet.

Public API::

    from cellembed import extract, load_embeddings, embedding_matrix

    result = extract("images/", "embeddings.parquet")      # embeds new images only
    frame, spec = load_embeddings("embeddings.parquet")    # DataFrame + EmbeddingSpec
    X, labels = embedding_matrix(frame, spec, taps=["add_6"])

TensorFlow is imported only when a network is needed (``extract`` with images to embed),
so reading embeddings, or a rerun with nothing new, stays light.
"""

from cellembed.errors import InputError, Interrupted
from cellembed.extraction import ExtractResult, extract
from cellembed.spec import EmbeddingSpec, Tap
from cellembed.store import embedding_matrix, load_embeddings, read_errors, read_images_root, read_spec
from cellembed.versions import __version__


__all__ = [
    "EmbeddingSpec",
    "ExtractResult",
    "InputError",
    "Interrupted",
    "Tap",
    "embedding_matrix",
    "extract",
    "load_embeddings",
    "read_errors",
    "read_images_root",
    "read_spec",
    "__version__",
]
