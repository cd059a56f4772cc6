"""The images a command is given: folders and image files, each image with the name its
outputs get.

One rule for every command (``cellclf predict``, ``cellclf explain``, ``predict
--heatmaps``): a single folder's images are named by their path inside it and labelled by
their first-level sub-folder; a file is named by its file name; with several inputs, a
folder's images get the folder's name in front. Two different images that would get one
name are refused, as is an input that does not exist.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from cellclf.errors import ClassifierInputError


@dataclass(frozen=True)
class InputImage:
    """One image: its name in the outputs, its file and its class folder (if any)."""

    name: str
    file: Path
    label: str | None = None


def input_images(
    inputs: Sequence[str | Path], *, several_folders: bool = False, verb: str = "classify"
) -> tuple[list[InputImage], Path | None]:
    """The images of ``inputs`` and the folder when ``inputs`` is one folder (else None).

    ``several_folders``: accept any mix of folders and files (explain); otherwise one
    folder, or image files (predict, whose folder is cached and scored as one). ``verb``
    names the command in messages ("classify them in separate runs").

    Raises:
        ClassifierInputError: nothing given, a missing path, several folders or a folder
            with files when not allowed, two images of one name.
        cellembed.InputError: a folder that cannot be listed or holds no image.
    """
    from cellembed.discovery import find_images

    paths = [Path(p) for p in inputs]
    if not paths:
        raise ClassifierInputError("give a folder of images or one or more image files")
    for path in paths:
        if not path.exists():
            raise ClassifierInputError(f"{path} does not exist; give a folder of images or image files")
    folders = [p for p in paths if p.is_dir()]
    if folders and len(paths) > 1 and not several_folders:
        raise ClassifierInputError(
            f"give one folder, or image files, not both or several folders ({folders[0]} with {len(paths) - 1} more); "
            f"{verb} each folder in its own run"
        )
    found: list[InputImage] = []
    for path in paths:
        if path.is_dir():
            prefix = "" if len(paths) == 1 else path.resolve().name + "/"
            found += [InputImage(prefix + i.path, Path(i.absolute), i.label) for i in find_images(path)]
        else:
            found.append(InputImage(path.name, path))
    seen: dict[str, Path] = {}
    unique: list[InputImage] = []
    for image in found:
        where = image.file.resolve()
        if image.name in seen and seen[image.name] != where:
            raise ClassifierInputError(
                f"two images would be named {image.name} ({seen[image.name]} and {image.file}); {verb} them in separate runs"
            )
        if image.name not in seen:
            seen[image.name] = where
            unique.append(image)
    return unique, (paths[0] if len(paths) == 1 and folders else None)
