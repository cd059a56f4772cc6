"""Accuracy and cost of `cellclf fit` with its defaults on the PBC dev set.

1. Extracts (or reuses, thanks to the cache) the default embeddings (preset ``default``) of
   all of ``../shared/datasets/pbc-dev`` at 299x299 into ``/work/cache/pbc-dev-default.parquet``.
2. Runs the ``cellclf fit`` console script with the default settings in a child process.
3. Prints per model: test accuracy, macro-F1 and fit wall time (from RUN_DIR/metrics.json),
   plus the whole fit's wall time and peak memory (largest resident set of the fit process
   and its workers, from getrusage(RUSAGE_CHILDREN)), and checks the targets
   (logistic regression accuracy >= 0.94, XGBoost >= 0.88, whole fit < 15 minutes).

Usage:  python bench/fit_accuracy.py [--skip-extract] [--run-dir DIR] [-- extra cellclf fit options]
Needs the Xception weights for step 1: --weights PATH, $CELLEMBED_WEIGHTS, or
../shared/models/xception_imagenet_notop.weights.h5. It takes 10-15 minutes on 2 cores.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_WEIGHTS = ROOT.parent / "shared" / "models" / "xception_imagenet_notop.weights.h5"
TARGETS = {"lr": 0.94, "xgb": 0.88}
TIME_TARGET_S = 15 * 60


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=Path, default=ROOT.parent / "shared" / "datasets" / "pbc-dev")
    parser.add_argument("--embeddings", type=Path, default=Path("/work/cache/pbc-dev-default.parquet"))
    parser.add_argument("--weights", default=os.environ.get("CELLEMBED_WEIGHTS") or str(DEFAULT_WEIGHTS))
    parser.add_argument("--run-dir", type=Path, default=Path("/tmp/cellclf-fit-bench"))
    parser.add_argument("--skip-extract", action="store_true", help="use --embeddings as it is")
    parser.add_argument(
        "--from-levers", type=Path, default=None,
        help="when --embeddings does not exist, write it from this bench/accuracy_levers.py cache of the "
        "same images and settings with more taps (same forward pass: the default's taps are copied, "
        "not recomputed) instead of extracting",
    )
    parser.add_argument("fit_args", nargs="*", help="extra options for cellclf fit (after --)")
    args = parser.parse_args()

    if args.from_levers is not None and not args.embeddings.exists():
        derive_default(args.from_levers, args.embeddings, args.weights)
    if not args.skip_extract:
        from cellembed import extract

        start = time.perf_counter()
        result = extract(args.images, args.embeddings, weights=args.weights, input_size=299, progress=False)
        print(
            f"extract: {args.embeddings} ready in {time.perf_counter() - start:.1f}s "
            f"({result.rows} images: {result.embedded} embedded now, {result.reused} from the cache)",
            flush=True,
        )

    command = [
        str(Path(sys.executable).with_name("cellclf")), "fit", str(args.embeddings),
        "-o", str(args.run_dir), "--overwrite", *args.fit_args,
    ]
    print("$ " + " ".join(command), flush=True)
    start = time.perf_counter()
    completed = subprocess.run(command)
    wall = time.perf_counter() - start
    if completed.returncode != 0:
        sys.exit(f"cellclf fit failed with exit status {completed.returncode}")
    peak_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024  # Linux: KiB

    metrics = json.loads((args.run_dir / "metrics.json").read_text())
    print()
    print(f"data: {metrics['data']['total']} images per split, {metrics['data']['n_features']} dims, "
          f"taps {','.join(metrics['data']['taps'])}")
    print(f"{'model':<6} {'test acc':>8} {'macro-F1':>8} {'fit s':>7} {'target':>8}")
    ok = True
    for name, model in metrics["models"].items():
        accuracy = model["test"]["accuracy"]
        passed = accuracy >= TARGETS.get(name, 0)
        ok &= passed
        print(f"{name:<6} {accuracy:>8.4f} {model['test']['macro_f1']:>8.4f} {model['fit_seconds']:>7.1f} "
              f"{'>=' + str(TARGETS.get(name, '-')):>6} {'ok' if passed else 'MISSED'}")
    ok &= wall < TIME_TARGET_S
    print(f"whole fit (both models, tuning, SHAP, writing): {wall:.1f}s wall "
          f"({'ok' if wall < TIME_TARGET_S else 'MISSED'}: target < {TIME_TARGET_S}s); "
          f"peak memory {peak_mb:.0f} MB (largest process)")
    print(f"best model: {metrics['best_model']}; all targets {'met' if ok else 'NOT met'}")


def derive_default(source: Path, out: Path, weights: str) -> None:
    """Write ``out`` with the default preset's spec from ``source`` (a cellembed file of the
    same images whose spec differs from the default's only by having more taps)."""
    from cellembed import embedding_matrix, load_embeddings, read_images_root
    from cellembed.embedder import spec_for_settings
    from cellembed.store import make_table, write_table

    frame, spec = load_embeddings(source)
    planned, _ = spec_for_settings(weights=weights)
    X, _ = embedding_matrix(frame, spec, planned.tap_names)
    widths = {t.name: t.width for t in spec.taps}
    derived = planned
    kept = derived.differences(spec)
    if any(not d.startswith("taps:") for d in kept):
        sys.exit(f"{source} differs from the default by more than its taps: {kept}")
    if [t.width for t in derived.taps] != [widths[name] for name in derived.tap_names]:
        sys.exit(f"{source}'s taps have other widths than the default's")
    table = make_table(
        derived, frame["path"], frame["label"], frame["sha256"], frame["width"], frame["height"], X,
        images_root=read_images_root(source),
        cell_found=frame["cell_found"] if "cell_found" in frame else None,
    )
    write_table(table, out)
    print(f"derived {out} ({len(frame)} rows, taps {','.join(derived.tap_names)}) from {source}", flush=True)


if __name__ == "__main__":
    main()
