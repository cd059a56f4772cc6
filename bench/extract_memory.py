"""Peak memory (largest resident set) of `cellembed extract` as the folder grows.

Each run is a fresh `cellembed extract` process on a folder of symbolic links to the first
N images per class of ../shared/datasets/pbc-dev, into a new output. Two figures:

- ``largest process``: the peak RSS of the largest single process (the command or a child
  such as the ONNX conversion), what `/usr/bin/time -v` reports;
- ``whole tree``: the peak of the command's process tree together, sampled every 50 ms as
  the sum of each process's proportional set size (PSS: shared pages split between the
  processes that share them), so a child running beside its parent counts with it.

Runs:

- ``cached``: the ONNX Runtime model is already converted (the usual run), for each N;
- ``first``: an empty conversion cache, so the run converts the network first (a user's
  very first run with these weights).

Usage:  python bench/extract_memory.py [--per-class 50 500] [--first-per-class 50] [--engine onnxruntime]
Needs the weights (--weights, $CELLEMBED_WEIGHTS, or ../shared/models/...). The full set
takes about 4 minutes per run on 2 cores.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_WEIGHTS = ROOT.parent / "shared" / "models" / "xception_imagenet_notop.weights.h5"
TARGET_GB = 2.5

_WRAPPER = """
import json, os, resource, subprocess, sys, time

def children():
    found = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as handle:
                    found[int(entry)] = int(handle.read().rsplit(")", 1)[1].split()[1])
            except OSError:
                pass
    return found

def pss_kb(pid):
    try:
        with open(f"/proc/{pid}/smaps_rollup") as handle:
            return sum(int(line.split()[1]) for line in handle if line.startswith("Pss:"))
    except OSError:
        return 0

start = time.perf_counter()
process = subprocess.Popen(sys.argv[1:])
tree_peak = 0
while process.poll() is None:
    parents = children()
    tree = {process.pid}
    while True:
        grown = tree | {pid for pid, parent in parents.items() if parent in tree}
        if grown == tree:
            break
        tree = grown
    tree_peak = max(tree_peak, sum(pss_kb(pid) for pid in tree))
    time.sleep(0.05)
peak_kb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
print(json.dumps({"code": process.returncode, "peak_kb": peak_kb, "tree_kb": tree_peak, "seconds": time.perf_counter() - start}))
"""


def subset(images: Path, per_class: int, into: Path) -> int:
    """Link the first ``per_class`` images of each class folder into ``into``."""
    count = 0
    for folder in sorted(p for p in images.iterdir() if p.is_dir()):
        (into / folder.name).mkdir(parents=True)
        for image in sorted(folder.glob("*.jpg"))[:per_class]:
            (into / folder.name / image.name).symlink_to(image)
            count += 1
    return count


def measure(folder: Path, out: Path, weights: str, engine: str, cache: Path) -> dict:
    command = [
        sys.executable, "-c", _WRAPPER, sys.executable, "-m", "cellembed", "extract", str(folder), "-o", str(out),
        "--weights", weights, "--engine", engine, "-q", "--allow-skips",
    ]
    env = dict(os.environ, CELLEMBED_CACHE_DIR=str(cache))
    output = subprocess.run(command, env=env, capture_output=True, text=True, check=True)
    record = json.loads(output.stdout.strip().splitlines()[-1])
    if record["code"] != 0:
        raise SystemExit(f"cellembed extract failed ({record['code']}): {output.stderr[-2000:]}")
    return record


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=Path, default=ROOT.parent / "shared" / "datasets" / "pbc-dev")
    parser.add_argument("--weights", default=os.environ.get("CELLEMBED_WEIGHTS") or str(DEFAULT_WEIGHTS))
    parser.add_argument("--engine", default="onnxruntime")
    parser.add_argument("--per-class", type=int, nargs="+", default=[50, 500])
    parser.add_argument("--first-per-class", type=int, default=50, help="images per class of the converting run")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="cellembed-memory-") as tmp:
        tmp = Path(tmp)
        cache = tmp / "onnx-cache"
        rows = []
        first_folder = tmp / f"first-{args.first_per_class}"
        n = subset(args.images, args.first_per_class, first_folder)
        if args.engine == "onnxruntime":
            record = measure(first_folder, tmp / "first.parquet", args.weights, args.engine, cache)
            rows.append(("first run (converts)", n, record))
        for per_class in args.per_class:
            folder = tmp / f"n-{per_class}"
            n = subset(args.images, per_class, folder)
            record = measure(folder, tmp / f"n-{per_class}.parquet", args.weights, args.engine, cache)
            rows.append(("cached model", n, record))
        print(f"cellembed extract, engine {args.engine}, images from {args.images}; peak RSS per fresh process")
        print(f"{'run':<22} {'images':>7} {'largest process':>16} {'whole tree':>11} {'wall':>8}")
        for name, n, record in rows:
            print(
                f"{name:<22} {n:>7} {record['peak_kb'] / 1e6:>13.2f} GB {record['tree_kb'] / 1e6:>8.2f} GB "
                f"{record['seconds']:>7.1f}s"
            )
        worst = max(max(record["peak_kb"], record["tree_kb"]) for _, _, record in rows) / 1e6
        print(f"largest peak {worst:.2f} GB (target < {TARGET_GB} GB): {'met' if worst < TARGET_GB else 'NOT met'}")


if __name__ == "__main__":
    started = time.perf_counter()
    main()
    print(f"({time.perf_counter() - started:.0f} s)")
