"""int8 against fp32 for the default preset (issue 23 §1): speed, agreement and accuracy.

1. Speed: the same 256 pbc-dev images (32 per class) extracted with the default preset in
   fp32 and in int8 (`cellembed.extract`, the whole work: decoding, colour normalisation,
   cell crop, 4 views, pooling), each precision's network built and cached beforehand and
   warmed up on 8 images; images/s each and their ratio. Also the network alone (the 4 views'
   forward passes and pooling on already prepared pixels).
2. Agreement: the cosine between each image's fp32 and int8 embedding.
3. Accuracy: pbc-dev 5-fold CV (folds by image, seed 0; logistic regression C = 0.1,
   balanced classes, as bench/accuracy_levers.py) of the default embeddings in fp32 and in
   int8, the same folds, per fold and mean.

    python bench/int8.py [--fp32 FILE] [--int8 FILE] [--images FOLDER]

The int8 file is extracted (or completed) first when it is not there: about 11 minutes for
the 3,999 images on 2 cores. Prints the CPU's model and int8 instructions. Run it alone.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_WEIGHTS = ROOT.parent / "shared" / "models" / "xception_imagenet_notop.weights.h5"


def cpu_line() -> str:
    from cellembed.precision import int8_instructions

    model = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                  if line.startswith("model name")), "unknown CPU")
    return f"{model}, {os.cpu_count()} logical CPUs; int8 instructions: {', '.join(int8_instructions()) or 'none'}"


def subset(images: Path, target: Path, per_class: int) -> list[Path]:
    for folder in sorted(p for p in images.iterdir() if p.is_dir()):
        (target / folder.name).mkdir(parents=True)
        for image in sorted(p for p in folder.glob("*.jpg") if not p.name.startswith("."))[:per_class]:
            shutil.copy(image, target / folder.name / image.name)
    return sorted(target.glob("*/*.jpg"))


def speed(folder: Path, files: list[Path], weights: str) -> dict[str, dict[str, float]]:
    from cellembed import extract, load_embedder, load_embeddings

    out: dict[str, dict[str, float]] = {}
    scratch = Path(tempfile.mkdtemp(prefix="int8-warm-"))
    warm = scratch / "images"
    for image in files[:8]:
        (warm / image.parent.name).mkdir(parents=True, exist_ok=True)
        shutil.copy(image, warm / image.parent.name / image.name)
    for precision in ("fp32", "int8"):
        embedder = load_embedder(weights, precision=precision, log=print)
        extract(warm, scratch / f"{precision}.parquet", embedder=embedder, progress=False)
        target = folder.parent / f"{precision}.parquet"
        start = time.perf_counter()
        result = extract(folder, target, embedder=embedder, progress=False)
        seconds = time.perf_counter() - start
        pixels = np.stack([embedder.load(path).pixels for path in files[:64]])
        start = time.perf_counter()
        for i in range(len(pixels)):
            embedder.embed(pixels[i : i + 1])
        network = time.perf_counter() - start
        frame, _ = load_embeddings(target)
        out[precision] = {"images": result.embedded, "seconds": seconds, "per_s": result.embedded / seconds,
                          "network_per_s": len(pixels) / network,
                          "embeddings": dict(zip(frame["sha256"], frame["embedding"]))}
        print(f"{precision}: {result.embedded} images in {seconds:.1f} s = {result.embedded / seconds:.2f} images/s "
              f"(network alone: {len(pixels) / network:.2f} images/s on 64 of them)", flush=True)
    shutil.rmtree(scratch, ignore_errors=True)
    return out


def cv_accuracy(fp32: Path, int8: Path) -> None:
    from sklearn.metrics import accuracy_score
    from threadpoolctl import threadpool_limits

    from cellclf.families.lr import make_lr
    from cellclf.split import cv_folds
    from cellembed.store import embedding_matrix, load_embeddings

    frames = {}
    for name, path in (("fp32", fp32), ("int8", int8)):
        frame, spec = load_embeddings(path)
        frame = frame[frame["label"].notna()].drop_duplicates("sha256").set_index("sha256")
        frames[name] = (frame, spec)
    common = sorted(set(frames["fp32"][0].index) & set(frames["int8"][0].index))
    print(f"CV on {len(common)} images in both files "
          f"(fp32 {frames['fp32'][1].precision}, int8 {frames['int8'][1].precision})")
    labels = frames["fp32"][0].loc[common, "label"].to_numpy(dtype=object)
    classes = sorted(set(labels))
    y = np.array([classes.index(label) for label in labels])
    folds = list(cv_folds(labels, np.asarray(common, dtype=object), 5, seed=0))
    scores = {}
    with threadpool_limits(limits=2):
        for name, (frame, spec) in frames.items():
            X, _ = embedding_matrix(frame.loc[common].reset_index(), spec)
            scores[name] = []
            for fit_rows, held in folds:
                model = make_lr(0.1, "balanced").fit(X[fit_rows], y[fit_rows])
                scores[name].append(accuracy_score(y[held], model.predict(X[held])))
            print(f"  {name}: folds " + " ".join(f"{s:.4f}" for s in scores[name])
                  + f"; mean {np.mean(scores[name]):.4f}", flush=True)
    print(f"  int8 - fp32: {100 * (np.mean(scores['int8']) - np.mean(scores['fp32'])):+.2f} points "
          f"(per fold {' '.join(f'{100 * (a - b):+.2f}' for a, b in zip(scores['int8'], scores['fp32']))})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=Path, default=ROOT.parent / "shared" / "datasets" / "pbc-dev")
    parser.add_argument("--fp32", type=Path, default=Path("/work/cache/pbc-dev-default.parquet"))
    parser.add_argument("--int8", type=Path, default=Path("/work/cache/pbc-dev-int8.parquet"))
    parser.add_argument("--weights", default=os.environ.get("CELLEMBED_WEIGHTS") or str(DEFAULT_WEIGHTS))
    parser.add_argument("--skip-speed", action="store_true")
    args = parser.parse_args()
    print(cpu_line(), flush=True)
    if not args.skip_speed:
        with tempfile.TemporaryDirectory(prefix="int8-bench-") as tmp:
            folder = Path(tmp) / "images"
            files = subset(args.images, folder, 32)
            result = speed(folder, files, args.weights)
            print(f"ratio int8 / fp32: {result['int8']['per_s'] / result['fp32']['per_s']:.2f}x extraction, "
                  f"{result['int8']['network_per_s'] / result['fp32']['network_per_s']:.2f}x network alone")
            a, b = result["fp32"]["embeddings"], result["int8"]["embeddings"]
            shared = sorted(set(a) & set(b))
            A, B = np.stack([a[s] for s in shared]), np.stack([b[s] for s in shared])
            cosine = (A * B).sum(axis=1) / (np.linalg.norm(A, axis=1) * np.linalg.norm(B, axis=1))
            print(f"cosine fp32 vs int8 on {len(shared)} images: min {cosine.min():.4f}, "
                  f"median {np.median(cosine):.4f}, mean {cosine.mean():.4f}", flush=True)
    from cellembed import extract

    start = time.perf_counter()  # the int8 file is made or completed (its images already in it are reused)
    result = extract(args.images, args.int8, weights=args.weights, precision="int8", progress=False)
    print(f"int8 file {args.int8}: {result.rows} images ({result.embedded} embedded now) "
          f"in {time.perf_counter() - start:.0f} s", flush=True)
    cv_accuracy(args.fp32, args.int8)


if __name__ == "__main__":
    main()
