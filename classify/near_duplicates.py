"""Near-duplicate groups: copies of one cell (rotated, flipped, shifted, re-encoded) stay together.

Many training folders are built by augmentation: a few hundred cells, each saved again
rotated, flipped or shifted. A split that keeps only byte-identical files together puts
copies of a training cell in the validation and test splits, and the fit then measures how
well it recognises cells it has seen (issue 22 §3: 96.0% validation accuracy on such a
folder, 84.4% on that lab's held-out cells).

Three detectors, measured with ``bench/near_duplicates.py`` and fits of bccd-train-sample
(2,000 augmented images of about 400 cells; that lab's 2,487 held-out cells: 84.4%
accuracy, sets covering 84.4%) and pbc-dev (distinct cells):

* ``embeddings`` (the default): the embeddings standardised per dimension over the input,
  average-linkage clustering within each class cut at :data:`EMBEDDING_SIMILARITY`. On
  bccd-train-sample it makes 600 groups, and the fit's validation and test by those groups
  say what the held-out cells say (test accuracy 83.5%, coverage 88.8%; by files: 96.0% and
  96.7%). It joins look-alike cells too (pbc-dev: groups of up to a few dozen platelets or
  monocytes), which costs little (pbc-dev's test accuracy is unchanged), and it can miss a
  copy whose rotation left black corners when the input is small (a 20-degree rotated copy
  among 67 sample images).
* ``images``: a descriptor of each image that rotation, flipping, shifting and re-encoding
  leave almost unchanged: the colour histogram of the image without the black fill a
  rotation or shift leaves (8 levels per channel), and colour histograms in 6 rings around
  the nucleus (the darkest-green tenth of the pixels); average linkage cut at
  :data:`IMAGE_SIMILARITY`. Precise: a rotated (20 degrees), a flipped and a re-encoded copy
  of a sample image score 0.994-0.999 against it, another neutrophil 0.91-0.93, and 96% of
  pbc-dev's images stay alone (largest group 4). But it misses copies shifted so far that
  the cell leaves the frame: on bccd-train-sample (801 groups) the fit's test still says 94.1%.
* ``both``: a group of either joins. Groups chain through each other (bccd-train-sample's
  500 monocytes fall into 15 groups), so validation turns pessimistic and lumpy (79.3%).

Average linkage rather than joining every pair above a threshold: single linkage chains
distinct cells of one class into groups of hundreds. Identical files always share a group.
A folder "looks augmented" when many images have a near-copy (a same-class neighbour above
the copy threshold); fit then says so.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

#: The detectors (``both``: a group of either joins; ``off``: identical files only).
METHODS = ("both", "images", "embeddings", "off")
#: Average-linkage cut on the image descriptors (cosine).
IMAGE_SIMILARITY = 0.99
#: Average-linkage cut on the standardised embeddings (cosine).
EMBEDDING_SIMILARITY = 0.80
#: Similarity at which a neighbour counts as a near-copy of an image (the augmented-folder
#: test), per detector: bccd-train-sample / pbc-dev images with such a neighbour: 69% / 0.3%
#: (image descriptors at 0.994), about 55% / under 10% (embeddings at 0.90).
COPY_SIMILARITY = {"images": 0.994, "embeddings": 0.90}
#: Below this level (0-255) in every channel a pixel is fill (a rotation's black corners).
FILL_LEVEL = 40
#: Side of the image the descriptor is computed on, and its rings around the nucleus.
DESCRIPTOR_SIZE, DESCRIPTOR_RINGS = 128, 6
#: Share of images with a near-copy above which a folder is said to look augmented.
AUGMENTED_SHARE = 0.25
#: Largest class clustered (the pairwise distances take 4 x n^2 bytes: 0.6 GB at 12,000);
#: the images of a larger class are grouped by identical files only, and fit says so.
MAX_CLASS_IMAGES = 12_000


@dataclass(frozen=True)
class Grouping:
    """The near-duplicate groups of a labelled input.

    Attributes:
        groups: (n,) group id of each row (the smallest SHA-256 among its members), aligned
            with the input rows.
        method: the detector (:data:`METHODS`).
        copy_share: share of distinct images with a same-class near-copy.
        unclustered: classes too large to cluster (grouped by identical files only).
        fallback: why the image detector was not used, where it was asked for ("" if it was).
    """

    groups: np.ndarray
    method: str
    copy_share: float
    unclustered: tuple[str, ...] = ()
    fallback: str = ""

    @property
    def sizes(self) -> np.ndarray:
        """Distinct images per group."""
        return np.unique(self.groups, return_counts=True)[1]

    @property
    def looks_augmented(self) -> bool:
        return self.method != "off" and self.copy_share >= AUGMENTED_SHARE

    def facts(self, distinct: int) -> dict[str, Any]:
        """What metrics.json and the report record (``distinct``: distinct images)."""
        sizes = self.sizes
        return {
            "method": self.method,
            "similarity": {"images": IMAGE_SIMILARITY, "embeddings": EMBEDDING_SIMILARITY,
                           "both": [IMAGE_SIMILARITY, EMBEDDING_SIMILARITY]}.get(self.method, 1.0),
            "distinct_images": int(distinct),
            "groups": int(len(sizes)),
            "largest": int(sizes.max()) if len(sizes) else 0,
            "grouped_images": int(sizes[sizes > 1].sum()),
            "copy_share": round(float(self.copy_share), 4),
            "looks_augmented": bool(self.looks_augmented),
            "unclustered_classes": list(self.unclustered),
            "fallback": self.fallback,
        }


def describe(facts: dict[str, Any]) -> str:
    """One line about a grouping's facts (fit's console, the report)."""
    if facts["method"] == "off":
        return (f"{facts['groups']} groups of identical files (near-duplicate grouping off); "
                "copies of a cell that are not byte-identical may sit in different splits")
    what = {"images": f"image descriptors, average cosine >= {IMAGE_SIMILARITY:g}",
            "embeddings": f"embeddings, average cosine >= {EMBEDDING_SIMILARITY:g}",
            "both": f"image descriptors at {IMAGE_SIMILARITY:g} or embeddings at {EMBEDDING_SIMILARITY:g}, "
                    "average cosine"}[facts["method"]]
    line = (f"{facts['distinct_images']} distinct images in {facts['groups']} groups of near-duplicates "
            f"(by {what} within a class; {facts['grouped_images']} images "
            f"share a group, the largest holds {facts['largest']}); each group stays in one split and one CV fold")
    if facts.get("fallback"):
        line += f" ({facts['fallback']})"
    if facts.get("unclustered_classes"):
        line += (f"; classes over {MAX_CLASS_IMAGES:,} images are grouped by identical files only: "
                 + ", ".join(facts["unclustered_classes"]))
    return line


def augmented_warning(facts: dict[str, Any]) -> str | None:
    """The warning for a folder that looks augmented, or None."""
    if not facts.get("looks_augmented"):
        return None
    return (f"{facts['copy_share']:.0%} of the images have a near-copy in their class: the folder looks augmented "
            "(rotated, flipped or shifted copies of fewer cells). The copies are kept in one split, but validation "
            "is only as honest as the grouping: check the accuracy on cells of another slide or day before "
            "trusting it")


def image_descriptor(path: str | Path) -> np.ndarray:
    """The unit-length descriptor of one image that rotation, flipping, shifting and
    re-encoding leave almost unchanged (see the module docstring).

    Raises:
        OSError: the file cannot be read as an image.
    """
    from PIL import Image

    size = DESCRIPTOR_SIZE
    with Image.open(path) as image:
        image.draft("RGB", (2 * size, 2 * size))
        pixels = np.asarray(image.convert("RGB").resize((size, size)), dtype=np.int32)
    valid = pixels.max(axis=2) > FILL_LEVEL
    if valid.sum() < 16:  # an all-dark image: use every pixel
        valid[:] = True
    fine = pixels // 32
    colours = np.bincount((fine[..., 0] * 64 + fine[..., 1] * 8 + fine[..., 2])[valid], minlength=512)
    green = pixels[..., 1]
    nucleus = valid & (green <= np.percentile(green[valid], 10))
    rows, cols = np.nonzero(nucleus)
    radius = np.hypot(*(np.mgrid[:size, :size] - np.array([rows.mean(), cols.mean()])[:, None, None]))
    coarse = pixels // 64
    codes = coarse[..., 0] * 16 + coarse[..., 1] * 4 + coarse[..., 2]
    edges = np.linspace(0.0, size / 2, DESCRIPTOR_RINGS + 1)
    rings = [np.bincount(codes[valid & (radius >= lo) & (radius < hi)], minlength=64)
             for lo, hi in zip(edges[:-1], edges[1:])]
    ring_part = np.concatenate([np.sqrt(r / max(r.sum(), 1)) for r in rings])
    ring_part /= max(np.linalg.norm(ring_part), 1e-12)
    return np.concatenate([np.sqrt(colours / colours.sum()), ring_part]) / np.sqrt(2.0)


def image_descriptors(root: Path, paths: list[str]) -> np.ndarray:
    """(n, 896) descriptors of the images ``root / path``.

    Raises:
        OSError: an image is missing or unreadable (its path in the message).
    """
    rows = []
    for path in paths:
        try:
            rows.append(image_descriptor(root / path))
        except (OSError, ValueError) as exc:
            raise OSError(f"{root / path}: {exc}") from exc
    return np.stack(rows) if rows else np.zeros((0, 896))


def _standardised_units(X: np.ndarray) -> np.ndarray:
    """Rows standardised per dimension (over all rows) and scaled to unit length."""
    X = np.asarray(X, dtype=np.float64)
    Z = (X - X.mean(axis=0)) / np.maximum(X.std(axis=0), 1e-6)
    norms = np.linalg.norm(Z, axis=1, keepdims=True)
    return Z / np.maximum(norms, 1e-12)


def _cluster(units: np.ndarray, similarity: float) -> np.ndarray:
    """Average-linkage cluster labels of unit rows cut at ``similarity`` (cosine)."""
    from scipy.cluster.hierarchy import fcluster, linkage
    from scipy.spatial.distance import pdist

    if len(units) < 2:
        return np.zeros(len(units), dtype=np.int64)
    with np.errstate(invalid="ignore", divide="ignore"):
        distances = pdist(units, "cosine")
    distances = np.clip(np.nan_to_num(distances, nan=1.0), 0.0, 2.0)  # a zero row: unlike every other
    tree = linkage(distances, method="average")
    return fcluster(tree, t=1.0 - similarity, criterion="distance")


def _nearest_similarity(units: np.ndarray) -> np.ndarray:
    """Each row's largest cosine to another row (-1 for a lone row), in blocks."""
    nearest = np.full(len(units), -1.0)
    if len(units) < 2:
        return nearest
    for start in range(0, len(units), 2048):
        block = units[start:start + 2048] @ units.T
        block[np.arange(len(block)), np.arange(start, start + len(block))] = -1.0
        nearest[start:start + len(block)] = block.max(axis=1)
    return nearest


