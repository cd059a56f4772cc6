"""How many distinct cells does a folder hold? Near-duplicate groups by embedding similarity.

bccd-train-sample holds augmented copies (rotated, flipped, shifted) of few cells; pbc-dev
holds distinct cells. For each file this prints the distribution of every image's nearest
neighbour similarity (cosine of the embeddings standardised per dimension over the file;
byte-identical images counted once), and, for thresholds, how many groups single linkage
makes (images joined when their similarity is at least the threshold, within a class
folder) and the largest group. A threshold that groups bccd's copies while leaving pbc-dev's
cells apart is what a split by groups needs (issue 22 §3).

    python bench/near_duplicates.py [FILE ...] [--folders FOLDER ...]

``--folders`` measures, for image folders, the same nearest-neighbour statistic with a
rotation- and shift-tolerant descriptor instead: the colour histogram of the image (8 levels
per channel, Bhattacharyya coefficient), one candidate for the detector issue 22 §3 needs.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

DEFAULT_FILES = ("/work/cache/pbc-dev-default.parquet", "/work/cache/bccd-train-sample-default.parquet")
THRESHOLDS = (0.80, 0.85, 0.90, 0.93, 0.95, 0.97)


def unit_rows(X: np.ndarray) -> np.ndarray:
    Z = (X - X.mean(axis=0)) / np.maximum(X.std(axis=0), 1e-6)
    return Z / np.linalg.norm(Z, axis=1, keepdims=True)


def groups(similar: np.ndarray) -> np.ndarray:
    """Connected components of a boolean adjacency matrix (union-find)."""
    parent = np.arange(len(similar))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for i, j in zip(*np.nonzero(np.triu(similar, 1))):
        a, b = find(i), find(j)
        if a != b:
            parent[max(a, b)] = min(a, b)
    return np.array([find(i) for i in range(len(similar))])


def colour_histograms(folder: Path) -> tuple[np.ndarray, np.ndarray]:
    """(n, 512) square-rooted colour histograms of a folder's images (96 x 96), their labels."""
    from PIL import Image

    files = sorted(p for p in folder.glob("*/*") if p.suffix.lower() in (".jpg", ".jpeg", ".png")
                   and not p.name.startswith("."))
    rows = []
    for path in files:
        pixels = np.asarray(Image.open(path).convert("RGB").resize((96, 96))).reshape(-1, 3) // 32
        counts = np.bincount(pixels[:, 0] * 64 + pixels[:, 1] * 8 + pixels[:, 2], minlength=512).astype(np.float64)
        rows.append(np.sqrt(counts / counts.sum()))
    return np.stack(rows), np.array([p.parent.name for p in files], dtype=object)


def folder_report(folder: Path) -> None:
    H, labels = colour_histograms(folder)
    S = H @ H.T
    np.fill_diagonal(S, -1.0)
    nearest = np.where(labels[:, None] == labels[None, :], S, -1.0).max(axis=1)
    q = np.quantile(nearest, [0.01, 0.1, 0.5, 0.9, 0.99])
    print(f"{folder.name}: {len(H)} images; nearest same-class colour histogram (Bhattacharyya), quantiles "
          "1/10/50/90/99%: " + " ".join(f"{v:.4f}" for v in q))
    for t in (0.98, 0.99, 0.995, 0.998):
        print(f"  images with a same-class neighbour at >= {t}: {(nearest >= t).mean():.1%}")


def main() -> None:
    from cellclf.data import load_labelled

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("files", nargs="*", default=list(DEFAULT_FILES))
    parser.add_argument("--folders", nargs="*", type=Path, default=[])
    args = parser.parse_args()
    for folder in args.folders:
        folder_report(folder)
    if args.folders:
        return
    for path in args.files:
        data = load_labelled(Path(path))
        keep = ~data.meta["sha256"].duplicated().to_numpy()
        X, labels = data.X[keep], np.asarray(data.labels[keep], dtype=object)
        U = unit_rows(X.astype(np.float64))
        S = U @ U.T
        np.fill_diagonal(S, -1.0)
        same_class = labels[:, None] == labels[None, :]
        nearest = np.where(same_class, S, -1.0).max(axis=1)
        q = np.quantile(nearest, [0.01, 0.1, 0.25, 0.5, 0.75, 0.9, 0.99])
        print(f"{Path(path).name}: {len(X)} distinct images, {len(set(labels))} classes")
        print("  nearest same-class neighbour's similarity, quantiles 1/10/25/50/75/90/99%: "
              + " ".join(f"{v:.3f}" for v in q))
        for t in THRESHOLDS:
            g = groups((S >= t) & same_class)
            sizes = np.bincount(np.unique(g, return_inverse=True)[1])
            per_class = {c: len(set(g[labels == c])) for c in sorted(set(labels))}
            print(f"  threshold {t:.2f}: {len(sizes)} groups (largest {sizes.max()}, "
                  f"{(sizes == 1).sum()} single images); per class "
                  + ", ".join(f"{c} {n}" for c, n in per_class.items()))


if __name__ == "__main__":
    main()
