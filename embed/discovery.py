"""Finding the images in a folder and their labels.

Row keys. An image's ``path`` (the key people read, stored in the Parquet file and the CSV
files) is its path relative to the images folder, with ``/`` separators, as a valid UTF-8
string whatever the file system holds:

* a name that is valid UTF-8 (nearly all of them) is its own key, unchanged;
* each byte of a name that is not valid UTF-8 (a Latin-1 name such as ``latin<0xE9>.png``
  copied from an old Windows share) is written as a ``\\xNN`` hex escape: the key is
  ``latin\\xe9.png``. ``ImageFile.absolute`` keeps the real name, for reading.

One key can then name two files of the images folder: ``latin<0xE9>.png`` and a file
literally called ``latin\\xe9.png`` (with a backslash). The file whose name is its own key
keeps it; the other is listed as an error ("same row key as ..."), never merged silently.

The walk follows symbolic links to folders (a class folder may be a link) and lists each
real folder once, so a link loop ends. A folder that cannot be listed is an error of the
scan (its images are unknown, not gone: ``plan`` keeps their cached rows); a folder holding
no image (empty, or only files of other formats) is named in a warning.
"""

from __future__ import annotations

import os
import stat
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from cellembed.errors import InputError


def _image_extensions() -> tuple[str, ...]:
    from PIL import features

    # WebP is read only when Pillow was built with libwebp (the wheels are).
    return (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff") + ((".webp",) if features.check("webp") else ())


IMAGE_EXTENSIONS = _image_extensions()


@dataclass(frozen=True)
class ImageFile:
    """An image found under the images folder.

    Attributes:
        path: POSIX path relative to the images folder (the row key people read): valid
            UTF-8, undecodable bytes of a name as ``\\xNN`` escapes (see the module docstring).
        label: name of the first-level sub-folder it lives under (escaped the same way),
            None if directly in the folder.
        absolute: the file's full path, for reading.
    """

    path: str
    label: str | None
    absolute: Path


@dataclass
class ImageScan:
    """What a walk of the images folder found.

    Attributes:
        files: every image, sorted by path.
        errors: entries that will not be read, each ``{"path", "reason"}``: folders that could
            not be listed (path ending in ``/``), entries that are not regular files (FIFOs,
            devices), a second file with an existing row key.
        unlisted: the keys of the folders that could not be listed (their images are unknown).
        warnings: one line per folder that holds no image, and per link to a folder already
            listed.
    """

    files: list[ImageFile] = field(default_factory=list)
    errors: list[dict[str, str]] = field(default_factory=list)
    unlisted: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def row_key(name: str) -> str:
    """A file system name (or relative path) as a valid UTF-8 string: unchanged when it is
    valid UTF-8, else each undecodable byte as ``\\xNN``."""
    return os.fsencode(name).decode("utf-8", "backslashreplace")


def find_images(root: str | Path) -> list[ImageFile]:
    """Every image under ``root``, sorted by path (:func:`scan_images` without its errors
    and warnings)."""
    return scan_images(root).files


def scan_images(root: str | Path) -> ImageScan:
    """Walk ``root``: its images, the entries that cannot be read, and warnings.

    Each first-level sub-folder name is the label of the images below it (at any depth);
    images directly in ``root`` get no label. Extensions are matched case-insensitively.
    Hidden files and folders (name starting with a dot) are ignored. Symbolic links to
    folders are followed; each real folder is listed once, under its own name when it is
    in ``root`` (links are walked last).

    Raises:
        InputError: ``root`` does not exist, is not a folder, cannot be listed, or holds no
            image.
    """
    root = Path(root)
    if not root.exists():
        raise InputError(f"images folder {root} does not exist")
    if not root.is_dir():
        raise InputError(f"{root} is not a folder; give the folder that holds the images")
    scan = ImageScan()
    by_key: dict[str, ImageFile] = {}
    clashes: list[ImageFile] = []
    images_below: Counter[str] = Counter()  # folder key -> images in it and below
    others_below: dict[str, Counter[str]] = {}  # folder key -> other files' extensions
    visited: dict[tuple[int, int], str] = {}
    stack: list[tuple[str, str]] = [(os.fspath(root), "")]  # (path, key; "" for root)
    linked: list[tuple[str, str]] = []  # links to folders: walked after every real folder
    while stack or linked:
        directory, key = stack.pop() if stack else linked.pop()
        try:
            info = os.stat(directory)
            with os.scandir(directory) as listing:
                entries = sorted(listing, key=lambda entry: entry.name, reverse=True)
        except OSError as exc:
            if not key:
                raise InputError(f"cannot list the images folder {root}: {exc.strerror or exc}") from None
            scan.unlisted.append(key)
            reason = f"cannot list this folder: {exc.strerror or exc}; its images are left as they were (cached rows kept)"
            scan.errors.append({"path": key + "/", "reason": reason})
            continue
        identity = (info.st_dev, info.st_ino)
        if identity in visited:
            first = visited[identity]
            scan.warnings.append(
                f"folder {key}/ is a link to a folder already listed "
                f"({first + '/' if first else 'the images folder'}); its images are listed once"
            )
            continue
        visited[identity] = key
        others_below.setdefault(key, Counter())
        for entry in entries:
            if entry.name.startswith("."):
                continue
            entry_key = f"{key}/{row_key(entry.name)}" if key else row_key(entry.name)
            if _is_dir(entry):
                (linked if entry.is_symlink() else stack).append((entry.path, entry_key))
                continue
            if not entry.name.lower().endswith(IMAGE_EXTENSIONS):
                extension = PurePosixPath(entry.name).suffix.lower() or "(none)"
                for folder in _folders_of(entry_key):
                    others_below.setdefault(folder, Counter())[extension] += 1
                continue
            kind = _not_regular(entry)
            if kind:
                reason = f"not a regular file ({kind}); only regular files are read"
                scan.errors.append({"path": entry_key, "reason": reason})
                continue
            parts = entry_key.split("/")
            image = ImageFile(entry_key, parts[0] if len(parts) > 1 else None, Path(entry.path))
            if entry_key in by_key:
                clashes.append(image)
            else:
                by_key[entry_key] = image
            for folder in _folders_of(entry_key):
                images_below[folder] += 1
    for image in clashes:
        _resolve_clash(image, by_key, root, scan)
    scan.files = sorted(by_key.values(), key=lambda image: image.path)
    scan.errors.sort(key=lambda error: error["path"])
    scan.warnings += _empty_folder_warnings(others_below, images_below, scan.unlisted)
    if not scan.files:
        unlisted = (
            f"; {len(scan.unlisted)} sub-folder(s) could not be listed, e.g. {scan.unlisted[0]}/" if scan.unlisted else ""
        )
        raise InputError(
            f"no images in {root} (looked for {', '.join(IMAGE_EXTENSIONS)} files, "
            f"in the folder and its sub-folders{unlisted})"
        )
    return scan


def _is_dir(entry: os.DirEntry) -> bool:
    try:
        return entry.is_dir()  # follows symbolic links
    except OSError:
        return False


def _not_regular(entry: os.DirEntry) -> str | None:
    """What the entry is when it is not a regular file (after following links); None for a
    regular file, or one whose type cannot be read now (its reading then fails, and says why)."""
    try:
        if entry.is_file():  # follows symbolic links; no system call for a plain file
            return None
        mode = entry.stat().st_mode
    except OSError:
        return None
    kinds = {stat.S_ISFIFO: "a FIFO", stat.S_ISCHR: "a character device", stat.S_ISBLK: "a block device",
             stat.S_ISSOCK: "a socket"}
    return next((kind for test, kind in kinds.items() if test(mode)), "not a file")


def _folders_of(key: str) -> list[str]:
    """The keys of the folders holding ``key``, the images folder ("") included."""
    parts = key.split("/")[:-1]
    return [""] + ["/".join(parts[: i + 1]) for i in range(len(parts))]


def _resolve_clash(image: ImageFile, by_key: dict[str, ImageFile], root: Path, scan: ImageScan) -> None:
    """Two files with one key: the one whose real path is its own key keeps it."""
    holder = by_key[image.path]
    if _real_relative(image, root) == image.path and _real_relative(holder, root) != holder.path:
        by_key[image.path], image, holder = image, holder, image
    scan.errors.append({
        "path": image.path,
        "reason": f"same row key as another file: {os.fsencode(_real_relative(image, root))!r} is not UTF-8 "
        f"and, written with \\x escapes, reads as {os.fsencode(_real_relative(holder, root))!r}, which is read "
        "instead; rename one of them",
    })


def _real_relative(image: ImageFile, root: Path) -> str:
    return os.path.relpath(image.absolute, root).replace(os.sep, "/")


def _empty_folder_warnings(
    others_below: dict[str, Counter[str]], images_below: Counter[str], unlisted: list[str]
) -> list[str]:
    """One line per folder without images whose parent has some (the highest such folder)."""
    warnings = []
    for key in sorted(others_below):
        if not key or images_below[key] or any(u == key or u.startswith(key + "/") for u in unlisted):
            continue
        parent = key.rsplit("/", 1)[0] if "/" in key else ""
        if parent and not images_below[parent]:
            continue  # named with its parent
        others = others_below[key]
        what = (
            f" (only {', '.join(f'{n} {ext}' for ext, n in sorted(others.items()))}; "
            f"supported: {', '.join(IMAGE_EXTENSIONS)})" if others else " (it is empty)"
        )
        label = "; its class is left out" if "/" not in key else ""
        warnings.append(f"folder {key}/ holds no images{what}{label}")
    return warnings
