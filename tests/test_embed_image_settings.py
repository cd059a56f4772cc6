"""Test-time views, cell-centred crops and colour normalisation: spec fields threaded from
extraction to prediction."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner
from PIL import Image

from cellembed import extract, read_spec
from cellembed.cellcrop import crop_cell, crop_centre, find_nucleus
from cellembed.cli import main as cellembed_main
from cellembed.embedder import embedder_from_spec, spec_for_settings
from cellembed.errors import InputError
from cellembed.choices import choices_of
from cellembed.presets import PRESETS
from cellembed.spec import EmbeddingSpec
from cellembed.stain import REFERENCE_MEAN, REFERENCE_STD, reinhard
from cellembed.network import Network
from cellembed.views import DIHEDRAL
from conftest import SMALL, make_folder

CREAM, PURPLE, PINK = (242, 226, 210), (80, 40, 140), (214, 160, 170)


def smear(size=(120, 100), centre=(70, 30), radius=14, seed=0) -> np.ndarray:
    """A cream background with pink red cells and one purple nucleus at ``centre`` (x, y)."""
    rng = np.random.default_rng(seed)
    height, width = size[1], size[0]
    rgb = np.empty((height, width, 3), np.uint8)
    rgb[:] = CREAM
    yy, xx = np.mgrid[:height, :width]
    for _ in range(4):
        cy, cx = rng.integers(0, height), rng.integers(0, width)
        rgb[(yy - cy) ** 2 + (xx - cx) ** 2 < 10**2] = PINK
    rgb[(yy - centre[1]) ** 2 + (xx - centre[0]) ** 2 < radius**2] = PURPLE
    return rgb


class Halves:
    """A fake network whose output is not invariant to flips: one location holding the left
    and the top half's means."""

    taps, channels = ("t",), {"t": 2}

    def embed(self, pixels):
        half = pixels.shape[2] // 2
        return np.stack([pixels[:, :, :half].mean(axis=(1, 2, 3)), pixels[:, :half].mean(axis=(1, 2, 3))], 1)

    def __call__(self, pixels):
        return {"t": self.embed(pixels)[:, None, None, :].astype(np.float32)}


def test_the_eight_views_are_the_dihedral_group_in_the_documented_order():
    image = np.random.default_rng(0).uniform(0, 255, (1, 5, 5, 3)).astype(np.float32)
    views = [transform(image) for transform in DIHEDRAL.values()]
    assert list(DIHEDRAL)[:4] == ["identity", "flip left-right", "flip top-bottom", "rotate 90"]
    assert len({v.tobytes() for v in views}) == 8  # all distinct
    # closed under composition: every view of a view is one of the eight
    for transform in DIHEDRAL.values():
        for view in views:
            assert any(np.array_equal(transform(view), other) for other in views)


@pytest.mark.parametrize("views", [1, 2, 4, 8])
def test_the_view_embedding_is_the_mean_over_the_first_views(views):
    spec = EmbeddingSpec.from_widths([("t", 2)], backbone="b", weights_sha256="0", input_size=6)
    pixels = np.random.default_rng(1).uniform(0, 255, (3, 6, 6, 3)).astype(np.float32)
    embedder = Network(Halves(), dataclasses.replace(spec, views=views))
    expected = np.mean([Halves().embed(t(pixels)) for t in list(DIHEDRAL.values())[:views]], axis=0)
    np.testing.assert_allclose(embedder.embed(pixels), expected, rtol=1e-6)
    assert embedder.spec.views == views
    if views > 1:  # the fake network sees the flips: averaging changes its output
        assert not np.allclose(embedder.embed(pixels), Halves().embed(pixels))


