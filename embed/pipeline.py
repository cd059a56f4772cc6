"""Decoding images in background threads while the network runs.

PIL decoding and TensorFlow ops release the GIL, so a small thread pool keeps the next
batches ready while the current one goes through Xception. Look-ahead is bounded so memory
stays at a few batches whatever the folder size.
"""

from __future__ import annotations

from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Iterator, Sequence

import numpy as np

from cellembed.decoding import DEFAULT_MAX_PIXELS, DecodedImage, ImageSource, load_for_network
from cellembed.preparation import preparation_for
from cellembed.spec import EmbeddingSpec


@dataclass
class Batch:
    """A batch ready for the network.

    Indices point into the input sequence; ``pixels`` holds the images that decoded,
    stacked as (k, size, size, 3) float32, in the order of ``decoded``; ``failed`` pairs
    each index that did not decode with its reason; ``transient`` holds the failed indices
    whose file could not be read (worth trying again later).
    """

    decoded: list[tuple[int, DecodedImage]]
    failed: list[tuple[int, str]]
    pixels: np.ndarray
    transient: set[int] = field(default_factory=set)


def decoded_batches(
    paths: Sequence[ImageSource],
    spec: EmbeddingSpec,
    batch_size: int,
    workers: int = 2,
    lookahead_batches: int = 2,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
) -> Iterator[Batch]:
    """Yield batches of images decoded, prepared as ``spec`` says (colour normalisation,
    crop: :func:`cellembed.preparation.preparation_for`) and resized to its input size, in
    input order (an image of more than ``max_pixels`` pixels fails, see
    :func:`~cellembed.decoding.load_for_network`)."""
    size, prepare = spec.input_size, preparation_for(spec)
    pending: deque[tuple[int, Future]] = deque()
    limit = batch_size * (lookahead_batches + 1)
    next_index = 0
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="cellembed-decode") as pool:

        def fill() -> None:
            nonlocal next_index
            while next_index < len(paths) and len(pending) < limit:
                pending.append((next_index, pool.submit(load_for_network, paths[next_index], size, max_pixels, prepare)))
                next_index += 1

        fill()
        try:
            yield from _drain(pending, fill, size, batch_size)
        finally:
            # On interruption, drop queued work instead of decoding it.
            for _, future in pending:
                future.cancel()


def _drain(pending, fill, size: int, batch_size: int) -> Iterator[Batch]:
    while pending:
        decoded: list[tuple[int, DecodedImage]] = []
        failed: list[tuple[int, str]] = []
        transient: set[int] = set()
        while pending and len(decoded) + len(failed) < batch_size:
            index, future = pending.popleft()
            result = future.result()
            if result.error is None:
                decoded.append((index, result))
            else:
                failed.append((index, result.error))
                if result.transient:
                    transient.add(index)
            fill()
        if decoded:
            pixels = np.stack([d.pixels for _, d in decoded])
        else:
            pixels = np.zeros((0, size, size, 3), np.float32)
        yield Batch(decoded, failed, pixels, transient)
