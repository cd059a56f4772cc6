"""The embedding spec: what produced an embedding, stored as JSON in the Parquet metadata.

Two embeddings can be compared (and cached together, or fed to the same classifier) only
when their specs have the same *identity*: backbone, weights, input size, taps, pooling,
preprocessing, colour conversion, resize method, colour normalisation (``stain``), framing
(``crop``), test-time ``views`` and the network's numeric ``precision``. Library versions are recorded for
provenance but are not part of the identity.

A spec is turned back into the embedder that wrote it by
:func:`cellembed.embedder.embedder_from_spec`, the one place a field is threaded into the
network. A field added later gets a default that means "as before" (for example no
test-time views), so files written earlier read with it and keep their identity.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any, Iterable, Sequence

from cellembed.errors import InputError

SPEC_FORMAT = 1
#: Parquet key-value metadata key holding the spec JSON.
SPEC_METADATA_KEY = b"cellembed.spec"

#: How cellembed decodes and resizes every image (cellembed.decoding), and pools taps.
RESIZE = "bilinear, tf.image.resize(antialias=False), aspect ratio not kept"
COLOR = (
    "8-bit RGB: grayscale repeated on 3 channels, palette expanded, "
    "transparency composited onto white, 16-bit samples scaled by 1/257 and rounded"
)
#: The one table of what each chosen field (cellembed.choices) meant before it could be
#: chosen ("as before"): the dataclass defaults below, the choices' defaults and the
#: identity all read it. (What a new run gets is a preset's: cellembed.presets.)
AS_BEFORE: dict[str, Any] = {"pooling": "global_average", "views": 1, "crop": "none", "stain": "none", "precision": "fp32"}
#: Identity fields added after the first format: left out of the identity at their "as
#: before" value, so earlier files keep their identity (pooling was in the first format).
LATER_FIELDS: dict[str, Any] = {key: AS_BEFORE[key] for key in ("views", "crop", "stain", "precision")}


@dataclass(frozen=True)
class Tap:
    """One pooled layer output inside the embedding vector.

    Parameters
    ----------
    name : str
        Stable layer name in a freshly built Xception (for example ``add_6``).
    offset : int
        Index of the tap's first float in the embedding vector.
    width : int
        Number of floats (the layer's channel count, times the pooling's statistics).
    """

    name: str
    offset: int
    width: int

    @property
    def stop(self) -> int:
        """Index just past the tap's last float (``offset + width``)."""
        return self.offset + self.width