def test_the_nucleus_is_found_where_it_is_and_the_crop_centres_it():
    rgb = smear(centre=(80, 30))
    nucleus = find_nucleus(rgb)
    assert nucleus is not None
    assert abs(nucleus.col - 80) <= 1 and abs(nucleus.row - 30) <= 1
    assert 26 <= nucleus.height <= 29
    cell, found = crop_cell(rgb)
    assert found and cell.shape[0] == cell.shape[1] == round(2.0 * max(nucleus.height, nucleus.width))
    middle = cell[cell.shape[0] // 2, cell.shape[1] // 2]
    assert tuple(middle) == PURPLE  # the nucleus is in the middle of the crop
    centred, found = crop_centre(rgb)
    assert found and centred.shape[:2] == (80, 80)  # 0.8 x the shorter side, padded where outside
    assert tuple(centred[40, 40]) == PURPLE
    assert tuple(centred[0, 0]) == CREAM  # beyond the image: the median (background) colour


def test_no_stained_cell_falls_back_to_the_whole_image():
    blank = np.full((60, 80, 3), CREAM, np.uint8)
    blank[10:30, 10:30] = PINK
    assert find_nucleus(blank) is None
    same, found = crop_cell(blank)
    assert not found and same is blank


def test_reinhard_gives_every_image_the_reference_colour_statistics():
    from skimage import color

    for seed, tint in enumerate([(1.0, 0.8, 1.2), (0.7, 0.9, 1.0)]):
        rgb = np.clip(smear(seed=seed) * np.array(tint), 0, 255).astype(np.uint8)
        lab = color.rgb2lab(reinhard(rgb)).reshape(-1, 3)
        np.testing.assert_allclose(lab.mean(axis=0), REFERENCE_MEAN, atol=2.5)
        np.testing.assert_allclose(lab.std(axis=0), REFERENCE_STD, rtol=0.15)


def test_specs_written_before_these_fields_keep_their_identity():
    spec = EmbeddingSpec.from_widths([("t", 2)], backbone="b", weights_sha256="0", input_size=6)
    old = spec.to_dict()
    for key in ("views", "crop", "stain"):
        old.pop(key)
    read = EmbeddingSpec.from_dict(old)
    assert (read.views, read.crop, read.stain) == (1, "none", "none")
    assert "views" not in read.identity_key() and read.identity_key() == spec.identity_key()
    viewed = dataclasses.replace(spec, views=4)
    assert viewed.identity_key() != spec.identity_key()
    assert spec.differences(viewed) == ["views: 1 vs 4"]


def test_views_crop_and_stain_are_part_of_the_spec_and_reach_prediction(tmp_path, random_weights):
    """Extract with 2 views, a cell crop and Reinhard; the spec records them, the rows record
    whether the cell was found, and the embedder rebuilt from the spec (what predict and the
    server use) gives exactly the stored rows."""
    images = tmp_path / "images"
    (images / "a").mkdir(parents=True)
    Image.fromarray(smear(centre=(60, 50), seed=1)).save(images / "a" / "cell.png")
    Image.fromarray(np.full((90, 90, 3), CREAM, np.uint8)).save(images / "a" / "empty.png")
    out = tmp_path / "emb.parquet"
    extract(images, out, weights=random_weights, input_size=SMALL, layers="add_2", views=2, crop="cell",
            stain="reinhard", progress=False)
    spec = read_spec(out)
    assert (spec.views, spec.crop, spec.stain) == (2, "cell", "reinhard")
    table = pq.read_table(out)
    found = dict(zip(table.column("path").to_pylist(), table.column("cell_found").to_pylist()))
    assert found == {"a/cell.png": True, "a/empty.png": False}

    from cellembed.pipeline import decoded_batches

    embedder = embedder_from_spec(spec, random_weights)
    assert isinstance(embedder, Network) and embedder.spec.views == 2
    batch = next(decoded_batches([images / "a" / "cell.png", images / "a" / "empty.png"], spec, 2))
    stored = np.stack(table.column("embedding").to_numpy(zero_copy_only=False))
    np.testing.assert_allclose(embedder.embed(batch.pixels), stored, atol=1e-4)

    # Other views are another spec: refused like other weights, the file untouched.
    before = out.read_bytes()
    with pytest.raises(InputError, match="views"):
        extract(images, out, weights=random_weights, input_size=SMALL, layers="add_2", views=1, crop="cell",
                stain="reinhard", progress=False)
    assert out.read_bytes() == before


def test_a_crop_used_by_many_decoding_threads_at_once_in_a_fresh_process(tmp_path):
    """scikit-image loads submodules lazily; decoding threads starting together once saw
    'partially initialized module skimage.morphology' (a Ray worker's first shard)."""
    import subprocess
    import sys
    import textwrap

    script = textwrap.dedent("""
        import sys, threading
        sys.path.insert(0, sys.argv[1])
        from test_embed_image_settings import smear
        from cellembed.spec import EmbeddingSpec
        from cellembed.preparation import preparation_for
        spec = EmbeddingSpec.from_widths([("t", 2)], backbone="b", weights_sha256="0", input_size=8,
                                         crop="cell", stain="reinhard")
        prepare = preparation_for(spec)
        barrier, errors = threading.Barrier(8), []
        def work():
            barrier.wait()
            try:
                prepare(smear())
            except Exception as exc:
                errors.append(repr(exc))
        threads = [threading.Thread(target=work) for _ in range(8)]
        [t.start() for t in threads]
        [t.join() for t in threads]
        print(len(errors), errors[:1])
    """)
    tests = str(Path(__file__).parent)
    for _ in range(12):  # the race showed in about 1 fresh process in 3
        done = subprocess.run([sys.executable, "-c", script, tests], capture_output=True, text=True, timeout=120)
        assert done.returncode == 0 and done.stdout.startswith("0 "), done.stdout + done.stderr[-2000:]


def test_presets_fill_the_settings_not_given(random_weights):
    best = {**PRESETS["best"].choices, "precision": "fp32"}  # its precision auto: fp32 in the suite
    spec, _ = spec_for_settings(weights=random_weights, input_size=SMALL, preset="best")
    assert choices_of(spec) == best
    spec, _ = spec_for_settings(weights=random_weights, input_size=SMALL, preset="best", views=1, crop="none")
    assert choices_of(spec) == {**best, "views": 1, "crop": "none"}
    v1, _ = spec_for_settings(weights=random_weights, input_size=SMALL, preset="v1")
    assert (v1.views, v1.crop, v1.stain, v1.tap_names[-1], v1.precision) == (1, "none", "none", "block14_sepconv2_act",
                                                                              "fp32")


def test_a_file_of_the_first_version_names_the_preset_that_extends_it(tmp_path, random_weights):
    folder = make_folder(tmp_path / "images", {"a": 2})
    out = tmp_path / "e.parquet"
    args = ["extract", str(folder), "-o", str(out), "--weights", str(random_weights), "--input-size", str(SMALL), "-q"]
    assert CliRunner().invoke(cellembed_main, [*args, "--preset", "v1"]).exit_code == 0
    make_folder(tmp_path / "images", {"b": 1}, start_seed=9)
    refused = CliRunner().invoke(cellembed_main, args)
    assert refused.exit_code == 2
    assert "views: 4 vs 1" in refused.output and "--preset v1 (give that option to extend it)" in refused.output
    extended = CliRunner().invoke(cellembed_main, [*args, "--preset", "v1"])
    assert extended.exit_code == 0 and read_spec(out).views == 1
    assert pq.read_table(out).num_rows == 3


def test_cli_refuses_a_view_count_outside_the_group(tmp_path):
    folder = make_folder(tmp_path / "images", {"a": 1})
    result = CliRunner().invoke(cellembed_main, ["extract", str(folder), "-o", str(tmp_path / "e.parquet"), "--views", "3"])
    assert result.exit_code == 2 and "--views" in result.output
    result = CliRunner().invoke(cellembed_main, ["extract", str(folder), "-o", str(tmp_path / "e.parquet"), "--crop", "nucleus"])
    assert result.exit_code == 2 and "--crop" in result.output
    assert not (tmp_path / "e.parquet").exists()
    json.dumps(PRESETS["default"].__dict__)  # presets are plain data
