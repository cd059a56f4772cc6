"""Throughput of embedding extraction: the notebook way against `cellembed extract`.

Measures, on the same images at the same input size:
  (a) the common notebook way: ImageDataGenerator.flow_from_directory (Xception
      preprocessing) + model.predict of an Xception(include_top=False, pooling="avg"),
      batch 32 (ImageDataGenerator lives in keras.src.legacy in Keras 3);
  (b) cellembed.extract with the first version's settings (``--preset v1``: multiscale taps,
      one forward pass per image, like the notebook; the default preset's 4 views cost 4
      passes, see bench/accuracy_levers.py) into a new Parquet file, with the
      default engine (ONNX Runtime, its one-time conversion of Xception already cached) and,
      for reference, with --engine tensorflow; the one-time conversion is timed on its own;
  (c) cellembed.extract again on the unchanged folder (the cache), in-process, and the same
      as a fresh `cellembed extract` command (Python start-up included).

Every timed run is a fresh Python process: a second network run in one process was seen
to slow down by up to 20%, whichever way ran first. Inside each process TensorFlow is
imported before the clock starts (both ways need it); the clock then covers model build
(or loading the converted model), weights, decoding, the network and writing. The ways
take turns for --rounds rounds and each counts its fastest round, since noise on this
shared VM only ever slows a run down. The image files are read once beforehand so every
run starts with a warm page cache, and the conversion cache is a fresh temporary folder.

Usage:  python bench/extract_throughput.py [--per-class 60] [--input-size 299] [--rounds 2]
Needs the Xception weights: --weights PATH or $CELLEMBED_WEIGHTS.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
WAYS = {
    "a": "(a) ImageDataGenerator + model.predict (final taps, 2048 floats)",
    "b": "(b) cellembed extract, default engine onnxruntime (multiscale, 5256 floats)",
    "b_tf": "    cellembed extract --engine tensorflow (multiscale, 5256 floats)",
}


def copy_subset(source: Path, target: Path, per_class: int) -> int:
    count = 0
    for class_dir in sorted(p for p in source.iterdir() if p.is_dir()):
        files = sorted(p for p in class_dir.iterdir() if p.suffix.lower() == ".jpg" and not p.name.startswith("."))
        (target / class_dir.name).mkdir(parents=True)
        for image in files[:per_class]:
            shutil.copy(image, target / class_dir.name / image.name)
            count += 1
    return count


def notebook_way(folder: Path, size: int, weights: str) -> float:
    import keras
    from keras.src.legacy.preprocessing.image import ImageDataGenerator

    start = time.perf_counter()
    model = keras.applications.Xception(include_top=False, weights=None, pooling="avg", input_shape=(size, size, 3))
    model.load_weights(weights)
    generator = ImageDataGenerator(
        preprocessing_function=keras.applications.xception.preprocess_input
    ).flow_from_directory(folder, target_size=(size, size), batch_size=32, class_mode=None, shuffle=False)
    features = model.predict(generator, verbose=0)
    seconds = time.perf_counter() - start
    assert features.shape == (generator.samples, 2048)
    return seconds


def cellembed_way(folder: Path, out: Path, size: int, weights: str, engine: str) -> float:
    import cellembed

    start = time.perf_counter()
    result = cellembed.extract(folder, out, weights=weights, input_size=size, engine=engine, progress=False,
                               preset="v1")
    seconds = time.perf_counter() - start
    assert result.embedded == result.rows and result.spec.dim == 5256, result.summary()
    return seconds


def conversion(size: int, weights: str) -> float:
    from cellembed import load_embedder

    start = time.perf_counter()
    load_embedder(weights, size, preset="v1")
    return time.perf_counter() - start


def worker(args: argparse.Namespace) -> None:
    """One timed run in this fresh process; prints its seconds as JSON."""
    import tensorflow  # noqa: F401  (both ways need it; no clock includes its import)

    if args.worker == "a":
        seconds = notebook_way(args.folder, args.input_size, args.weights)
    elif args.worker == "convert":
        seconds = conversion(args.input_size, args.weights)
    else:
        engine = "tensorflow" if args.worker == "b_tf" else "onnxruntime"
        seconds = cellembed_way(args.folder, args.out, args.input_size, args.weights, engine)
    print(json.dumps({"seconds": seconds}))


def run_worker(way: str, folder: Path, out: Path, args: argparse.Namespace) -> float:
    command = [sys.executable, __file__, "--worker", way, "--folder", str(folder), "--out", str(out),
               "--input-size", str(args.input_size), "--weights", args.weights]
    done = subprocess.run(command, check=True, capture_output=True, text=True)
    return json.loads(done.stdout.strip().splitlines()[-1])["seconds"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=Path, default=ROOT.parent / "shared" / "datasets" / "pbc-dev")
    parser.add_argument("--per-class", type=int, default=60, help="images per class (default 60 = 480 images)")
    parser.add_argument("--input-size", type=int, default=299)
    parser.add_argument("--weights", default=os.environ.get("CELLEMBED_WEIGHTS"))
    parser.add_argument("--rounds", type=int, default=2, help="timed rounds of each way; the fastest counts")
    parser.add_argument("--worker", choices=["a", "b", "b_tf", "convert"], help=argparse.SUPPRESS)
    parser.add_argument("--folder", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if not args.weights:
        sys.exit("set CELLEMBED_WEIGHTS or pass --weights PATH")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    if args.worker:
        worker(args)
        return

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "images"
        n = copy_subset(args.images, folder, args.per_class)
        for path in folder.rglob("*.jpg"):
            path.read_bytes()
        os.environ["CELLEMBED_CACHE_DIR"] = str(Path(tmp) / "onnx-cache")
        print(f"{n} images from {args.images}, input {args.input_size}x{args.input_size}, "
              f"{os.cpu_count()} CPU cores; each run a fresh process", flush=True)

        converted = run_worker("convert", folder, Path(tmp) / "unused", args)
        print(f"one-time conversion of Xception for ONNX Runtime (first run with these weights): "
              f"{converted:.1f} s", flush=True)

        times: dict[str, list[float]] = {way: [] for way in WAYS}
        out = Path(tmp) / "emb.parquet"
        for round_ in range(1, args.rounds + 1):
            for way in WAYS:
                target = out if way == "b" else Path(tmp) / f"emb-{way}.parquet"
                target.unlink(missing_ok=True)
                times[way].append(run_worker(way, folder, target, args))
            print(f"round {round_}: " + ", ".join(f"{way} {t[-1]:.1f} s" for way, t in times.items()), flush=True)
        best = {way: min(t) for way, t in times.items()}
        for way, label in WAYS.items():
            print(f"{label}: {best[way]:7.1f} s  {n / best[way]:6.2f} images/s")

        import cellembed

        start = time.perf_counter()
        again = cellembed.extract(folder, out, weights=args.weights, input_size=args.input_size, progress=False,
                                  preset="v1")
        c = time.perf_counter() - start
        assert again.embedded == 0 and again.reused == n
        start = time.perf_counter()
        subprocess.run(
            [sys.executable, "-m", "cellembed", "extract", str(folder), "-o", str(out), "--weights",
             args.weights, "--input-size", str(args.input_size), "--preset", "v1", "-q"],
            check=True,
        )
        c_cli = time.perf_counter() - start

        a, b, b_tf = best["a"], best["b"], best["b_tf"]
        print(f"(c) second extract, unchanged folder, in-process:        {c:7.2f} s")
        print(f"(c) second extract as a new `cellembed extract` command: {c_cli:7.2f} s")
        print(f"b/a speed ratio: {a / b:.2f}x   (target >= 1.3)")
        print(f"    with --engine tensorflow: {a / b_tf:.2f}x; a first run, conversion included: "
              f"{a / (b + converted):.2f}x")
        print(f"c/b: {100 * c / b:.1f}% in-process, {100 * c_cli / b:.1f}% as a command   (target <= 3%)")


if __name__ == "__main__":
    main()
