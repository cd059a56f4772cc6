"""The drift signal measured: does it tell another lab's cells from the training lab's?

Uses two embeddings files of the same spec (the default preset): the training lab's
(pbc-dev, 8 classes) and another lab's (bccd-train-sample, 4 white-cell classes, smear
crops, augmented copies of few cells). For each reference (pbc-dev's 4 classes that
bccd has, pbc-dev's 8 classes, and the reverse: bccd-train-sample), the detector of
``cellclf.novelty`` is fitted on the reference's training split and calibrated on its
validation split (the split ``cellclf fit`` makes, seed 0), then:

- AUROC of the per-cell score separating the reference's test cells from the other lab's;
- the share of the reference's test cells (in-domain, never seen) with p < 0.01 (target
  0.5-2%) and of the other lab's cells;
- the batch warning's rate on 200 random 20-cell batches of each (target: every batch of
  the other lab, at most 1% of in-domain batches).

Variants (PCA directions, with or without the distance off them) are printed so the default
is chosen by measurement. bccd-train-sample's split keeps only byte-identical files
together, so its validation holds augmented copies of training cells (issue 22 §3): the
reverse direction's in-domain rate is measured on such a split and is said as such.

    python bench/drift_signal.py [--pbc FILE] [--other FILE]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

FOUR = ("eosinophil", "lymphocyte", "monocyte", "neutrophil")


def load(path: Path, classes=None):
    from cellclf.data import load_labelled

    data = load_labelled(path)
    keep = np.ones(len(data.labels), bool) if classes is None else np.isin(data.labels, classes)
    meta = data.meta[keep].reset_index(drop=True)
    return data.X[keep], np.asarray(data.labels[keep], dtype=object), meta


def split(meta, seed: int = 0) -> np.ndarray:
    from cellclf.split import split_rows

    return split_rows(meta, seed=seed)


def batch_rate(p: np.ndarray, rng: np.random.Generator, batches: int = 200, size: int = 20) -> float:
    from cellclf.novelty import batch_drift

    fired = [batch_drift(p[rng.choice(len(p), size, replace=False)]).fires for _ in range(batches)]
    return float(np.mean(fired))


def measure(name: str, X, meta, other, variants) -> list[str]:
    from sklearn.metrics import roc_auc_score

    from cellclf.novelty import NoveltyDetector

    where = split(meta)
    train, val, test = X[where == "train"], X[where == "validation"], X[where == "test"]
    lines = []
    for n_components, residual in variants:
        started = time.perf_counter()
        detector = NoveltyDetector(n_components=n_components, residual=residual).fit(train).calibrate(val)
        fitted = time.perf_counter() - started
        started = time.perf_counter()
        inside, outside = detector.score(test), detector.score(other)
        per_1000 = 1e6 * (time.perf_counter() - started) / (len(test) + len(other))  # ms per 1000 cells
        auroc = roc_auc_score(np.r_[np.zeros(len(inside)), np.ones(len(outside))], np.r_[inside, outside])
        p_in, p_out = detector.p_values(test), detector.p_values(other)
        rng = np.random.default_rng(0)
        size_mb = sum(a.nbytes for a in detector.to_arrays().values()) / 1e6
        lines.append(
            f"{name:<22} {n_components:>4} {'yes' if residual else 'no':>8} {auroc:>7.4f} "
            f"{(p_in < 0.01).mean():>9.2%} {(p_out < 0.01).mean():>9.2%} "
            f"{batch_rate(p_in, rng):>10.1%} {batch_rate(p_out, rng):>10.1%} "
            f"{len(train):>6}/{len(val)}/{len(test)} {fitted:>6.1f}s {per_1000:>6.1f}ms {size_mb:>5.1f}MB"
        )
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pbc", type=Path, default=Path("/work/cache/pbc-dev-default.parquet"))
    parser.add_argument("--other", type=Path, default=Path("/work/cache/bccd-train-sample-default.parquet"))
    parser.add_argument("--variants", default="64:yes,64:no,32:yes,128:yes")
    args = parser.parse_args()
    variants = [(int(a), b == "yes") for a, b in (v.split(":") for v in args.variants.split(","))]

    pbc8, _, meta8 = load(args.pbc)
    pbc4, _, meta4 = load(args.pbc, FOUR)
    bccd, _, bccd_meta = load(args.other)
    print(f"pbc-dev: {len(pbc8)} cells (8 classes), {len(pbc4)} of the 4 classes bccd has; "
          f"bccd-train-sample: {len(bccd)} cells; {pbc8.shape[1]} dims")
    print(f"{'reference':<22} {'dirs':>4} {'residual':>8} {'AUROC':>7} {'in p<.01':>9} {'out p<.01':>9} "
          f"{'in batch':>10} {'out batch':>10} {'train/val/test':>14} {'fit':>7} {'score':>8} {'size':>7}")
    lines = measure("pbc-dev 4 classes", pbc4, meta4, bccd, variants)
    lines += measure("pbc-dev 8 classes", pbc8, meta8, bccd, variants)
    lines += measure("bccd (reverse)", bccd, bccd_meta, pbc8, variants)
    print("\n".join(lines))
    print("AUROC: reference test cells (0) against the other lab's (1); in/out p<.01: share of cells flagged; "
          "in/out batch: share of 200 random 20-cell batches whose warning fires; score: ms per 1000 cells")


if __name__ == "__main__":
    main()
