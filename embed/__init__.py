"""cellembed: frozen ImageNet network embeddings of single-cell images, cached in Parquet.

Public API::

    from cellembed import extract, load_embeddings, embedding_matrix, embedder_from_spec

    result = extract("images/", "embeddings.parquet")      # embeds new images only
    # the same in two steps: the recipe resolved into the spec once, then the run
    spec, weights = spec_for_settings(preset="default")
    result = run_extraction("images/", "embeddings.parquet", spec, weights, ExtractOptions(progress=False))
    frame, spec = load_embeddings("embeddings.parquet")    # DataFrame + EmbeddingSpec
    X, labels = embedding_matrix(frame, spec, taps=["add_6"])
    embedder = embedder_from_spec(spec)                    # the network that wrote the file

Extraction is plan -> shards -> merge (``cellembed.plan``, ``cellembed.shards``,
``cellembed.merge``), the shards run by a distributor (``cellembed.distributors``:
sequential, or Ray). TensorFlow is imported only when a network is needed, so reading
embeddings, or a rerun with nothing new, stays light.
"""

from cellembed.errors import InputError, Interrupted
from cellembed.shared.versions import __version__

#: The public names and the module each comes from, imported on first use (PEP 562): a
#: command that only parses its options (``cellclf --help``) or reads an error class does
#: not pay for pyarrow, the spec or the extraction machinery.
_LAZY = {
    "embedder_from_spec": "cellembed.embedder",
    "load_embedder": "cellembed.embedder",
    "ExtractOptions": "cellembed.extraction",
    "ExtractResult": "cellembed.extraction",
    "extract": "cellembed.extraction",
    "run_extraction": "cellembed.extraction",
    "spec_for_settings": "cellembed.embedder",
    "EmbeddingSpec": "cellembed.spec",
    "Tap": "cellembed.spec",
    "embedding_matrix": "cellembed.store",
    "load_embeddings": "cellembed.store",
    "read_errors": "cellembed.store",
    "read_images_root": "cellembed.store",
    "read_spec": "cellembed.store",
}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'cellembed' has no attribute {name!r}")

__all__ = [
    "EmbeddingSpec",
    "ExtractOptions",
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
    "run_extraction",
    "spec_for_settings",
    "__version__",
]
