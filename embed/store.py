"""The Parquet embeddings file: schema, atomic writes, reading back. Every read and write
of an embeddings file (OUT, a shard, a cache) is here: another store is this module.

One row per image::

    path       string   POSIX path relative to the images folder
    label      string   first-level sub-folder name, null for images directly in the folder
    sha256     string   hex SHA-256 of the file's bytes (the cache key)
    width      int32    original width in pixels
    height     int32    original height in pixels
    cell_found bool     only when the spec crops: the cell was found (false: whole image)
    spec_digest string  the row's spec (:meth:`EmbeddingSpec.digest`); absent in files written
                        before it was added, whose rows are taken to be of the file's spec
    embedding  fixed_size_list<float32>[d]

The key-value metadata holds the :class:`~cellembed.spec.EmbeddingSpec` as JSON under
``cellembed.spec`` and the files that could not be embedded under ``cellembed.errors``.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

if TYPE_CHECKING:  # pandas is imported by pyarrow's to_pandas when a frame is made; a
    import pandas as pd  # rerun of extract with nothing new never needs it (0.3 s saved)

from cellembed.shared.atomic import atomic_path
from cellembed.errors import InputError
from cellembed.spec import SPEC_METADATA_KEY, EmbeddingSpec

ERRORS_METADATA_KEY = b"cellembed.errors"
#: Absolute path of the images folder the rows' ``path`` values are relative to.
IMAGES_METADATA_KEY = b"cellembed.images"
META_COLUMNS = ("path", "label", "sha256", "width", "height")
#: Column of files whose spec crops: whether the cell was found (false: whole image used).
CELL_FOUND = "cell_found"
#: Column naming each row's spec: the spec in the metadata is per file, and rows of two
#: files joined by hand (pyarrow.concat_tables) would otherwise pass as the first file's.
SPEC_DIGEST = "spec_digest"


def checkpoint_folder(out: Path) -> Path:
    """The work folder of ``out`` (``emb.checkpoint/`` for ``emb.parquet``): shard files of
    an unfinished run, so an interrupted extraction resumes."""
    return out.with_name(out.stem + ".checkpoint")


def set_aside_folder(out: Path, spec: EmbeddingSpec) -> Path:
    """Where finished shards of an interrupted run with another spec are kept
    (``emb.checkpoint-<spec digest>/``), so a run with a new spec neither mixes with them
    nor deletes them, and a later run with their spec resumes from them."""
    return out.with_name(f"{out.stem}.checkpoint-{spec.digest()[:12]}")


#: Finished work in a work folder: shard files, and the chunk files of earlier versions.
SHARD_GLOBS = ("shard-*.parquet", "chunk-*.parquet")


def shard_path(work_dir: Path, shard_id: str) -> Path:
    """The file of one shard in a work folder."""
    return work_dir / f"shard-{shard_id}.parquet"


def shard_id_of(path: Path) -> str:
    """The shard id a shard file's name holds (see :func:`shard_path`)."""
    return path.name[len("shard-") : -len(".parquet")]


def errors_csv_path(out: Path) -> Path:
    """The sidecar list of files that could not be embedded (``emb.errors.csv``)."""
    return out.with_name(out.stem + ".errors.csv")


def arrow_schema(dim: int, cell_found: bool = False) -> pa.Schema:
    """The file schema; ``cell_found`` (files of a spec with a crop) adds the column saying
    whether the crop found the cell (false: the whole image was used)."""
    extra = [pa.field(CELL_FOUND, pa.bool_(), nullable=False)] if cell_found else []
    return pa.schema(
        [
            pa.field("path", pa.string(), nullable=False),
            pa.field("label", pa.string(), nullable=True),
            pa.field("sha256", pa.string(), nullable=False),
            pa.field("width", pa.int32(), nullable=False),
            pa.field("height", pa.int32(), nullable=False),
            *extra,
            pa.field(SPEC_DIGEST, pa.string(), nullable=False),
            pa.field("embedding", pa.list_(pa.float32(), dim), nullable=False),
        ]
    )


