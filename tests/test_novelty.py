"""The drift signal: conformal p-values of the novelty score, and the batch test."""

from __future__ import annotations

import numpy as np
import pytest

from cellclf.novelty import NoveltyDetector, batch_drift, class_shift, conformal_p_values


def _gaussian(n: int, seed: int, shift: float = 0.0, d: int = 40) -> np.ndarray:
    """Correlated Gaussian embeddings (a fixed mixing matrix), optionally shifted."""
    mixing = np.random.default_rng(123).normal(0, 1, (d, d)) / np.sqrt(d)
    rows = np.random.default_rng(seed).normal(0, 1, (n, d)) @ mixing
    return rows + shift


@pytest.mark.parametrize("residual", [True, False])
def test_in_domain_p_values_are_uniform_and_flag_about_alpha(residual):
    detector = NoveltyDetector(n_components=10, residual=residual).fit(_gaussian(2000, 0))
    detector.calibrate(_gaussian(1000, 1))
    p = detector.p_values(_gaussian(20000, 2))
    for alpha in (0.01, 0.05, 0.2, 0.5):
        assert abs((p < alpha).mean() - alpha) < max(0.004, 0.15 * alpha), alpha
    assert p.min() >= 1 / 1001 and p.max() <= 1.0


def test_a_shifted_batch_fires_the_warning_and_an_in_domain_one_rarely_does():
    detector = NoveltyDetector(n_components=10).fit(_gaussian(2000, 0)).calibrate(_gaussian(1000, 1))
    shifted = batch_drift(detector.p_values(_gaussian(20, 3, shift=1.5)))
    assert shifted.fires and shifted.flagged >= 10 and "unlike the model's training images" in shifted.message()
    fired = [batch_drift(detector.p_values(_gaussian(20, 100 + i))).fires for i in range(300)]
    assert np.mean(fired) <= 0.02
    quiet = batch_drift(detector.p_values(_gaussian(20, 4)))
    assert not quiet.fires and "no sign of another lab" in quiet.message()
    assert not batch_drift([]).fires


def test_a_reference_too_small_to_flag_any_cell_says_the_batch_was_not_checked():
    """11 validation images: the smallest p-value is 1/12 > 0.01, so no cell can be flagged;
    the line must not read as a clean result ("no sign of another lab")."""
    detector = NoveltyDetector(n_components=5).fit(_gaussian(200, 0)).calibrate(_gaussian(11, 1))
    assert detector.smallest_p == pytest.approx(1 / 12)
    far = batch_drift(detector.p_values(_gaussian(20, 3, shift=5.0)), smallest_p=detector.smallest_p)
    assert far.blind and not far.fires and far.flagged == 0
    assert far.message().startswith("not checked for another lab") and "no sign" not in far.message()
    assert far.to_dict()["checked"] is False
    enough = NoveltyDetector(n_components=5).fit(_gaussian(200, 0)).calibrate(_gaussian(200, 1))
    assert not batch_drift(enough.p_values(_gaussian(20, 4)), smallest_p=enough.smallest_p).blind


def test_conformal_p_values_count_calibration_scores_at_least_as_large():
    calibration = np.array([1.0, 2.0, 3.0])
    np.testing.assert_allclose(conformal_p_values([0.5, 2.0, 2.5, 9.0], calibration), [1.0, 0.75, 0.5, 0.25])


def test_the_detector_round_trips_through_arrays():
    detector = NoveltyDetector(n_components=5).fit(_gaussian(300, 0)).calibrate(_gaussian(200, 1))
    again = NoveltyDetector.from_arrays(detector.to_arrays())
    rows = _gaussian(50, 2, shift=0.5)
    np.testing.assert_allclose(again.p_values(rows), detector.p_values(rows))
    np.testing.assert_allclose(again.score(rows), detector.score(rows), rtol=1e-5)


def test_class_shift_is_the_total_variation_from_the_training_mix():
    training = {"a": 50, "b": 50}
    assert class_shift(["a", "b"] * 5, training) == 0.0
    assert class_shift(["a"] * 10, training) == pytest.approx(0.5)
    assert class_shift(["c"] * 4, training) == pytest.approx(1.0)
