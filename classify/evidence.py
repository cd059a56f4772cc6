"""What decided a call, in terms a reader can act on: the evidence for the predicted class over
the runner-up, where it lies, and how much of it is on the white cell.

The heat map of a class sums to that class's logit minus its baseline (:mod:`cellclf.heatmaps`).
The probability of the predicted class against the runner-up depends only on the difference
of their logits, so the map that explains the call is the **contrast**: the predicted class's
map minus the runner-up's. It sums to the decision's margin (the logit gap, measured from the
baselines' gap); red locations push towards the predicted class, blue ones towards the
runner-up.

- **Scale**: each location's share of the evidence (the contrast's absolute total) per 1% of
  the picture (``density``): evidence spread evenly reads 1 everywhere; 10 means that spot
  holds ten times its share. The colour scale is the same on every picture, so they compare.
- **On the cell**: the share of the evidence for the predicted class (the red part) inside the
  white cell: its nucleus (:func:`cellembed.cellcrop.nucleus_mask`, outlined on the pictures)
  widened by :data:`RIM` of the picture's side for the cytoplasm, beside the share of the
  picture the cell covers (what an even spread would give).
- **Grid border**: the share of the evidence on the outer ring of the network's coarsest grid
  (one grid cell wide). Xception's deepest layers answer strongly at one corner of their grid
  (the zero padding of its strided convolutions), differently for each image: such a spot is
  evidence the model really uses, but it is about the network's border, not about the cell.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

#: The caption names the grid corners' share when it is this many times their area.
CORNER_NOTE = 3.0
#: How far the cell reaches beyond its nucleus, as a share of the picture's side.
RIM = 0.12
#: Colour limit of the contrast pictures, in density units (share of the evidence per 1% of
#: the picture): four times an even share is full colour.
DENSITY_LIMIT = 4.0


@dataclass
class Evidence:
    """The contrast map of one call and its facts.

    Attributes:
        contrast: (S, S) predicted class's map minus the runner-up's (logit units).
        margin: its sum (the logit gap beyond the baselines' gap).
        nucleus: (S, S) bool nucleus mask, or None when no nucleus was found.
        cell: (S, S) bool: the nucleus widened by :data:`RIM` (None without a nucleus).
        on_cell: share of the positive evidence inside ``cell`` (None without a nucleus).
        cell_area: share of the picture ``cell`` covers (None without a nucleus).
        grid_border: share of the absolute evidence on the outer ring of the coarsest grid.
        corners: share of the absolute evidence in the four corner cells of the coarsest grid.
        corner_area: the share of the picture those four cells cover (an even spread's share).
    """

    contrast: np.ndarray
    margin: float
    nucleus: np.ndarray | None
    cell: np.ndarray | None
    on_cell: float | None
    cell_area: float | None
    grid_border: float
    corners: float = 0.0
    corner_area: float = 0.0

    @property
    def density(self) -> np.ndarray:
        """(S, S) each location's share of the evidence (the contrast's absolute total) per
        1% of the picture: 1 where the evidence is spread evenly, 10 where a spot holds ten
        times its share; the sign says for which class."""
        total = np.abs(self.contrast).sum()
        return self.contrast * (self.contrast.size / total) if total > 0 else np.zeros_like(self.contrast)

    def facts(self) -> dict:
        """For JSON: the margin and the shares (rounded)."""
        def rounded(value: float | None) -> float | None:
            return None if value is None else round(float(value), 4)

        return {"margin": round(float(self.margin), 4), "on_cell": rounded(self.on_cell),
                "cell_area": rounded(self.cell_area), "grid_border": rounded(self.grid_border),
                "grid_corners": rounded(self.corners), "grid_corners_area": rounded(self.corner_area)}

    def sentence(self, predicted: str, runner_up: str) -> str:
        """One line for a caption."""
        line = f"why {predicted}, not {runner_up}: margin {self.margin:+.2f}"
        if self.on_cell is not None:
            line += f"; {self.on_cell:.0%} of the evidence for {predicted} on the cell ({self.cell_area:.0%} of the picture)"
        if self.corners >= CORNER_NOTE * self.corner_area:
            line += f"; {self.corners:.0%} in the network's grid corners (padding, not the cell)"
        return line


def decision_evidence(pixels: np.ndarray, predicted_map: np.ndarray, other_map: np.ndarray, grid: int) -> Evidence:
    """The :class:`Evidence` of a call from the (S, S) maps of the predicted class and the
    runner-up on ``pixels`` (S, S, 3, 0-255, as the network saw them); ``grid``: the side of
    the coarsest tap's grid (its outer ring is the network's border)."""
    from scipy import ndimage

    from cellembed.cellcrop import nucleus_mask

    contrast = np.asarray(predicted_map, np.float64) - np.asarray(other_map, np.float64)
    size = contrast.shape[0]
    nucleus = nucleus_mask(np.clip(pixels, 0, 255).astype(np.uint8))
    cell = on_cell = cell_area = None
    if nucleus is not None:
        radius = max(1, int(round(RIM * size)))
        disk = np.hypot(*np.mgrid[-radius:radius + 1, -radius:radius + 1]) <= radius
        cell = ndimage.binary_dilation(nucleus, structure=disk)
        positive = np.clip(contrast, 0, None)
        on_cell = float(positive[cell].sum() / positive.sum()) if positive.sum() > 0 else None
        cell_area = float(cell.mean())
    ring = max(1, int(round(size / grid)))
    border = np.zeros((size, size), bool)
    border[:ring], border[-ring:], border[:, :ring], border[:, -ring:] = True, True, True, True
    corners = np.zeros((size, size), bool)
    for rows in (slice(None, ring), slice(size - ring, None)):
        for cols in (slice(None, ring), slice(size - ring, None)):
            corners[rows, cols] = True
    total = np.abs(contrast).sum()
    grid_border = float(np.abs(contrast[border]).sum() / total) if total > 0 else 0.0
    in_corners = float(np.abs(contrast[corners]).sum() / total) if total > 0 else 0.0
    return Evidence(contrast, float(contrast.sum()), nucleus, cell, on_cell, cell_area, grid_border, in_corners,
                    float(corners.mean()))


def outline(mask: np.ndarray) -> np.ndarray:
    """(S, S) bool: the one-pixel edge of ``mask`` (to draw on a picture)."""
    from scipy import ndimage

    return mask & ~ndimage.binary_erosion(mask)