def make_table(
    spec: EmbeddingSpec,
    paths: Sequence[str],
    labels: Sequence[str | None],
    sha256s: Sequence[str],
    widths: Sequence[int],
    heights: Sequence[int],
    embeddings: np.ndarray,
    errors: Sequence[dict[str, str]] = (),
    images_root: str | Path | None = None,
    cell_found: Sequence[bool] | None = None,
) -> pa.Table:
    """Assemble a table in the file schema; ``embeddings`` is (n, spec.dim) float32;
    ``cell_found`` is required exactly when the spec crops (see :func:`arrow_schema`)."""
    crops = spec.crop != "none"
    if crops != (cell_found is not None):
        raise ValueError(f"cell_found must be given exactly when the spec crops (crop {spec.crop!r})")
    embeddings = np.ascontiguousarray(embeddings, dtype=np.float32).reshape(len(paths), spec.dim)
    metadata = {SPEC_METADATA_KEY: spec.to_json(), ERRORS_METADATA_KEY: json.dumps(list(errors))}
    if images_root is not None:
        # The folder's own bytes: a name that is not UTF-8 (a Latin-1 share) is kept exactly.
        metadata[IMAGES_METADATA_KEY] = os.fsencode(Path(images_root).resolve())
    schema = arrow_schema(spec.dim, crops).with_metadata(metadata)
    columns = [
        pa.array(list(paths), pa.string()),
        pa.array(list(labels), pa.string()),
        pa.array(list(sha256s), pa.string()),
        pa.array(np.asarray(widths, dtype=np.int32)),
        pa.array(np.asarray(heights, dtype=np.int32)),
        *([pa.array(np.asarray(cell_found, dtype=bool))] if crops else []),
        pa.array([spec.digest()] * len(paths), pa.string()),  # one value: Parquet stores it once per page
        # A view of the matrix, not a copy: the rows are the largest thing extract holds.
        pa.FixedSizeListArray.from_arrays(
            pa.Array.from_buffers(pa.float32(), embeddings.size, [None, pa.py_buffer(embeddings)]), spec.dim
        ),
    ]
    return pa.Table.from_arrays(columns, schema=schema)


#: Rows per Parquet row group: the writer encodes one group at a time, so its buffers stay
#: small whatever the number of rows (one group of 4,000 rows cost 220 MB more than 1,024).
ROW_GROUP_SIZE = 1024


def write_table(table: pa.Table, path: str | Path) -> None:
    """Write a table to Parquet atomically (temporary file + rename)."""
    # Floats barely compress: the table's in-memory size is what the file needs, at most.
    with atomic_path(path, needs=table.nbytes) as tmp:
        # Page checksums: damage to the values themselves is found on reading, not trained on.
        pq.write_table(table, tmp, compression="zstd", row_group_size=ROW_GROUP_SIZE, write_page_checksum=True)


def read_spec(path: str | Path) -> EmbeddingSpec:
    """The embedding spec stored in a cellembed Parquet file.

    Parameters
    ----------
    path : str or Path
        A cellembed Parquet file.

    Returns
    -------
    EmbeddingSpec
        The spec stored in its metadata.
    """
    return EmbeddingSpec.from_json(_metadata(path)[SPEC_METADATA_KEY])


def read_errors(path: str | Path) -> list[dict[str, str]]:
    """Files the run that wrote ``path`` could not embed.

    Parameters
    ----------
    path : str or Path
        A cellembed Parquet file.

    Returns
    -------
    list of dict
        ``[{"path", "reason", "sha256"}, ...]``: one dict per file.
    """
    return json.loads(_metadata(path).get(ERRORS_METADATA_KEY, b"[]"))


def read_images_root(path: str | Path) -> Path | None:
    """The images folder the file was extracted from.

    Parameters
    ----------
    path : str or Path
        A cellembed Parquet file.

    Returns
    -------
    Path or None
        The images folder (the rows' ``path`` values are relative to it); None if not recorded.
    """
    value = _metadata(path).get(IMAGES_METADATA_KEY)
    return Path(os.fsdecode(value)) if value else None


def _metadata(path: str | Path) -> dict[bytes, bytes]:
    try:
        metadata = pq.read_schema(path).metadata or {}
    except (OSError, pa.ArrowInvalid) as exc:
        raise InputError(f"{path}: not a readable Parquet file ({exc})") from exc
    if SPEC_METADATA_KEY not in metadata:
        raise InputError(f"{path}: not a cellembed embeddings file (no embedding spec in it)")
    return metadata


