"""cellclf.inputs: one naming rule for the images of predict, explain and predict --heatmaps."""

from __future__ import annotations

import shutil

import pytest

from cellclf.errors import ClassifierInputError
from cellclf.inputs import input_images
from conftest import make_folder


def test_one_folder_names_images_by_their_path_inside_it_and_labels_them(tmp_path):
    folder = make_folder(tmp_path / "cells", {"eosinophil": 2, "": 1})
    images, found = input_images([folder])
    assert found == folder
    assert sorted((i.name, i.label) for i in images) == [
        ("eosinophil/img_000.png", "eosinophil"), ("eosinophil/img_001.png", "eosinophil"), ("img_002.png", None),
    ]
    assert all(i.file.is_file() for i in images)


def test_files_are_named_by_their_file_name_and_one_file_given_twice_is_one_image(tmp_path):
    make_folder(tmp_path / "a", {"": 2})
    first, second = sorted((tmp_path / "a").iterdir())
    images, folder = input_images([first, second, first])
    assert folder is None and [i.name for i in images] == [first.name, second.name]
    assert all(i.label is None for i in images)


def test_predict_takes_one_folder_or_files_and_explain_takes_any_mix(tmp_path):
    one = make_folder(tmp_path / "one", {"x": 1})
    two = make_folder(tmp_path / "two", {"x": 1}, start_seed=10)
    with pytest.raises(ClassifierInputError, match="classify each folder in its own run"):
        input_images([one, two])
    images, folder = input_images([one, two], several_folders=True, verb="explain")
    assert folder is None
    assert sorted(i.name for i in images) == ["one/x/img_000.png", "two/x/img_010.png"]


def test_two_different_images_of_one_name_and_missing_inputs_are_refused_naming_them(tmp_path):
    make_folder(tmp_path / "a", {"": 1})
    (tmp_path / "b").mkdir()
    shutil.copy(tmp_path / "a" / "img_000.png", tmp_path / "b" / "img_000.png")
    with pytest.raises(ClassifierInputError, match=r"two images would be named img_000.png .*explain them in separate runs"):
        input_images([tmp_path / "a" / "img_000.png", tmp_path / "b" / "img_000.png"], several_folders=True, verb="explain")
    with pytest.raises(ClassifierInputError, match="nothing.jpg does not exist"):
        input_images([tmp_path / "nothing.jpg"])
    with pytest.raises(ClassifierInputError, match="give a folder of images"):
        input_images([])