@dataclass(frozen=True)
class EmbeddingSpec:
    """Everything needed to reproduce, or check compatibility with, an embedding.

    Parameters
    ----------
    backbone : str
        The network (``cellembed.backbones``).
    weights_sha256 : str
        SHA-256 identifying the network's weights.
    input_size : int
        Side of the square network input, in pixels.
    taps : tuple of Tap
        The pooled layer outputs, in their order in the embedding vector.
    pooling : str, default "global_average"
        The per-channel statistics of each tap (``cellembed.pooling``).
    preprocessing : str, default ""
        The backbone's description of its preprocessing (``cellembed.backbones``); cellembed always sets it.
    resize : str, default RESIZE
        How the image is resized to the network input.
    color : str, default COLOR
        How the image is converted to 8-bit RGB.
    weights_source : str, default ""
        How the weights were chosen (provenance; not part of the identity).
    views : int, default 1
        Test-time views: the embedding is the mean over the first ``views`` transforms of
        ``cellembed.views.DIHEDRAL`` (1: the image as it is).
    crop : str, default "none"
        How the image is framed before resizing (``cellembed.cellcrop.CROPS``).
    stain : str, default "none"
        Colour normalisation of the decoded image (``cellembed.stain.STAINS``).
    precision : str, default "fp32"
        The network's numeric precision (``cellembed.precision.PRECISIONS``): int8 runs a
        quantised copy of the network, whose embeddings are close to fp32's but not the same.
    versions : dict of str to str, optional
        Library versions, recorded for provenance; not part of the identity (nor compared).
    format : int, default SPEC_FORMAT
        The spec's format version.
    """

    backbone: str
    weights_sha256: str
    input_size: int
    taps: tuple[Tap, ...]
    pooling: str = AS_BEFORE["pooling"]
    preprocessing: str = ""  # the backbone's description (cellembed.backbones); cellembed always sets it
    resize: str = RESIZE
    color: str = COLOR
    weights_source: str = ""
    #: Test-time views: the embedding is the mean over the first ``views`` transforms of
    #: ``cellembed.views.DIHEDRAL`` (1: the image as it is).
    views: int = AS_BEFORE["views"]
    #: How the image is framed before resizing (``cellembed.cellcrop.CROPS``).
    crop: str = AS_BEFORE["crop"]
    #: Colour normalisation of the decoded image (``cellembed.stain.STAINS``).
    stain: str = AS_BEFORE["stain"]
    #: The network's numeric precision (``cellembed.precision.PRECISIONS``): int8 runs a
    #: quantised copy of the network, whose embeddings are close to fp32's but not the same.
    precision: str = AS_BEFORE["precision"]
    versions: dict[str, str] = field(default_factory=dict, compare=False)
    format: int = SPEC_FORMAT

    @property
    def dim(self) -> int:
        """Total number of floats per image."""
        return sum(t.width for t in self.taps)

    @property
    def tap_names(self) -> list[str]:
        """The taps' layer names, in the embedding's order."""
        return [t.name for t in self.taps]

    @classmethod
    def from_widths(cls, names_widths: Iterable[tuple[str, int]], **kwargs: Any) -> "EmbeddingSpec":
        """Build a spec whose taps are laid out one after another in the given order.

        Parameters
        ----------
        names_widths : iterable of (str, int)
            Each tap's layer name and width, in order.
        **kwargs
            The spec's other fields.

        Returns
        -------
        EmbeddingSpec
            The spec, its taps' offsets computed.
        """
        return cls(taps=tap_layout(names_widths), **kwargs)

    def identity(self) -> dict[str, Any]:
        """The fields that must match for two embeddings to be interchangeable.

        A field added later is left out while it has its "as before" default, so the
        identity (and the shard ids and caches keyed by it) of earlier files stays the same.

        Returns
        -------
        dict
            The spec's fields without ``versions``, ``weights_source`` and ``format``.
        """
        data = self.to_dict()
        for key in ("versions", "weights_source", "format"):
            data.pop(key, None)
        for key, default in LATER_FIELDS.items():
            if data.get(key) == default:
                data.pop(key)
        return data

    def identity_key(self) -> str:
        """The identity as one canonical string.

        Returns
        -------
        str
            Sorted JSON of ``identity``, taps by name (their widths follow from the backbone
            and the pooling).
        """
        data = self.identity()
        data["taps"] = self.tap_names
        return json.dumps(data, sort_keys=True)

    def digest(self) -> str:
        """A short fingerprint of the identity.

        Returns
        -------
        str
            16 hex digits of the SHA-256 of ``identity_key``: stored on every row of an
            embeddings file, so rows of another spec joined into it by hand are found.
        """
        import hashlib

        return hashlib.sha256(self.identity_key().encode()).hexdigest()[:16]

    def differences(self, other: "EmbeddingSpec") -> list[str]:
        """The identity fields that differ from another spec's.

        Parameters
        ----------
        other : EmbeddingSpec
            The spec to compare with.

        Returns
        -------
        list of str
            ``"field: mine vs theirs"`` for each difference (empty when compatible).
        """
        mine, theirs = self.identity(), other.identity()
        for key, default in LATER_FIELDS.items():
            mine.setdefault(key, default)
            theirs.setdefault(key, default)
        # Taps read best as their names; their widths follow from the backbone and pooling,
        # and are compared too (a file whose widths are not its names' is not these embeddings).
        mine["taps"], theirs["taps"] = ",".join(self.tap_names), ",".join(other.tap_names)
        out = []
        for key in mine:
            if mine[key] != theirs.get(key):
                out.append(f"{key}: {_short(mine[key])} vs {_short(theirs.get(key))}")
        widths, other_widths = [t.width for t in self.taps], [t.width for t in other.taps]
        if mine["taps"] == theirs["taps"] and widths != other_widths:
            out.append(f"tap widths: {_short(widths)} vs {_short(other_widths)}")
        return out

    def tap_slices(self, names: Sequence[str] | None = None) -> list[slice]:
        """Column slices of the embedding for some taps.

        Parameters
        ----------
        names : sequence of str, optional
            The taps, in the order wanted (None: all, in the embedding's order).

        Returns
        -------
        list of slice
            One slice of the embedding's columns per tap.

        Raises
        ------
        InputError
            A name that is not a tap of this spec.
        """
        if names is None:
            return [slice(t.offset, t.stop) for t in self.taps]
        by_name = {t.name: t for t in self.taps}
        unknown = [n for n in names if n not in by_name]
        if unknown:
            raise InputError(
                f"unknown tap {', '.join(unknown)}; this file has taps {', '.join(by_name)}"
            )
        return [slice(by_name[n].offset, by_name[n].stop) for n in names]

    def feature_names(self, taps: Sequence[str] | None = None) -> list[str]:
        """One name per embedding dimension: the one place these names are made.

        Parameters
        ----------
        taps : sequence of str, optional
            The taps, in that order (None: all taps).

        Returns
        -------
        list of str
            ``tap:index`` (for example ``add_6:217``) for each dimension of the taps.
        """
        widths = {t.name: t.width for t in self.taps}
        self.tap_slices(taps)  # unknown taps are refused
        return [f"{name}:{i}" for name in (self.tap_names if taps is None else taps) for i in range(widths[name])]

    def to_dict(self) -> dict[str, Any]:
        """The spec as plain JSON values (taps as dicts).

        Returns
        -------
        dict
            Every field, as stored in the Parquet file's metadata.
        """
        data = asdict(self)
        data["taps"] = [asdict(t) for t in self.taps]
        return data

    def to_json(self) -> str:
        """The spec as a JSON string (keys sorted).

        Returns
        -------
        str
            ``to_dict`` in JSON.
        """
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "EmbeddingSpec":
        """A spec from ``to_dict``'s values.

        Parameters
        ----------
        data : dict
            The fields, taps as dicts.

        Returns
        -------
        EmbeddingSpec
            The spec.

        Raises
        ------
        InputError
            A spec of another format than this cellembed reads.
        """
        data = dict(data)
        if data.get("format") != SPEC_FORMAT:
            raise InputError(
                f"embedding spec format {data.get('format')!r} is not supported by this "
                f"cellembed (expects {SPEC_FORMAT}); re-run cellembed extract"
            )
        data["taps"] = tuple(Tap(**t) for t in data["taps"])
        return cls(**data)

    @classmethod
    def from_json(cls, text: str | bytes) -> "EmbeddingSpec":
        """A spec from ``to_json``'s text.

        Parameters
        ----------
        text : str or bytes
            The JSON.

        Returns
        -------
        EmbeddingSpec
            The spec.
        """
        return cls.from_dict(json.loads(text))

    def describe(self) -> str:
        """A summary for people (``cellembed info`` prints it).

        Returns
        -------
        str
            One line per aspect: backbone, weights, taps, dimensions, preprocessing...
        """
        taps = " ".join(f"{t.name}[{t.offset}:{t.stop}]" for t in self.taps)
        versions = ", ".join(f"{k} {v}" for k, v in sorted(self.versions.items()))
        return "\n".join(
            [
                f"backbone       {self.backbone}, input {self.input_size}x{self.input_size}, {self.precision}",
                f"weights        sha256 {self.weights_sha256}"
                + (f" ({self.weights_source})" if self.weights_source else ""),
                f"taps           {taps}",
                f"dimensions     {self.dim} floats per image ({self.pooling} pooling)",
                f"preprocessing  {self.preprocessing}",
                f"resize         {self.resize}",
                f"colour         {self.color}",
                f"image          stain {self.stain}, crop {self.crop}, "
                f"mean of {self.views} view{'s' if self.views != 1 else ''}",
                f"made with      {versions}",
            ]
        )


def tap_layout(names_widths: Iterable[tuple[str, int]]) -> tuple[Tap, ...]:
    """Taps laid out one after another in the given order."""
    taps, offset = [], 0
    for name, width in names_widths:
        taps.append(Tap(name, offset, int(width)))
        offset += int(width)
    return tuple(taps)


def _short(value: Any) -> str:
    text = json.dumps(value) if not isinstance(value, str) else value
    return text if len(text) <= 80 else text[:77] + "..."