def damaged(path: str | Path, exc: BaseException) -> str:
    """The one-line message for a cellembed file whose pages cannot be read."""
    reason = " ".join(str(exc).split()) or type(exc).__name__
    return f"{path} is damaged ({reason}): re-create it with cellembed extract --overwrite"


def read_table(path: str | Path) -> tuple[pa.Table, EmbeddingSpec]:
    """Read a cellembed Parquet file and check its embedding width against its spec.

    Raises:
        InputError: not a cellembed file, or damaged (a page that does not decode or fails
            its checksum): one line naming the file.
    """
    spec = read_spec(path)
    # ParquetFile.read, unlike pq.read_table, skips the dataset layer and its pandas import.
    try:
        with pq.ParquetFile(path, page_checksum_verification=True) as parquet:
            table = parquet.read()
    except (OSError, pa.ArrowException) as exc:  # pages damaged under an intact footer
        raise InputError(damaged(path, exc)) from None
    embedding_type = table.schema.field("embedding").type
    if getattr(embedding_type, "list_size", None) != spec.dim:
        raise InputError(f"{path}: embedding width does not match its spec ({spec.dim} floats)")
    problem = mixed_rows(path, table, spec)
    if problem:
        raise InputError(f"{problem}; re-embed the images into one file with cellembed extract")
    if SPEC_DIGEST in table.column_names:
        table = table.drop_columns([SPEC_DIGEST])
    return table, spec


def mixed_rows(path: str | Path, table: pa.Table, spec: EmbeddingSpec) -> str | None:
    """What is wrong when some rows of ``table`` (read from ``path``) name another spec
    than the file's (rows of other files joined into it by hand); None when none does, or
    when the table has no :data:`SPEC_DIGEST` column (a file written before it was added)."""
    import pyarrow.compute as pc

    if SPEC_DIGEST not in table.column_names or not len(table):
        return None
    digests = table.column(SPEC_DIGEST)
    other = len(digests) - pc.sum(pc.equal(digests, spec.digest()).fill_null(False)).as_py()
    if not other:
        return None
    return (f"{path}: {other} of its {len(digests)} rows were embedded with another spec than the file's "
            "(rows of other files joined into it?) and specs never mix in one file")


def table_matrix(table: pa.Table | pa.RecordBatch) -> np.ndarray:
    """The (n, d) float32 embedding matrix of a table or batch, without a per-row Python copy."""
    column = table.column("embedding")
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    values = column.flatten()
    if values.null_count == 0 and values.type == pa.float32():
        # A view of the Arrow buffer: Array.to_numpy would import pandas (0.3 s of a rerun).
        flat = np.frombuffer(values.buffers()[1], np.float32, count=len(values), offset=4 * values.offset)
    else:
        flat = values.to_numpy(zero_copy_only=False)
    return flat.reshape(len(column), column.type.list_size)


def load_embeddings(path: str | Path) -> tuple[pd.DataFrame, EmbeddingSpec]:
    """Read an embeddings file as a DataFrame plus its spec.

    The DataFrame has one row per image with the columns ``path, label, sha256, width,
    height`` and ``embedding`` (a float32 array of length ``spec.dim`` per row). Use
    ``embedding_matrix`` to get the (n, d) matrix.

    Parameters
    ----------
    path : str or Path
        The embeddings file (a cellembed Parquet file).

    Returns
    -------
    frame : pandas.DataFrame
        One row per image, with the columns above.
    spec : EmbeddingSpec
        The file's embedding spec.
    """
    table, spec = read_table(path)
    frame = table.drop_columns(["embedding"]).to_pandas()
    matrix = table_matrix(table)
    frame["embedding"] = list(matrix)
    frame.attrs["cellembed_spec"] = spec
    return frame, spec


