"""Which accuracy levers pay: one line per lever and combination, measured on real cells.

For every line (an extraction setting x taps x head):

* pbc-dev, grouped stratified 5-fold CV (identical images kept in one fold, the folds of
  ``cellclf fit``'s tuning): accuracy and macro-F1, mean +- std over the folds;
* extraction seconds per image (timed on 64 pbc-dev images with a built network, so the
  one-time start-up is not counted) and the mean fit seconds of one fold;
* cross-lab: trained on pbc-dev's 4 classes shared with bccd-train-sample (eosinophil,
  lymphocyte, monocyte, neutrophil), tested on bccd-train-sample; and the reverse.

Extraction settings are embedded once per dataset with every tap the lines use into
``CACHE/<dataset>-<setting>.parquet`` (cellembed's own cache: a rerun embeds nothing), so
the bench can be rerun cheaply; each setting costs 6,000 images x its views forward
passes the first time (about 10 min per view on 2 cores). Each line's result is kept in
``CACHE/levers.json`` and reused by later runs (``--recompute`` evaluates again).

Usage:
    python bench/accuracy_levers.py                       # every setting (hours the first time)
    python bench/accuracy_levers.py --settings base,stain # only these settings' lines
    python bench/accuracy_levers.py --extract-only        # fill the cache, no table

Needs the Xception weights: --weights PATH, $CELLEMBED_WEIGHTS, or
../shared/models/xception_imagenet_notop.weights.h5.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
DEFAULT_WEIGHTS = SHARED / "models" / "xception_imagenet_notop.weights.h5"

#: Every tap any line uses (one forward pass gives them all).
ALL_TAPS = ("add_2", "add_3", "add_4", "add_5", "add_6", "add_7", "add_8", "add_9", "add_10", "add_11",
            "block14_sepconv2_act")
TAP_SETS = {
    "final": ("block14_sepconv2_act",),
    "multiscale": ("add_2", "add_6", "add_10", "add_11", "block14_sepconv2_act"),
    "mid4": ("add_2", "add_6", "add_10", "add_11"),
    "adds10": ALL_TAPS[:10],
    "all11": ALL_TAPS,
    "add_6": ("add_6",),
}
#: Extraction settings: name -> cellembed.extract keyword arguments, on top of the first
#: version's settings (preset v1: one view, whole image, colours as decoded).
SETTINGS = {
    "base": {},
    "stain": {"stain": "reinhard"},
    "crop-cell": {"crop": "cell"},
    "crop-centre": {"crop": "centre"},
    "views4": {"views": 4},
    "stain+crop-centre": {"stain": "reinhard", "crop": "centre"},
    "stain+crop-cell": {"stain": "reinhard", "crop": "cell"},
    "views4+stain+crop-centre": {"views": 4, "stain": "reinhard", "crop": "centre"},
    "views4+crop-cell": {"views": 4, "crop": "cell"},
    "views4+stain+crop-cell": {"views": 4, "stain": "reinhard", "crop": "cell"},
    "views4+stain+crop-cell+std": {"views": 4, "stain": "reinhard", "crop": "cell", "pooling": "global_average+std"},
    "views8+stain+crop-cell+std": {"views": 8, "stain": "reinhard", "crop": "cell", "pooling": "global_average+std"},
    "views8": {"views": 8},
    "input360": {"input_size": 360},
}
DATASETS = {"pbc": "pbc-dev", "bccd": "bccd-train-sample"}
SHARED_CLASSES = ("eosinophil", "lymphocyte", "monocyte", "neutrophil")
TIMING_IMAGES = 64


def extraction_path(cache: Path, dataset: str, setting: str) -> Path:
    return cache / f"{dataset}-{setting}.parquet"


def ensure_extracted(cache: Path, folders: dict[str, Path], setting: str, weights: str) -> None:
    """Embed both datasets with ``setting`` (a no-op when the cache holds them)."""
    from cellembed import extract

    for dataset, folder in folders.items():
        out = extraction_path(cache, dataset, setting)
        start = time.perf_counter()
        result = extract(folder, out, layers=",".join(ALL_TAPS), weights=weights, progress=False, preset="v1",
                         log=lambda line: print(f"  [{setting} {dataset}] {line}", flush=True),
                         **SETTINGS[setting])
        print(f"extract {setting} {dataset}: {result.rows} rows ({result.embedded} embedded now) "
              f"in {time.perf_counter() - start:.0f}s", flush=True)


def timing(cache: Path, folder: Path, setting: str, weights: str) -> float:
    """Extraction seconds per image of ``setting`` on 64 pbc-dev images (cached)."""
    record = cache / f"timing-{setting}.json"
    if record.is_file():
        return json.loads(record.read_text())["seconds_per_image"]
    from cellembed import extract
    from cellembed.embedder import embedder_from_spec, spec_for_settings

    settings = dict(SETTINGS[setting])
    spec, weights_file = spec_for_settings(layers=",".join(ALL_TAPS), weights=weights, preset="v1", **settings)
    embedder = embedder_from_spec(spec, weights_file)
    classes = sorted(p for p in folder.iterdir() if p.is_dir())
    per_class = TIMING_IMAGES // len(classes)
    with tempfile.TemporaryDirectory() as tmp:
        sample = Path(tmp) / "images"
        for cls in classes:
            (sample / cls.name).mkdir(parents=True)
            for image in sorted(cls.glob("*.jpg"))[:per_class]:
                (sample / cls.name / image.name).symlink_to(image)
        extract(sample, Path(tmp) / "warm.parquet", embedder=embedder, progress=False)  # warm caches
        start = time.perf_counter()
        result = extract(sample, Path(tmp) / "timed.parquet", embedder=embedder, progress=False,
                         checkpoint_every=10_000)
        seconds = (time.perf_counter() - start) / result.rows
    record.write_text(json.dumps({"seconds_per_image": seconds, "images": result.rows}))
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pbc", type=Path, default=SHARED / "datasets" / "pbc-dev")
    parser.add_argument("--bccd", type=Path, default=SHARED / "datasets" / "bccd-train-sample")
    parser.add_argument("--cache", type=Path, default=Path("/work/cache/levers"))
    parser.add_argument("--weights", default=os.environ.get("CELLEMBED_WEIGHTS") or str(DEFAULT_WEIGHTS))
    parser.add_argument("--settings", default=",".join(SETTINGS), help="comma-separated extraction settings")
    parser.add_argument("--extract-only", action="store_true", help="fill the cache, print no table")
    parser.add_argument("--recompute", action="store_true", help="evaluate lines already in CACHE/levers.json again")
    args = parser.parse_args()
    settings = [s for s in args.settings.split(",") if s]
    unknown = [s for s in settings if s not in SETTINGS]
    if unknown:
        sys.exit(f"unknown --settings {', '.join(unknown)}; choose from {', '.join(SETTINGS)}")
    args.cache.mkdir(parents=True, exist_ok=True)
    folders = {"pbc": args.pbc, "bccd": args.bccd}
    for setting in settings:
        ensure_extracted(args.cache, folders, setting, args.weights)
        print(f"timing {setting}: {timing(args.cache, args.pbc, setting, args.weights):.3f} s/image", flush=True)
    if args.extract_only:
        return
    results = args.cache / "levers.json"  # every line measured so far, by line
    done = {line_of(r): r for r in json.loads(results.read_text())} if results.is_file() else {}
    rows = []
    for line in LINES:
        train_setting, test_setting, taps, head = line
        if train_setting not in settings or test_setting not in settings:
            continue
        row = None if args.recompute else done.get(line)
        if row is None:
            row = evaluate(args.cache, train_setting, test_setting, taps, head)
            done[line] = row
            results.write_text(json.dumps(list(done.values()), indent=1))
        row["s_per_image"] = timing(args.cache, args.pbc, test_setting, args.weights)
        rows.append(row)
        print(format_row(row), flush=True)
    print()
    print(HEADER)
    for row in rows:
        print(format_row(row))


#: Lines: (setting whose rows train, setting whose rows are tested, taps, head). Training
#: on single views and testing on the view mean is train-time vs test-time views.
LINES = [
    *[("base", "base", taps, "lr") for taps in TAP_SETS],
    ("base", "base", "mid4", "lr C=0.03"),
    ("base", "base", "mid4", "lr C=0.3"),
    ("base", "base", "mid4", "lr power+l2"),
    ("base", "base", "mid4", "xgb pca128"),
    ("base", "base", "mid4", "vote lr+xgb"),
    ("base", "base", "add_6", "xgb"),
    ("base", "base", "mid4", "lr own-scaling"),
    *[(s, s, taps, "lr") for s in SETTINGS if s != "base" for taps in ("multiscale", "mid4")],
    *[(s, s, "mid4", "lr own-scaling") for s in SETTINGS if s != "base"],
    *[("base", s, "mid4", "lr") for s in ("views4", "views8")],
    ("crop-cell", "views4+crop-cell", "mid4", "lr"),
    ("views4+stain+crop-cell", "views4+stain+crop-cell", "adds10", "lr"),
    ("views4+stain+crop-cell", "views4+stain+crop-cell", "mid4", "lr C=0.03"),
    ("stain+crop-cell", "views4+stain+crop-cell", "mid4", "lr"),
    ("stain+crop-centre", "views4+stain+crop-centre", "mid4", "lr"),
    ("views4", "views4", "mid4", "lr power+l2"),
    *[("views4+stain+crop-cell", "views4+stain+crop-cell", "mid4", head)
      for head in ("xgb pca128", "xgb pca32", "xgb kbest512", "vote lr+xgb", "mlp")],
    *[("views4+stain+crop-cell+std", "views4+stain+crop-cell+std", "mid4", head)
      for head in ("lr C=0.03", "xgb kbest512", "vote lr+xgb")],
]

HEADER = (f"{'train rows':<26} {'test rows':<26} {'taps':<10} {'head':<12} {'pbc acc':>15} {'pbc macro-F1':>15} "
          f"{'s/img':>6} {'fit s':>6} {'pbc4->bccd':>10} {'bccd->pbc4':>10}")


def line_of(row: dict) -> tuple[str, str, str, str]:
    return row["train"], row["test"], row["taps"], row["head"]


def format_row(row: dict) -> str:
    return (f"{row['train']:<26} {row['test']:<26} {row['taps']:<10} {row['head']:<12} "
            f"{row['acc']:.4f}+-{row['acc_std']:.4f} {row['f1']:.4f}+-{row['f1_std']:.4f} "
            f"{row['s_per_image']:>6.3f} {row['fit_s']:>6.1f} {row['pbc_to_bccd']:>10.4f} {row['bccd_to_pbc']:>10.4f}")


def make_head(head: str, n_classes: int):
    """An unfitted estimator for a head name of LINES."""
    from sklearn.decomposition import PCA
    from sklearn.ensemble import VotingClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import FunctionTransformer, Normalizer, StandardScaler

    from cellclf.families.lr import make_lr
    from cellclf.families.xgb import make_xgb

    def xgb(pca: bool = True, n_components: int = 128, depth: int = 4, trees: int = 300):
        params = {"max_depth": depth, "learning_rate": 0.15, "min_child_weight": 1.0, "subsample": 0.8,
                  "colsample_bytree": 0.5 if pca else 0.3}
        booster = make_xgb(params, n_classes=n_classes, n_estimators=trees, n_jobs=2)
        return make_pipeline(StandardScaler(), PCA(n_components, random_state=0), booster) if pca else booster

    if head in ("lr", "lr own-scaling"):
        return make_lr(0.1, "balanced")
    if head.startswith("lr C="):
        return make_lr(float(head.split("=")[1]), "balanced")
    if head == "lr power+l2":
        signed_sqrt = FunctionTransformer(lambda x: __import__("numpy").sign(x) * __import__("numpy").sqrt(abs(x)))
        return make_pipeline(signed_sqrt, Normalizer(), make_lr(0.1, "balanced"))
    if head == "xgb pca128":
        return xgb()
    if head == "xgb pca32":
        return xgb(n_components=32, depth=3, trees=500)
    if head == "xgb kbest512":  # the 512 dimensions of highest ANOVA F: TreeSHAP stays per dimension
        from sklearn.feature_selection import SelectKBest, f_classif

        return make_pipeline(SelectKBest(f_classif, k=512), xgb(pca=False, trees=500))
    if head == "mlp":  # one hidden layer, early stopping on 10% of the fold's training rows
        from sklearn.neural_network import MLPClassifier

        return make_pipeline(StandardScaler(), MLPClassifier((512,), alpha=1e-2, early_stopping=True,
                                                             max_iter=300, random_state=0))
    if head == "xgb":
        return xgb(pca=False)
    if head == "vote lr+xgb":
        return VotingClassifier([("lr", make_lr(0.1, "balanced")), ("xgb", xgb())], voting="soft")
    raise ValueError(head)


def own_scaled(head: str, X):
    """``X`` standardised by its own mean and std when the head says "own-scaling" (each
    set of images, training or new, is scaled by itself: unsupervised adaptation to a lab,
    which needs a folder of new images with a mix of classes), else ``X`` as it is."""
    from sklearn.preprocessing import StandardScaler

    return StandardScaler().fit_transform(X) if head.endswith("own-scaling") else X


def load(cache: Path, dataset: str, setting: str, taps: str):
    """(X, labels, sha256) of one cached extraction, restricted to ``taps``."""
    import numpy as np

    from cellembed.store import embedding_matrix, load_embeddings

    frame, spec = load_embeddings(extraction_path(cache, dataset, setting))
    frame = frame[frame["label"].notna()].reset_index(drop=True)
    X, labels = embedding_matrix(frame, spec, TAP_SETS[taps])
    return X, np.asarray(labels, dtype=object), frame["sha256"].to_numpy()


def evaluate(cache: Path, train_setting: str, test_setting: str, taps: str, head: str) -> dict:
    """One line: grouped 5-fold CV on pbc-dev and both cross-lab directions."""
    import numpy as np
    from sklearn.metrics import accuracy_score, f1_score
    from threadpoolctl import threadpool_limits

    from cellclf.split import cv_folds

    X_train, labels, sha = load(cache, "pbc", train_setting, taps)
    X_test, test_labels, test_sha = load(cache, "pbc", test_setting, taps)
    order = {s: i for i, s in enumerate(test_sha)}  # test rows aligned with training rows
    keep = np.array([s in order for s in sha])
    X_train, labels, sha = X_train[keep], labels[keep], sha[keep]
    X_test = X_test[[order[s] for s in sha]]
    classes = sorted(set(labels))
    y = np.array([classes.index(label) for label in labels])
    accs, f1s, seconds = [], [], []
    with threadpool_limits(limits=2):
        for fit_rows, held in cv_folds(labels, sha, 5, seed=0):
            model = make_head(head, len(classes))
            start = time.perf_counter()
            model.fit(own_scaled(head, X_train[fit_rows]), y[fit_rows])
            seconds.append(time.perf_counter() - start)
            predicted = model.predict(own_scaled(head, X_test[held]))
            accs.append(accuracy_score(y[held], predicted))
            f1s.append(f1_score(y[held], predicted, average="macro"))
        cross = {}
        for source, target in (("pbc", "bccd"), ("bccd", "pbc")):
            Xs, ls, _ = load(cache, source, train_setting, taps)
            Xt, lt, _ = load(cache, target, test_setting, taps)
            s_keep, t_keep = np.isin(ls, SHARED_CLASSES), np.isin(lt, SHARED_CLASSES)
            codes = {c: i for i, c in enumerate(SHARED_CLASSES)}
            model = make_head(head, len(SHARED_CLASSES))
            model.fit(own_scaled(head, Xs[s_keep]), np.array([codes[c] for c in ls[s_keep]]))
            predicted = model.predict(own_scaled(head, Xt[t_keep]))
            cross[f"{source}_to_{target}"] = accuracy_score([codes[c] for c in lt[t_keep]], predicted)
    return {
        "train": train_setting, "test": test_setting, "taps": taps, "head": head,
        "acc": float(np.mean(accs)), "acc_std": float(np.std(accs)),
        "f1": float(np.mean(f1s)), "f1_std": float(np.std(f1s)),
        "fit_s": float(np.mean(seconds)), "pbc_to_bccd": cross["pbc_to_bccd"], "bccd_to_pbc": cross["bccd_to_pbc"],
        "folds": [round(a, 4) for a in accs],
    }


if __name__ == "__main__":
    main()
