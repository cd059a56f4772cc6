"""The files ``cellclf predict`` writes, checked before any work.

``predict`` writes the predictions file (``-o``; ``-o -`` is standard output), the
per-class metrics and confusion matrix next to it (when the folder is scored), the review
page (``--review``, by default ``<OUT name>.review.html`` next to OUT), the HTML report
(``--report``) and the embeddings cache (``--cache``; by default next to OUT, none for
``-o -`` or image files). It never writes inside the images folder, and it replaces
a file only when it is one that ``predict`` wrote (a predictions CSV or JSON, its tables,
a cellreports page), or with ``--overwrite``. The cache is add-only and its own checks
are :func:`cellembed.extract`'s (a cellembed file of the model's spec, or nothing).
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from cellclf.errors import ClassifierInputError

#: ``-o -``: the predictions go to standard output.
STDOUT = "-"
#: Columns every predictions CSV has (the first one is ``path``).
PREDICTIONS_COLUMNS = ("path", "predicted", "confidence")
PER_CLASS_COLUMNS = ("class", "precision", "recall")
CONFUSION_COLUMNS = ("true", "predicted", "count")


@dataclass(frozen=True)
class PredictionOutputs:
    """Every path one ``predict`` run may write."""

    predictions: Path | None  # None: standard output
    cache: Path | None
    per_class: Path | None
    confusion: Path | None
    report: Path | None = None
    review: Path | None = None

    @classmethod
    def of(
        cls, out: str | Path, cache: str | Path | None = None, report: str | Path | None = None,
        review: str | Path | None = None, no_review: bool = False, folder: bool = True,
    ) -> "PredictionOutputs":
        """The outputs of ``-o out`` (``-`` = standard output). Next to a file OUT: the
        cache ``<OUT stem>.embeddings.parquet`` (for a ``folder`` of images), the tables and
        the review page ``<OUT stem>.review.html`` (unless ``no_review``)."""
        if str(out) == STDOUT:
            return cls(None, Path(cache) if cache is not None else None, None, None,
                       Path(report) if report is not None else None, None if no_review or review is None else Path(review))
        out = Path(out)
        default_cache = out.with_name(out.stem + ".embeddings.parquet") if folder else None
        return cls(
            predictions=out,
            cache=Path(cache) if cache is not None else default_cache,
            per_class=out.with_name(out.stem + ".per_class.csv"),
            confusion=out.with_name(out.stem + ".confusion_matrix.csv"),
            report=Path(report) if report is not None else None,
            review=None if no_review else Path(review) if review is not None else out.with_name(out.stem + ".review.html"),
        )

    def check(
        self, images: str | Path, overwrite: bool = False, is_report: Callable[[Path], bool] = lambda path: False,
    ) -> None:
        """Refuse, before any work, an output inside ``images`` or an existing file that
        predict did not write (unless ``overwrite``). ``is_report`` tells a report page
        predict wrote (``cellreports.is_report``, passed in by the command: the library does not
        import cellreports).

        Raises:
            ClassifierInputError: naming the file and the option to change.
        """
        folders = [Path(p).resolve() for p in ([images] if isinstance(images, (str, Path)) else images) if Path(p).is_dir()]
        named = [(option, path) for option, path in (
            ("-o", self.predictions), ("--cache", self.cache), ("-o", self.per_class), ("-o", self.confusion),
            ("--report", self.report), ("--review", self.review)) if path is not None]
        resolved = [(option, path, path.resolve()) for option, path in named]
        for i, (option, path, where) in enumerate(resolved):
            for other_option, other, other_where in resolved[:i]:
                if where == other_where:
                    raise ClassifierInputError(
                        f"{option} {path} and {other_option} {other} are the same file; give each its own path"
                    )
        for (option, path), images in ((pair, folder) for pair in named for folder in folders):
            if path.resolve().is_relative_to(images):
                raise ClassifierInputError(
                    f"{option} {path} is inside the images folder {images}; predict never writes there: "
                    f"give {option} a path outside it"
                )
        if overwrite:
            return
        for option, path, ours in (
            ("-o", self.predictions, _is_predictions),
            ("-o", self.per_class, lambda p: _csv_has(p, PER_CLASS_COLUMNS)),
            ("-o", self.confusion, lambda p: _csv_has(p, CONFUSION_COLUMNS)),
            ("--report", self.report, lambda path: path.is_file() and is_report(path)),
            ("--review", self.review, lambda path: path.is_file() and is_report(path)),
        ):
            if path is not None and (path.exists() or path.is_symlink()) and not ours(path):
                raise ClassifierInputError(
                    f"{path} exists and is not a file cellclf predict wrote; refusing to replace it: "
                    f"give {option} another path, or pass --overwrite to replace it"
                )


def _is_predictions(path: Path) -> bool:
    if _csv_has(path, PREDICTIONS_COLUMNS):
        return True
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):
        return False
    return isinstance(document, dict) and all(
        isinstance(entry, dict) and ("predictions" in entry or "error" in entry) for entry in document.values()
    )


def _csv_has(path: Path, columns: tuple[str, ...]) -> bool:
    """True when ``path`` is a regular file whose CSV header starts with ``columns[0]``
    and holds all of ``columns``."""
    if not path.is_file():
        return False
    try:
        with open(path, newline="", encoding="utf-8") as handle:
            header = next(csv.reader([handle.readline(65536)]), [])
    except (OSError, UnicodeDecodeError, csv.Error):
        return False
    return bool(header) and header[0] == columns[0] and set(columns) <= set(header)
