"""The same folder extracted sequentially and with a local Ray cluster: rows, difference, time.

Both runs embed the first N images per class of ../shared/datasets/pbc-dev (symbolic links
in a temporary folder) into new outputs with the default engine, after one warm-up run so
the ONNX conversion is cached for both. Each run is a fresh `cellembed extract` process;
the Ray run starts a local Ray instance with this machine's CPUs (its start-up is counted).
Prints rows, the largest |difference| of the embeddings (rows matched by path) and the
wall time of each.

Usage:  python bench/ray_extract.py [--per-class 50] [--checkpoint-every 25]
Needs the Ray extra (pip install -e '.[ray]') and the weights ($CELLEMBED_WEIGHTS).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from extract_memory import DEFAULT_WEIGHTS, ROOT, subset  # noqa: E402


def run(folder: Path, out: Path, weights: str, checkpoint_every: int, *extra: str) -> float:
    command = [
        sys.executable, "-m", "cellembed", "extract", str(folder), "-o", str(out), "--weights", weights,
        "--checkpoint-every", str(checkpoint_every), "-q", "--allow-skips", *extra,
    ]
    start = time.perf_counter()
    subprocess.run(command, check=True)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=Path, default=ROOT.parent / "shared" / "datasets" / "pbc-dev")
    parser.add_argument("--weights", default=os.environ.get("CELLEMBED_WEIGHTS") or str(DEFAULT_WEIGHTS))
    parser.add_argument("--per-class", type=int, default=50)
    parser.add_argument("--checkpoint-every", type=int, default=25, help="images per shard (Ray task)")
    args = parser.parse_args()

    from cellembed import load_embeddings

    with tempfile.TemporaryDirectory(prefix="cellembed-ray-") as tmp:
        tmp = Path(tmp)
        os.environ.setdefault("CELLEMBED_CACHE_DIR", str(tmp / "onnx-cache"))
        warm = tmp / "warm"
        subset(args.images, 1, warm)
        run(warm, tmp / "warm.parquet", args.weights, args.checkpoint_every)  # converts once
        folder = tmp / "images"
        n = subset(args.images, args.per_class, folder)
        sequential = run(folder, tmp / "sequential.parquet", args.weights, args.checkpoint_every)
        ray = run(folder, tmp / "ray.parquet", args.weights, args.checkpoint_every, "--distributed", "ray")
        a, _ = load_embeddings(tmp / "sequential.parquet")
        b, _ = load_embeddings(tmp / "ray.parquet")
        a, b = a.sort_values("path", ignore_index=True), b.sort_values("path", ignore_index=True)
        same_rows = a[["path", "label", "sha256"]].equals(b[["path", "label", "sha256"]])
        difference = float(np.abs(np.stack(a["embedding"]) - np.stack(b["embedding"])).max())
        print(f"{n} images from {args.images}, shards of {args.checkpoint_every}, {os.cpu_count()} CPUs, default engine")
        print(f"sequential: {len(a)} rows, {sequential:.1f} s ({n / sequential:.1f} images/s)")
        print(f"ray (local): {len(b)} rows, {ray:.1f} s ({n / ray:.1f} images/s), Ray start-up included")
        print(f"same rows: {same_rows}; largest |embedding difference|: {difference:.2e}")


if __name__ == "__main__":
    main()
