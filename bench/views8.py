"""What do all 8 views add to the default's 4? Measured at half the cost of extracting 8.

The 8-view embedding is the mean over the dihedral group; the default already holds the
mean of the first 4 views (``bench/accuracy_levers.py``'s cached extraction of the
default's settings with every tap). So this bench runs only views 5-8 (rotate 180,
rotate 270, transpose, anti-transpose) through the same engine, with the same image
preparation, and averages: e8 = (4 e4 + sum of views 5-8) / 8, exactly what
``cellembed extract --views 8`` computes (up to float rounding). Then, like the levers
bench (same folds and head): pbc-dev grouped 5-fold CV of logistic regression on the mid
taps, 4 views against 8, and the seconds per image of the extra views.

Usage:
    python bench/views8.py [--setting views4+stain+crop-cell+std] [--cache /work/cache/levers]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import accuracy_levers as levers  # noqa: E402


def other_views(cache: Path, setting: str, folder: Path, weights: str) -> np.ndarray:
    """(n, dim) sum of views 5-8 of every labelled row of the cached 4-view extraction."""
    path = cache / f"views5to8-pbc-{setting}.npy"
    if path.is_file():
        return np.load(path)
    import dataclasses

    from cellembed.embedder import embedder_from_spec
    from cellembed.pipeline import decoded_batches
    from cellembed.store import load_embeddings
    from cellembed.views import DIHEDRAL

    frame, spec = load_embeddings(levers.extraction_path(cache, "pbc", setting))
    frame = frame[frame["label"].notna()].reset_index(drop=True)
    single = embedder_from_spec(dataclasses.replace(spec, views=1), weights)  # one view per call
    transforms = list(DIHEDRAL.values())[4:8]
    chunks, done, start = [], 0, time.perf_counter()
    for batch in decoded_batches([folder / p for p in frame["path"]], spec, batch_size=16):
        if batch.failed:
            raise SystemExit(f"{len(batch.failed)} images failed to decode ({batch.failed[0][1]})")
        chunks.append(sum(single.embed(np.ascontiguousarray(t(batch.pixels))).astype(np.float64) for t in transforms))
        done += len(batch.decoded)
        rate = done / (time.perf_counter() - start)
        if done % 320 < 16:
            print(f"  views 5-8: {done}/{len(frame)} {rate:.2f} img/s, ETA {(len(frame) - done) / rate:.0f}s", flush=True)
    total = np.concatenate(chunks)
    np.save(path, total)
    print(f"views 5-8: {(time.perf_counter() - start) / len(frame):.3f} s per image for the 4 extra views")
    return total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--setting", default="views4+stain+crop-cell+std")
    parser.add_argument("--pbc", type=Path, default=levers.SHARED / "datasets" / "pbc-dev")
    parser.add_argument("--cache", type=Path, default=Path("/work/cache/levers"))
    parser.add_argument("--weights", default=os.environ.get("CELLEMBED_WEIGHTS") or str(levers.DEFAULT_WEIGHTS))
    args = parser.parse_args()
    from sklearn.metrics import accuracy_score, f1_score
    from threadpoolctl import threadpool_limits

    from cellclf.split import cv_folds
    from cellembed.store import embedding_matrix, load_embeddings

    frame, spec = load_embeddings(levers.extraction_path(args.cache, "pbc", args.setting))
    frame = frame[frame["label"].notna()].reset_index(drop=True)
    full4 = np.stack(frame["embedding"].to_numpy()).astype(np.float64)
    full8 = (4 * full4 + other_views(args.cache, args.setting, args.pbc, args.weights)) / 8
    labels, sha = frame["label"].to_numpy(dtype=object), frame["sha256"].to_numpy()
    columns = np.concatenate([np.arange(s.start, s.stop) for s in spec.tap_slices(levers.TAP_SETS["mid4"])])
    classes = sorted(set(labels))
    y = np.array([classes.index(c) for c in labels])
    print(f"setting {args.setting}, taps mid4 ({len(columns)} dims), head lr C=0.1 balanced, pbc-dev grouped 5-fold CV")
    for name, full in (("4 views", full4), ("8 views", full8)):
        X = full[:, columns].astype(np.float32)
        accs, f1s = [], []
        with threadpool_limits(limits=2):
            for fit_rows, held in cv_folds(labels, sha, 5, seed=0):
                model = levers.make_head("lr", len(classes)).fit(X[fit_rows], y[fit_rows])
                predicted = model.predict(X[held])
                accs.append(accuracy_score(y[held], predicted))
                f1s.append(f1_score(y[held], predicted, average="macro"))
        print(f"{name}: accuracy {np.mean(accs):.4f}+-{np.std(accs):.4f}, macro-F1 {np.mean(f1s):.4f}+-{np.std(f1s):.4f}, "
              f"folds {[round(a, 4) for a in accs]}", flush=True)


if __name__ == "__main__":
    main()
