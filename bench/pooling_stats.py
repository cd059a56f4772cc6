"""Does another pooling statistic beside the average pay? Measured before building it in.

cellembed pools every tap by its global average. This bench runs the default image
preparation (Reinhard colour, cell crop, one view, 299 px) through Xception once per image
and pools the four mid taps (add_2, add_6, add_10, add_11) four ways in the same pass:
average, standard deviation, maximum and generalised mean (GeM, p = 3, over the positive
part; the add layers are residual sums and can be negative). Then, like
``bench/accuracy_levers.py`` (same folds, same head: StandardScaler + logistic regression,
C = 0.1, balanced), one line per combination: pbc-dev grouped 5-fold CV accuracy and
macro-F1, and the two cross-lab directions.

The pooled statistics are cached in ``CACHE/pooling-<dataset>.npz`` (about 10 min per
dataset the first time on 2 cores; a rerun only fits).

Usage:
    python bench/pooling_stats.py [--cache /work/cache/levers]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import accuracy_levers as levers  # noqa: E402  (same folds, head and cross-lab protocol)

TAPS = ("add_2", "add_6", "add_10", "add_11")
STATS = ("mean", "std", "max", "gem3")
COMBINATIONS = ("mean", "std", "max", "gem3", "mean+std", "mean+max", "mean+gem3", "mean+std+max")
#: The cached extraction whose rows (paths, labels, SHA-256) this bench pools again.
ROWS_OF = "stain+crop-cell"


def pooled_network(weights: str):
    """A tf.function: pixels -> {stat: (n, sum of tap widths)} from one forward pass."""
    import keras
    import tensorflow as tf

    from cellembed.backbones import get_backbone
    from cellembed.weights import load_weights, resolve_weights

    backbone = get_backbone("xception")
    network = backbone.build(299)
    load_weights(network, resolve_weights(weights, backbone), backbone)
    layers = backbone.layers(network)
    model = keras.Model(network.input, [layers[t].output for t in TAPS])

    @tf.function(input_signature=[tf.TensorSpec([None, 299, 299, 3], tf.float32)])
    def forward(pixels):
        maps = model(backbone.preprocess(pixels), training=False)
        out = {}
        for stat in STATS:
            parts = []
            for m in maps:
                if stat == "mean":
                    parts.append(tf.reduce_mean(m, axis=[1, 2]))
                elif stat == "std":
                    parts.append(tf.math.reduce_std(m, axis=[1, 2]))
                elif stat == "max":
                    parts.append(tf.reduce_max(m, axis=[1, 2]))
                else:
                    parts.append(tf.reduce_mean(tf.nn.relu(m) ** 3, axis=[1, 2]) ** (1 / 3))
            out[stat] = tf.concat(parts, axis=1)
        return out

    return forward


def pooled(cache: Path, dataset: str, folder: Path, weights: str) -> dict[str, np.ndarray]:
    """Cached pooled statistics of every labelled row of the ROWS_OF extraction."""
    path = cache / f"pooling-{dataset}.npz"
    if path.is_file():
        with np.load(path, allow_pickle=True) as data:
            return {k: data[k] for k in data.files}
    from cellembed.pipeline import decoded_batches
    from cellembed.store import load_embeddings

    frame, spec = load_embeddings(levers.extraction_path(cache, dataset, ROWS_OF))
    frame = frame[frame["label"].notna()].reset_index(drop=True)
    forward = pooled_network(weights)
    paths = [folder / p for p in frame["path"]]
    chunks: dict[str, list[np.ndarray]] = {s: [] for s in STATS}
    start, done = time.perf_counter(), 0
    for batch in decoded_batches(paths, spec, batch_size=16):
        if batch.failed:
            raise SystemExit(f"{dataset}: {len(batch.failed)} images failed to decode ({batch.failed[0][1]})")
        out = forward(batch.pixels)
        for stat in STATS:
            chunks[stat].append(out[stat].numpy())
        done += len(batch.decoded)
        rate = done / (time.perf_counter() - start)
        print(f"\r  pooling {dataset}: {done}/{len(paths)} {rate:.1f} img/s, "
              f"ETA {(len(paths) - done) / rate:.0f}s", end="", flush=True)
    print()
    result = {s: np.concatenate(c) for s, c in chunks.items()}
    result.update(labels=frame["label"].to_numpy(dtype=object), sha256=frame["sha256"].to_numpy(dtype=object))
    tmp = path.with_suffix(".tmp.npz")
    np.savez(tmp, **result)
    os.replace(tmp, path)
    return result


def features(data: dict[str, np.ndarray], combination: str) -> np.ndarray:
    return np.concatenate([data[s] for s in combination.split("+")], axis=1)


def evaluate(data: dict[str, dict[str, np.ndarray]], combination: str) -> dict:
    from sklearn.metrics import accuracy_score, f1_score
    from threadpoolctl import threadpool_limits

    from cellclf.split import cv_folds

    X, labels, sha = features(data["pbc"], combination), data["pbc"]["labels"], data["pbc"]["sha256"]
    classes = sorted(set(labels))
    y = np.array([classes.index(label) for label in labels])
    accs, f1s, seconds = [], [], []
    with threadpool_limits(limits=2):
        for fit_rows, held in cv_folds(labels, sha, 5, seed=0):
            model = levers.make_head("lr", len(classes))
            start = time.perf_counter()
            model.fit(X[fit_rows], y[fit_rows])
            seconds.append(time.perf_counter() - start)
            predicted = model.predict(X[held])
            accs.append(accuracy_score(y[held], predicted))
            f1s.append(f1_score(y[held], predicted, average="macro"))
        cross = {}
        codes = {c: i for i, c in enumerate(levers.SHARED_CLASSES)}
        for source, target in (("pbc", "bccd"), ("bccd", "pbc")):
            Xs, ls = features(data[source], combination), data[source]["labels"]
            Xt, lt = features(data[target], combination), data[target]["labels"]
            s_keep, t_keep = np.isin(ls, levers.SHARED_CLASSES), np.isin(lt, levers.SHARED_CLASSES)
            model = levers.make_head("lr", len(codes))
            model.fit(Xs[s_keep], np.array([codes[c] for c in ls[s_keep]]))
            cross[f"{source}_to_{target}"] = accuracy_score([codes[c] for c in lt[t_keep]], model.predict(Xt[t_keep]))
    return {"acc": np.mean(accs), "acc_std": np.std(accs), "f1": np.mean(f1s), "f1_std": np.std(f1s),
            "dim": X.shape[1], "fit_s": np.mean(seconds), **cross}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pbc", type=Path, default=levers.SHARED / "datasets" / "pbc-dev")
    parser.add_argument("--bccd", type=Path, default=levers.SHARED / "datasets" / "bccd-train-sample")
    parser.add_argument("--cache", type=Path, default=Path("/work/cache/levers"))
    parser.add_argument("--weights", default=os.environ.get("CELLEMBED_WEIGHTS") or str(levers.DEFAULT_WEIGHTS))
    args = parser.parse_args()
    for dataset in levers.DATASETS:
        if not levers.extraction_path(args.cache, dataset, ROWS_OF).is_file():
            sys.exit(f"run `python bench/accuracy_levers.py --settings {ROWS_OF} --extract-only` first")
    data = {"pbc": pooled(args.cache, "pbc", args.pbc, args.weights),
            "bccd": pooled(args.cache, "bccd", args.bccd, args.weights)}
    print(f"preparation: {ROWS_OF}, one view, taps {', '.join(TAPS)}; head: lr C=0.1 balanced")
    print(f"{'pooling':<14} {'dim':>6} {'pbc acc':>15} {'pbc macro-F1':>15} {'fit s':>6} {'pbc4->bccd':>10} {'bccd->pbc4':>10}")
    for combination in COMBINATIONS:
        r = evaluate(data, combination)
        print(f"{combination:<14} {r['dim']:>6} {r['acc']:.4f}+-{r['acc_std']:.4f} {r['f1']:.4f}+-{r['f1_std']:.4f} "
              f"{r['fit_s']:>6.1f} {r['pbc_to_bccd']:>10.4f} {r['bccd_to_pbc']:>10.4f}", flush=True)


if __name__ == "__main__":
    main()