def _distinct(meta: pd.DataFrame) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Sorted distinct SHA-256, the majority label of each, and the first row holding it."""
    from cellclf.split import group_labels

    sha = meta["sha256"].to_numpy(dtype=object)
    labels = group_labels(meta[["sha256", "label"]])  # by file: any earlier grouping left out
    first = pd.Series(np.arange(len(meta))).groupby(sha, sort=True).first()
    return labels.index.to_numpy(dtype=object), labels.to_numpy(dtype=object), first.loc[labels.index].to_numpy()


def _union(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """The finest grouping coarser than both: rows sharing a group in ``a`` or in ``b`` (or
    chained through such rows) share one; its id is the smallest id among the members."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    ids_a, rows_a = np.unique(a, return_inverse=True)
    ids_b, rows_b = np.unique(b, return_inverse=True)
    n = len(a)
    edges = coo_matrix((np.ones(2 * n), (np.concatenate([np.arange(n), np.arange(n)]),
                                          np.concatenate([n + rows_a, n + len(ids_a) + rows_b]))),
                       shape=(n + len(ids_a) + len(ids_b),) * 2)
    _, component = connected_components(edges, directed=False)
    return pd.Series(a).groupby(component[:n]).transform("min").to_numpy(dtype=object)


def near_duplicate_groups(
    X: np.ndarray, meta: pd.DataFrame, method: str = "embeddings", images_root: str | Path | None = None,
) -> Grouping:
    """Group the rows of a labelled input into near-duplicate groups.

    Args:
        X: (n, d) embeddings.
        meta: ``path``, ``sha256`` and ``label`` of each row (n rows).
        method: ``both`` (the union of the two detectors' groups), ``images`` (the image
            descriptors of ``images_root / path``), ``embeddings`` or ``off`` (identical
            files only). Where the images folder is not given or an image cannot be read,
            ``both`` and ``images`` use the embeddings alone and the result's ``fallback``
            says why.
        images_root: the images folder the embeddings were extracted from.

    Returns:
        A :class:`Grouping` whose ``groups`` are aligned with the rows. An image whose
        identical copies carry different labels is clustered with its majority label.
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {', '.join(METHODS)}, got {method!r}")
    if method == "both":
        by_images = near_duplicate_groups(X, meta, "images", images_root)
        if by_images.method != "images":  # the images are not here: the embeddings alone
            return by_images
        by_embeddings = near_duplicate_groups(X, meta, "embeddings")
        return Grouping(
            groups=_union(by_images.groups, by_embeddings.groups),
            method="both",
            copy_share=max(by_images.copy_share, by_embeddings.copy_share),
            unclustered=by_images.unclustered,
        )
    distinct, labels, first = _distinct(meta)
    fallback = ""
    units = None
    if method == "images":
        try:
            if images_root is None or not Path(images_root).is_dir():
                raise OSError(f"the images folder {images_root or '(not recorded)'} is not here")
            units = image_descriptors(Path(images_root), list(meta["path"].to_numpy()[first]))
        except OSError as exc:
            method, fallback = "embeddings", f"grouped by embeddings: {exc}"
    if method == "embeddings":
        units = _standardised_units(np.asarray(X)[first])
    group_of = distinct.copy()
    copies = np.zeros(len(distinct), dtype=bool)
    unclustered = []
    for name in sorted(set(labels)) if units is not None else []:
        rows = np.flatnonzero(labels == name)
        if len(rows) > MAX_CLASS_IMAGES:
            unclustered.append(str(name))
            continue
        copies[rows] = _nearest_similarity(units[rows]) >= COPY_SIMILARITY[method]
        similarity = IMAGE_SIMILARITY if method == "images" else EMBEDDING_SIMILARITY
        clusters = _cluster(units[rows], similarity)
        group_of[rows] = pd.Series(distinct[rows]).groupby(clusters).transform("min").to_numpy(dtype=object)
    lookup = dict(zip(distinct, group_of))
    return Grouping(
        groups=np.array([lookup[s] for s in meta["sha256"].to_numpy(dtype=object)], dtype=object),
        method=method,
        copy_share=float(copies.mean()) if len(copies) else 0.0,
        unclustered=tuple(unclustered),
        fallback=fallback,
    )
