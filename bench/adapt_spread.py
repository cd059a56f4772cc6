"""How spread out a folder's embeddings are, relative to the training images' (what
``--adapt`` checks before re-centring a folder: cellclf.estimator.MIN_ADAPT_SPREAD).

For each folder of ``--n`` images the figure is the median over embedding dimensions of the
folder's standard deviation divided by the training images' (the model's recorded
reference). Folders:

- pbc: random pbc-dev cells not used as the reference (same lab: about 1);
- other lab: random cells of bccd-train-sample (another microscope and stain);
- one type: pbc cells of one class (``--adapt`` wants a mix);
- re-encoded: one pbc cell saved as JPEG at ``--n`` qualities (60-98);
- views: one pbc cell flipped / rotated (the 8 dihedral views) and re-encoded;
- two cells: two pbc cells, each re-encoded ``--n`` / 2 times.

Usage:
    python bench/adapt_spread.py [--pbc ../shared/datasets/pbc-dev]
        [--other ../shared/datasets/bccd-train-sample] [--n 20] [--folders 3] [--work /tmp/adapt-spread]
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"


def images_of(folder: Path) -> dict[str, list[Path]]:
    return {d.name: sorted(p for p in d.iterdir() if p.suffix.lower() in (".jpg", ".jpeg") and not p.name.startswith("."))
            for d in sorted(folder.iterdir()) if d.is_dir()}


def copy_into(folder: Path, files: list[Path]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for i, file in enumerate(files):
        shutil.copy(file, folder / f"{i:03d}_{file.name}")
    return folder


def re_encoded(folder: Path, cells: list[Path], n: int, views: bool) -> Path:
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    per_cell = n // len(cells)
    for c, cell in enumerate(cells):
        image = Image.open(cell).convert("RGB")
        for k in range(per_cell):
            shown = image
            if views:
                shown = image.rotate(90 * (k % 4), expand=True)
                if (k // 4) % 2:
                    shown = shown.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
            shown.save(folder / f"{c}_{k:03d}.jpg", quality=60 + (38 * k) // max(1, per_cell - 1))
    return folder


def embed(folder: Path, out: Path) -> np.ndarray:
    from cellembed import embedding_matrix, extract, load_embeddings

    extract(folder, out, progress=False)
    return embedding_matrix(*load_embeddings(out))[0].astype(np.float64)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pbc", type=Path, default=SHARED / "datasets" / "pbc-dev")
    parser.add_argument("--other", type=Path, default=SHARED / "datasets" / "bccd-train-sample")
    parser.add_argument("--n", type=int, default=20, help="images per folder")
    parser.add_argument("--folders", type=int, default=3, help="random folders of each kind")
    parser.add_argument("--reference", type=int, default=20, help="reference images per pbc class")
    parser.add_argument("--work", type=Path, default=Path("/tmp/adapt-spread"))
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if not os.environ.get("CELLEMBED_WEIGHTS"):
        default = SHARED / "models" / "xception_imagenet_notop.weights.h5"
        if default.is_file():
            os.environ["CELLEMBED_WEIGHTS"] = str(default)
    rng = random.Random(args.seed)
    pbc, other = images_of(args.pbc), images_of(args.other)
    for files in pbc.values():
        rng.shuffle(files)
    reference = [f for files in pbc.values() for f in files[: args.reference]]
    rest = [f for files in pbc.values() for f in files[args.reference:]]
    rng.shuffle(rest)
    others = [f for files in other.values() for f in files]
    rng.shuffle(others)

    work = args.work
    train = embed(copy_into(work / "reference", reference), work / "reference.parquet")
    std = train.std(axis=0)
    varies = std > 1e-6
    print(f"reference: {len(train)} pbc-dev images ({args.reference} per class), {train.shape[1]} dims; "
          f"default preset; machine: {os.cpu_count()} cores")
    folders = []
    for k in range(args.folders):
        folders.append(("pbc (same lab)", copy_into(work / f"pbc{k}", rest[k * args.n:(k + 1) * args.n])))
        folders.append(("other lab (bccd)", copy_into(work / f"other{k}", others[k * args.n:(k + 1) * args.n])))
        kind = sorted(pbc)[k % len(pbc)]
        folders.append((f"one type ({kind})", copy_into(work / f"type{k}", pbc[kind][args.reference:args.reference + args.n])))
        cell = rest[-1 - k]
        folders.append(("one cell re-encoded", re_encoded(work / f"encoded{k}", [cell], args.n, views=False)))
        folders.append(("one cell, 8 views", re_encoded(work / f"views{k}", [cell], args.n, views=True)))
        folders.append(("two cells re-encoded", re_encoded(work / f"two{k}", rest[-3 - 2 * k:-1 - 2 * k], args.n,
                                                            views=False)))
    print(f"{'folder':<24} {'images':>6} {'distinct rows':>13} {'relative spread':>16}")
    for kind, folder in folders:
        X = embed(folder, work / f"{folder.name}.parquet")
        distinct = np.unique(X, axis=0)
        relative = float(np.median(distinct.std(axis=0)[varies] / std[varies]))
        print(f"{kind:<24} {len(X):>6} {len(distinct):>13} {relative:>16.3f}")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
