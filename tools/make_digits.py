"""Generate sdeflow/data/digits.npz from scikit-learn's copy of the UCI optdigits 8x8 images (run once).

scikit-learn is needed only here, never at run time. The file holds
    images  uint8 [1797, 8, 8], grey levels 0..16 (17 levels),
    labels  uint8 [1797], the digit 0..9,
    train   int64 indices of the training split, test  int64 indices of the test split,
with the split fixed by a seeded permutation (numpy PCG64, seed 0): the last 297 images (about 1/6) are the test set.

    python tools/make_digits.py
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from sklearn.datasets import load_digits

N_TEST = 297
SEED = 0


def main() -> None:
    digits = load_digits()
    images = digits.images.astype(np.uint8)  # values 0..16 stored as floats by scikit-learn
    if not np.array_equal(images, digits.images) or images.max() != 16:
        raise RuntimeError("unexpected digits data: levels are not integers in 0..16")
    perm = np.random.Generator(np.random.PCG64(SEED)).permutation(len(images))
    out = Path(__file__).resolve().parent.parent / "sdeflow" / "data" / "digits.npz"
    np.savez_compressed(
        out,
        images=images,
        labels=digits.target.astype(np.uint8),
        train=np.sort(perm[:-N_TEST]).astype(np.int64),
        test=np.sort(perm[-N_TEST:]).astype(np.int64),
    )
    print(f"wrote {out} ({out.stat().st_size} bytes): {len(images) - N_TEST} train, {N_TEST} test")


if __name__ == "__main__":
    main()
