"""Adapting to a new lab from a few labelled cells: a learning curve (issue 22 §2).

A model trained on one lab (SOURCE) is applied to another lab's cells (TARGET) with k = 0,
5, 10, 25, 50, 100 labelled target cells per class, over several random draws; accuracy and
macro-F1 are measured on the remaining target cells. The target's near-duplicate groups
(``cellclf.near_duplicates``, the embeddings detector, ``cellclf fit``'s default) are drawn whole: one cell of a drawn group is labelled and the group's other copies leave the test
cells, so a labelled cell's rotated or flipped copies are never scored.

Methods (logistic regression, C = 0.1, on standardised embeddings):

* ``source``: the source model on the target cells standardised like the source's (no adaptation);
* ``standardise``: each lab standardised by its own statistics (the target's from all its
  cells, labelled or not), the source model unchanged (today's ``--adapt``);
* ``joint``: standardised per lab, refitted on the source cells and the k labelled target
  cells, the target cells weighted so both labs weigh the same;
* ``target``: standardised per lab, fitted on the k labelled target cells only.

    python bench/adapt_learning_curve.py [--source S.parquet] [--target T.parquet] [--draws 5] [--reverse]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

SOURCE = "/work/cache/pbc-dev-default.parquet"
TARGET = "/work/cache/bccd-train-sample-default.parquet"
KS = (0, 5, 10, 25, 50, 100)
#: The near-duplicate detector (``cellclf fit``'s default).
GROUPING = "embeddings"
C = 0.1


def standardised(X: np.ndarray, reference: np.ndarray) -> np.ndarray:
    mean, std = reference.mean(axis=0), reference.std(axis=0)
    return ((X - mean) / np.maximum(std, 1e-6)).astype(np.float32)


def logistic(X: np.ndarray, y: np.ndarray, weights: np.ndarray | None = None, seed: int = 0):
    from sklearn.linear_model import LogisticRegression

    return LogisticRegression(C=C, max_iter=2000, random_state=seed).fit(X, y, sample_weight=weights)


def scores(model, X: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    from sklearn.metrics import f1_score

    predicted = model.predict(X)
    return float((predicted == y).mean()), float(f1_score(y, predicted, average="macro"))


def load(path: str, classes: list[str] | None):
    from cellclf.data import load_labelled
    from cellembed import read_images_root
    from cellclf.near_duplicates import near_duplicate_groups

    data = load_labelled(Path(path))
    keep = np.ones(len(data.labels), dtype=bool) if classes is None else np.isin(data.labels, classes)
    meta = data.meta[keep].reset_index(drop=True)
    X = data.X[keep].astype(np.float64)
    grouping = near_duplicate_groups(X, meta, GROUPING, read_images_root(path))
    return X, np.asarray(data.labels[keep], dtype=object), grouping


def most_drawn(n_groups: int) -> int:
    """Most groups of a class drawn as labelled: a fifth of them (at least 3) stay for testing."""
    return max(0, n_groups - max(3, int(np.ceil(0.2 * n_groups))))


def draw(labels: np.ndarray, groups: np.ndarray, k: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """One labelled image from each of k random groups per class (at most
    :func:`most_drawn`); test rows: every row of the groups not drawn."""
    labelled, drawn = [], set()
    for name in sorted(set(labels)):
        class_groups = np.unique(groups[labels == name])
        chosen = rng.choice(class_groups, size=min(k, most_drawn(len(class_groups))), replace=False) if k else []
        for group in chosen:
            rows = np.flatnonzero(groups == group)
            labelled.append(rng.choice(rows))
            drawn.add(group)
    test = np.flatnonzero(~np.isin(groups, list(drawn)))
    return np.asarray(labelled, dtype=np.int64), test


def curve(source: str, target: str, draws: int, ks: tuple[int, ...]) -> None:
    from cellclf.data import load_labelled

    classes = sorted(set(load_labelled(Path(target)).labels) & set(load_labelled(Path(source)).labels))
    Xs, ys_names, _ = load(source, classes)
    Xt, yt_names, grouping = load(target, classes)
    code = {name: i for i, name in enumerate(classes)}
    ys = np.array([code[v] for v in ys_names])
    yt = np.array([code[v] for v in yt_names])
    groups = grouping.groups
    print(f"source {Path(source).name}: {len(ys)} images of {', '.join(classes)}")
    per_class = {name: len(set(groups[yt_names == name])) for name in classes}
    print(f"target {Path(target).name}: {len(yt)} images in {len(set(groups))} near-duplicate groups "
          f"({grouping.method}), per class " + ", ".join(f"{name} {n}" for name, n in per_class.items()))
    capped = {name: most_drawn(n) for name, n in per_class.items() if most_drawn(n) < max(ks)}
    if capped:
        print("  at most these cells are labelled per class (a fifth of the groups stay for testing): "
              + ", ".join(f"{name} {n}" for name, n in capped.items()))
    Zs = standardised(Xs, Xs)
    Zt_own = standardised(Xt, Xt)
    Zt_source = standardised(Xt, Xs)
    t0 = time.time()
    base = logistic(Zs, ys)
    print(f"source model fitted in {time.time() - t0:.0f} s")
    print(f"{'k':>4} {'method':<12} {'accuracy':>16} {'macro-F1':>16} {'test cells':>10}")
    for k in ks:
        results: dict[str, list[tuple[float, float]]] = {}
        sizes = []
        for seed in range(draws if k else 1):
            labelled, test = draw(yt_names, groups, k, np.random.default_rng(seed))
            sizes.append(len(test))
            if k == 0:
                results.setdefault("source", []).append(scores(base, Zt_source[test], yt[test]))
                results.setdefault("standardise", []).append(scores(base, Zt_own[test], yt[test]))
                continue
            weights = np.concatenate([np.ones(len(ys)), np.full(len(labelled), len(ys) / len(labelled))])
            joint = logistic(np.vstack([Zs, Zt_own[labelled]]), np.concatenate([ys, yt[labelled]]), weights, seed)
            results.setdefault("joint", []).append(scores(joint, Zt_own[test], yt[test]))
            if len(set(yt[labelled])) == len(classes):
                only = logistic(Zt_own[labelled], yt[labelled], seed=seed)
                results.setdefault("target", []).append(scores(only, Zt_own[test], yt[test]))
        for method, values in results.items():
            a = np.array(values)
            print(f"{k:>4} {method:<12} {a[:, 0].mean():>8.1%} ± {a[:, 0].std():>5.1%} "
                  f"{a[:, 1].mean():>8.3f} ± {a[:, 1].std():.3f} {int(np.mean(sizes)):>10}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", default=SOURCE)
    parser.add_argument("--target", default=TARGET)
    parser.add_argument("--draws", type=int, default=5)
    parser.add_argument("--ks", default=",".join(map(str, KS)))
    parser.add_argument("--reverse", action="store_true", help="also the other direction (target -> source)")
    args = parser.parse_args()
    ks = tuple(int(k) for k in args.ks.split(","))
    curve(args.source, args.target, args.draws, ks)
    if args.reverse:
        print()
        curve(args.target, args.source, args.draws, ks)


if __name__ == "__main__":
    main()
