"""The differential count the way hematology reports it, from predicted cell types.

A manual differential is a percentage of leukocytes (white cells): neutrophils,
lymphocytes, monocytes, eosinophils, basophils, immature granulocytes and the like add up to
100%. Nucleated red cells (erythroblasts) are not white cells: they are reported per 100
white cells. Platelets are counted apart. A model's classes are sorted into those roles by
name (:data:`ROLES`, the PBC names and common synonyms); a class no role knows is counted
as "other" and left out of the percentages. Where fewer than two classes are white cells
(a model of other cell types), there is no differential and the page keeps plain counts.

Each percentage has a 95% Wilson interval of the binomial share (the cells counted are
taken as a random sample of the slide's cells; the model's own errors are not in it). The
per-100-white-cells ratio's interval is the Wilson interval of the share of nucleated red
cells among white + nucleated red cells, mapped through p / (1 - p) x 100 (monotone, so
the interval keeps its coverage). Uncertain cells count as their predicted class:
review them first.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

from cellclf.metrics import wilson_interval

WHITE, NUCLEATED_RED, PLATELET, OTHER = "white cell", "nucleated red cell", "platelet", "other"
#: Lower-case class names (and synonyms) -> role.
ROLES: dict[str, str] = {
    **{name: WHITE for name in (
        "neutrophil", "segmented neutrophil", "band neutrophil", "band", "segmented", "lymphocyte",
        "atypical lymphocyte", "reactive lymphocyte", "monocyte", "eosinophil", "basophil", "ig",
        "immature granulocyte", "immature granulocytes", "promyelocyte", "myelocyte", "metamyelocyte", "blast",
        "plasma cell")},
    **{name: NUCLEATED_RED for name in ("erythroblast", "nrbc", "nucleated red cell", "normoblast")},
    **{name: PLATELET for name in ("platelet", "platelets", "thrombocyte", "giant platelet")},
}


def role_of(name: str) -> str:
    """The role of a class name (:data:`ROLES`, case and ``_``/``-`` ignored; else other)."""
    return ROLES.get(" ".join(str(name).lower().replace("_", " ").replace("-", " ").split()), OTHER)


def differential(predicted: Sequence[str], classes: Sequence[str], rates: Any = None) -> dict[str, Any] | None:
    """The differential of the predicted classes of one sample's cells (None where the
    model's classes include fewer than two white-cell types).

    ``rates``: the model's test confusion rates (k x k in ``classes`` order,
    :func:`cellclf.count_correction.run_confusion_rates`); with them each white-cell row also
    holds ``corrected_percent`` and the nucleated red cells ``corrected_per_100_white``, the
    counts corrected for the model's known confusions, and ``corrected`` says how and what it
    assumes (None without rates).

    Returns:
        ``white_cells`` (their count), ``rows`` (per white-cell class: class, cells, percent,
        ci [low, high] in percent, None without white cells), ``nucleated_red`` (classes,
        cells, per_100_white, ci, or None when the model has no such class), ``platelets``
        (classes, cells, or None), ``other`` (class -> cells).
    """
    roles = {str(name): role_of(name) for name in classes}
    white = [name for name, role in roles.items() if role == WHITE]
    if len(white) < 2:
        return None
    counts = {name: 0 for name in roles}
    for name in predicted:
        if str(name) in counts:
            counts[str(name)] += 1
    n_white = sum(counts[name] for name in white)
    rows = []
    for name in white:
        interval = wilson_interval(counts[name], n_white)
        rows.append({"class": name, "cells": counts[name],
                     "percent": 100 * counts[name] / n_white if n_white else None,
                     "ci": [100 * v for v in interval] if interval else None})
    red = [name for name, role in roles.items() if role == NUCLEATED_RED]
    nucleated_red = None
    if red:
        n_red = sum(counts[name] for name in red)
        interval = wilson_interval(n_red, n_red + n_white)
        per_100 = (lambda p: 100 * p / (1 - p) if p < 1 else float("inf"))
        nucleated_red = {"classes": red, "cells": n_red,
                         "per_100_white": 100 * n_red / n_white if n_white else None,
                         "ci": [per_100(v) for v in interval] if interval and n_white else None}
    platelets = [name for name, role in roles.items() if role == PLATELET]
    corrected = None
    if rates is not None:
        from cellclf.count_correction import ASSUMES, METHOD, corrected_counts

        estimate = dict(zip(roles, corrected_counts([counts[name] for name in roles], rates)))
        white_estimate = sum(estimate[name] for name in white)
        for row in rows:
            row["corrected_percent"] = 100 * estimate[row["class"]] / white_estimate if white_estimate else None
        if nucleated_red is not None:
            red_estimate = sum(estimate[name] for name in red)
            nucleated_red["corrected_per_100_white"] = 100 * red_estimate / white_estimate if white_estimate else None
        corrected = {"method": METHOD, "assumes": ASSUMES, "counts": {name: round(v, 2) for name, v in estimate.items()}}
    return {
        "white_cells": n_white,
        "corrected": corrected,
        "rows": rows,
        "nucleated_red": nucleated_red,
        "platelets": {"classes": platelets, "cells": sum(counts[name] for name in platelets)} if platelets else None,
        "other": {name: counts[name] for name, role in roles.items() if role == OTHER},
    }


def corrected_line(result: Mapping[str, Any]) -> str:
    """One line: the white-cell percentages corrected for the model's known confusions."""
    parts = [f"{row['class']} {row['corrected_percent']:.1f}%" for row in result["rows"]
             if row.get("corrected_percent") is not None]
    line = "corrected for the model's test confusions: " + ", ".join(parts)
    red = result["nucleated_red"]
    if red is not None and red.get("corrected_per_100_white") is not None:
        line += f"; nucleated red cells {red['corrected_per_100_white']:.1f} per 100 white cells"
    return line + f"; this assumes {result['corrected']['assumes']}"


def differential_line(result: Mapping[str, Any]) -> str:
    """One line for the console: the white-cell percentages, then the other counts."""
    n = result["white_cells"]
    if not n:
        line = "differential: no white cells among the predictions"
    else:
        parts = [f"{row['class']} {row['percent']:.1f}% ({row['ci'][0]:.1f}-{row['ci'][1]:.1f})" for row in result["rows"]]
        line = f"differential of {n} white cells (95% CI): " + ", ".join(parts)
    red = result["nucleated_red"]
    if red is not None and red["per_100_white"] is not None:
        line += (f"; nucleated red cells {red['per_100_white']:.1f} per 100 white cells "
                 f"({red['ci'][0]:.1f}-{red['ci'][1]:.1f}; {red['cells']} cells)")
    if result["platelets"] is not None:
        line += f"; platelets {result['platelets']['cells']} (counted apart)"
    other = {name: c for name, c in result["other"].items() if c}
    if other:
        line += "; not in the differential: " + ", ".join(f"{name} {c}" for name, c in other.items())
    return line
