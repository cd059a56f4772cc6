"""What decided a call (cellclf.evidence): the contrast against the runner-up, its scale, the
share on the white cell and in the network's grid corners (issue 24 §4)."""

from __future__ import annotations

import numpy as np
import pytest

from cellclf.evidence import decision_evidence
from cellembed.cellcrop import find_nucleus, nucleus_mask

S = 120


def _smear() -> np.ndarray:
    """A pale background with a dark blue-purple disk (a nucleus) at the centre."""
    pixels = np.full((S, S, 3), (235, 215, 200), np.float32)
    rows, cols = np.mgrid[:S, :S]
    pixels[np.hypot(rows - 60, cols - 60) < 25] = (70, 50, 150)
    return pixels


def test_the_nucleus_mask_is_what_find_nucleus_frames():
    pixels = _smear().astype(np.uint8)
    mask = nucleus_mask(pixels)
    nucleus = find_nucleus(pixels)
    rows, cols = np.nonzero(mask)
    assert (rows.max() - rows.min() + 1, cols.max() - cols.min() + 1) == (nucleus.height, nucleus.width)
    assert abs(mask.sum() - np.pi * 25 ** 2) < 0.1 * np.pi * 25 ** 2
    assert nucleus_mask(np.full((S, S, 3), 200, np.uint8)) is None


def test_contrast_shares_on_the_cell_and_in_the_corners():
    pixels = _smear()
    rows, cols = np.mgrid[:S, :S]
    inside = np.hypot(rows - 60, cols - 60) < 33
    predicted = np.where(inside, 0.02, 0.0)  # the predicted class's evidence: the nucleus and a cytoplasm rim
    other = np.zeros((S, S))
    other[:12, -12:] = 0.2  # the runner-up's: one grid corner (grid of 10: 12 px cells)
    evidence = decision_evidence(pixels, predicted, other, grid=10)
    assert evidence.margin == pytest.approx(predicted.sum() - other.sum())
    assert evidence.on_cell == pytest.approx(1.0)  # every red location is on the cell (not all on the nucleus)
    assert (predicted[evidence.nucleus] > 0).sum() < (predicted > 0).sum()
    assert evidence.cell_area == pytest.approx(evidence.cell.mean()) and evidence.nucleus.sum() < evidence.cell.sum()
    corner_share = other.sum() / (predicted.sum() + other.sum())
    assert evidence.corners == pytest.approx(corner_share) and evidence.corner_area == pytest.approx(4 * 144 / S ** 2)
    assert "in the network's grid corners" in evidence.sentence("lymphocyte", "platelet")
    density = evidence.density  # share of the evidence per 1% of the picture: an even spread reads 1
    assert np.abs(density).sum() == pytest.approx(S * S)
    even = decision_evidence(pixels, np.full((S, S), 0.01), np.zeros((S, S)), grid=10)
    assert np.allclose(even.density, 1.0) and even.corners == pytest.approx(even.corner_area)
    assert "grid corners" not in even.sentence("a", "b")
    facts = evidence.facts()
    assert set(facts) == {"margin", "on_cell", "cell_area", "grid_border", "grid_corners", "grid_corners_area"}


def test_no_nucleus_no_cell_share():
    evidence = decision_evidence(np.full((S, S, 3), 220, np.float32), np.ones((S, S)), np.zeros((S, S)), grid=10)
    assert evidence.on_cell is None and evidence.nucleus is None and "on the cell" not in evidence.sentence("a", "b")
