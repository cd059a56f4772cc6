"""plan(): pure and TensorFlow-free; shards of stable ids; the cache diff."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from cellembed import extract
from cellembed.embedder import spec_for_settings
from cellembed.errors import InputError
from cellembed.plan import plan
from conftest import SMALL, make_folder


def _spec(weights, layers="multiscale"):
    spec, _ = spec_for_settings(weights=weights, input_size=SMALL, layers=layers)
    return spec


@pytest.mark.slow
def test_plan_starts_no_tensorflow_and_writes_nothing(labelled_folder, tmp_path, random_weights):
    before = sorted(p for p in tmp_path.rglob("*"))
    script = f"""
import json, sys
from cellembed.embedder import spec_for_settings
from cellembed.plan import plan
spec, _ = spec_for_settings(weights={str(random_weights)!r}, input_size={SMALL})
work = plan({str(labelled_folder)!r}, {str(tmp_path / "out.parquet")!r}, spec, shard_size=5)
print(json.dumps({{"shards": [len(s) for s in work.shards], "heavy": sorted(m for m in ("tensorflow", "keras", "onnxruntime") if m in sys.modules)}}))
"""
    output = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    facts = json.loads(output.stdout.strip().splitlines()[-1])
    assert facts == {"shards": [5, 5, 2], "heavy": []}
    assert sorted(p for p in tmp_path.rglob("*")) == before


def test_shard_ids_depend_on_the_images_and_the_spec_only(labelled_folder, tmp_path, random_weights):
    spec = _spec(random_weights)
    first = plan(labelled_folder, tmp_path / "a.parquet", spec, shard_size=4)
    second = plan(labelled_folder, tmp_path / "b.parquet", spec, shard_size=4)
    assert [s.id for s in first.shards] == [s.id for s in second.shards]
    assert len({s.id for s in first.shards}) == 3 and all(len(s) <= 4 for s in first.shards)
    other_taps = plan(labelled_folder, tmp_path / "a.parquet", _spec(random_weights, "final"), shard_size=4)
    assert not {s.id for s in other_taps.shards} & {s.id for s in first.shards}
    # every image once, in path order, identical files once
    items = [item for shard in first.shards for item in shard.items]
    assert [i.path for i in items] == sorted(i.path for i in items) and len(items) == 12


@pytest.mark.slow
def test_plan_diffs_against_out_and_refuses_another_spec(labelled_folder, tmp_path, random_weights):
    out = tmp_path / "emb.parquet"
    extract(labelled_folder, out, weights=random_weights, input_size=SMALL, layers="final", progress=False)
    make_folder(labelled_folder, {"alpha": 2}, start_seed=90)
    (labelled_folder / "beta" / "img_005.png").unlink()
    work = plan(labelled_folder, out, _spec(random_weights, "final"))
    assert work.spec.dim == 4096  # 2048 channels, means and stds: from the configuration, before any network
    assert [item.path for shard in work.shards for item in shard.items] == ["alpha/img_090.png", "alpha/img_091.png"]
    assert "13 images" in work.summary() and "11 already embedded, 2 to embed" in work.summary()
    with pytest.raises(InputError, match="another embedding spec.*--overwrite"):
        plan(labelled_folder, out, _spec(random_weights, "multiscale"))
    assert plan(labelled_folder, out, _spec(random_weights, "multiscale"), overwrite=True).to_embed == 13


@pytest.mark.slow
def test_a_spec_whose_tap_widths_are_not_its_networks_is_refused(labelled_folder, tmp_path, random_weights):
    """Widths come from the configuration; a file or classifier spec claiming others (a
    hand-edited spec, another version's table) is never taken for these embeddings."""
    import dataclasses

    from cellembed.embedder import embedder_from_spec
    from cellembed.errors import OutputConflict
    from cellembed.spec import tap_layout

    spec = _spec(random_weights, "final")
    wrong = dataclasses.replace(spec, taps=tap_layout([("block14_sepconv2_act", 1000)]))
    assert spec.differences(wrong) == ["tap widths: [4096] vs [1000]"] and spec.identity_key() == wrong.identity_key()
    with pytest.raises(InputError, match=r"cannot reproduce embeddings made with tap widths: \[4096\] vs \[1000\]"):
        embedder_from_spec(wrong, random_weights)
    out = tmp_path / "emb.parquet"
    extract(labelled_folder, out, weights=random_weights, input_size=SMALL, layers="final", progress=False)
    with pytest.raises(OutputConflict, match="tap widths"):
        plan(labelled_folder, out, wrong)
    unknown = dataclasses.replace(spec, taps=tap_layout([("block99_conv", 8)]))
    with pytest.raises(InputError, match="made with the taps block99_conv, not all of which this cellembed's Xception"):
        embedder_from_spec(unknown, random_weights)


@pytest.mark.slow
def test_out_records_the_spec_the_embedder_ran(labelled_folder, tmp_path, random_weights):
    """Embedding with a spec of another version (a classifier's: predict --cache) writes this
    run's library versions in OUT, not the given spec's."""
    import dataclasses

    from cellembed import read_spec

    spec = dataclasses.replace(_spec(random_weights, "final"), versions={"cellembed": "0.0.1"})
    out = tmp_path / "emb.parquet"
    extract(labelled_folder, out, spec=spec, weights=random_weights, progress=False)
    assert read_spec(out).versions.get("cellembed") not in (None, "0.0.1")