def embedding_matrix(
    frame: pd.DataFrame,
    spec: EmbeddingSpec,
    taps: Sequence[str] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """The (n, d) float32 matrix and the (n,) label array of a loaded embeddings frame.

    Parameters
    ----------
    frame : pandas.DataFrame
        A DataFrame from ``load_embeddings`` (any subset of its rows).
    spec : EmbeddingSpec
        Its spec.
    taps : sequence of str, optional
        Keep only these taps, by name and in this order (all taps when None).

    Returns
    -------
    X : numpy.ndarray
        The (n, d) matrix, float32 with one column per kept dimension.
    labels : numpy.ndarray
        The (n,) object array holding the label strings (None for unlabelled rows).
    """
    if len(frame) == 0:
        matrix = np.zeros((0, spec.dim), dtype=np.float32)
    else:
        matrix = np.stack(frame["embedding"].to_numpy()).astype(np.float32, copy=False)
    if matrix.shape[1] != spec.dim:
        raise InputError(f"embedding width {matrix.shape[1]} does not match spec ({spec.dim})")
    if taps is not None:
        matrix = np.concatenate([matrix[:, s] for s in spec.tap_slices(taps)], axis=1)
    import pandas as pd  # already loaded: the frame is one

    labels = np.array([None if pd.isna(v) else str(v) for v in frame["label"]], dtype=object)
    return matrix, labels


class Damaged(Exception):
    """A cellembed file whose pages cannot be read (the message says why)."""


#: Rows read at a time when rows are copied out of a file (:func:`copy_rows`).
READ_BATCH = 2048


@dataclass(frozen=True)
class StoredIndex:
    """The rows of a file without their embeddings (for the diff and the no-op check).
    ``mixed``: what is wrong when some rows name another spec than the file's (None: nothing)."""

    paths: tuple[str, ...]
    labels: tuple[str | None, ...]
    sha256s: tuple[str, ...]
    errors: tuple[dict, ...]
    images_root: bytes | None
    mixed: str | None = None


def read_index(path: str | Path, spec: EmbeddingSpec) -> StoredIndex:
    """The rows of ``path`` (whose spec, read from its footer, is ``spec``) without embeddings.

    Raises:
        Damaged: pages that do not decode or fail their checksum.
    """
    try:
        with pq.ParquetFile(path, page_checksum_verification=True) as parquet:
            digest = [SPEC_DIGEST] if SPEC_DIGEST in parquet.schema_arrow.names else []
            table = parquet.read(columns=["path", "label", "sha256", *digest])
            metadata = parquet.schema_arrow.metadata or {}
    except (OSError, pa.ArrowException) as exc:
        raise Damaged(str(exc)) from None
    return StoredIndex(
        paths=tuple(table.column("path").to_pylist()),
        labels=tuple(table.column("label").to_pylist()),
        sha256s=tuple(table.column("sha256").to_pylist()),
        errors=tuple(json.loads(metadata.get(ERRORS_METADATA_KEY, b"[]"))),
        images_root=metadata.get(IMAGES_METADATA_KEY),
        mixed=mixed_rows(path, table, spec),
    )


def read_sha256s(path: str | Path) -> list[str]:
    """The SHA-256 column of a file (a shard's images)."""
    with pq.ParquetFile(path) as parquet:
        return parquet.read(columns=["sha256"]).column("sha256").to_pylist()


def copy_rows(source: str | Path, missing: set[str], positions: dict[str, list[int]],
              matrix: np.ndarray, columns: dict[str, np.ndarray]) -> None:
    """Copy the rows of ``source`` whose SHA-256 is still ``missing`` into their
    ``positions`` of ``matrix`` and of the per-image ``columns`` (a batch at a time, so
    memory stays that of ``matrix``); found ones leave ``missing``.

    Raises:
        Damaged: pages that do not decode or fail their checksum.
    """
    names = list(columns)
    try:
        with pq.ParquetFile(source, page_checksum_verification=True) as parquet:
            for batch in parquet.iter_batches(batch_size=READ_BATCH, columns=["sha256", *names, "embedding"]):
                found = [(j, sha) for j, sha in enumerate(batch.column(0).to_pylist()) if sha in missing]
                if not found:
                    continue
                vectors = table_matrix(batch)
                values = {name: batch.column(name).to_numpy(zero_copy_only=False) for name in names}
                for j, sha in found:
                    if sha in missing:
                        matrix[positions[sha]] = vectors[j]
                        for name in names:
                            columns[name][positions[sha]] = values[name][j]
                        missing.discard(sha)
    except (OSError, pa.ArrowException) as exc:
        raise Damaged(str(exc)) from None
