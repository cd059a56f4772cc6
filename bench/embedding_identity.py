"""Are two embeddings files the same embeddings? Prints the largest absolute difference.

Used to check that a change of the network code (engines, pooling, views) leaves the
embeddings as they were: extract the same folder with the old and the new code (or with
both engines) and compare::

    python bench/embedding_identity.py old.parquet new.parquet [more.parquet ...]

Every file is compared with the first, row by row (matched on ``path``); their specs must
have the same identity.
"""

from __future__ import annotations

import argparse

import numpy as np


def main() -> None:
    from cellembed import embedding_matrix, load_embeddings

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("files", nargs="+")
    args = parser.parse_args()
    frame, spec = load_embeddings(args.files[0])
    frame = frame.set_index("path").sort_index()
    reference, _ = embedding_matrix(frame.reset_index(), spec)
    print(f"{args.files[0]}: {len(frame)} images, {spec.dim} floats each; taps {','.join(spec.tap_names)}, "
          f"{spec.views} views, crop {spec.crop}, stain {spec.stain}, {spec.pooling}")
    for other in args.files[1:]:
        theirs, their_spec = load_embeddings(other)
        differences = spec.differences(their_spec)
        if differences:
            raise SystemExit(f"{other}: another spec ({'; '.join(differences)})")
        theirs = theirs.set_index("path").loc[frame.index]
        values, _ = embedding_matrix(theirs.reset_index(), their_spec)
        gap = np.abs(values - reference)
        print(f"{other}: max |difference| {gap.max():.3g} (median {np.median(gap):.2g}; "
              f"largest value {np.abs(reference).max():.3g})")


if __name__ == "__main__":
    main()
