"""Finding the images in a folder and their labels."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from cellembed.errors import InputError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff")


@dataclass(frozen=True)
class ImageFile:
    """An image found under the images folder.

    Attributes:
        path: POSIX path relative to the images folder (the row key people read).
        label: name of the first-level sub-folder it lives under, None if directly in the folder.
        absolute: the file's full path, for reading.
    """

    path: str
    label: str | None
    absolute: Path


def find_images(root: str | Path) -> list[ImageFile]:
    """Every image under ``root``, sorted by path.

    Each first-level sub-folder name is the label of the images below it (at any depth);
    images directly in ``root`` get no label. Extensions are matched case-insensitively.
    Hidden files and folders (name starting with a dot) are ignored.

    Raises:
        InputError: ``root`` does not exist, is not a folder, or holds no image.
    """
    root = Path(root)
    if not root.exists():
        raise InputError(f"images folder {root} does not exist")
    if not root.is_dir():
        raise InputError(f"{root} is not a folder; give the folder that holds the images")
    found: list[ImageFile] = []
    for dirpath, dirnames, filenames in os.walk(root):
        # Pruning in place stops os.walk from descending into hidden folders.
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        relative_dir = Path(dirpath).relative_to(root)
        label = relative_dir.parts[0] if relative_dir.parts else None
        for name in filenames:
            if name.startswith(".") or not name.lower().endswith(IMAGE_EXTENSIONS):
                continue
            relative = (relative_dir / name).as_posix()
            found.append(ImageFile(relative, label, Path(dirpath) / name))
    if not found:
        raise InputError(
            f"no images in {root} (looked for {', '.join(IMAGE_EXTENSIONS)} files, "
            "in the folder and its sub-folders)"
        )
    found.sort(key=lambda image: image.path)
    return found
