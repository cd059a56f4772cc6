"""cellembed: frozen ImageNet network embeddings of single-cell images, cached in Parquet.

Public API::

    from cellembed import extract, load_embeddings, embedding_matrix, embedder_from_spec

    result = extract("images/", "embeddings.parquet")      # embeds new images only
    frame, spec = load_embeddings("embeddings.parquet")    # DataFrame + EmbeddingSpec
    X, labels = embedding_matrix(frame, spec, taps=["add_6"])
    embedder = embedder_from_spec(spec)                    # the network that wrote the file

Extraction is plan -> shards -> merge (``cellembed.plan``, ``cellembed.shards``,
``cellembed.merge``), the shards run by a distributor (``cellembed.distributors``:
sequential, or Ray). TensorFlow is imported only when a network is needed, so reading
embeddings, or a rerun with nothing new, stays light.
"""

from cellembed.embedder import embedder_from_spec, load_embedder
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
    "embedder_from_spec",
    "embedding_matrix",
    "extract",
    "load_embedder",
    "load_embeddings",
    "read_errors",
    "read_images_root",
    "read_spec",
    "__version__",
]
