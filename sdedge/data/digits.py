"""The built-in example: scikit-learn's bundled handwritten digits (1 797 images, 8×8, 10 classes).

Needs no download and no dataset folder, so the quickstart and fast tests run anywhere. Pixels (0-16)
are rescaled to 0-255 and upsampled 2× to 16×16 so four-stage backbones keep some spatial extent.
There is no official test split: a seeded 25 % is held out as test.
"""
from __future__ import annotations

import numpy as np

from .base import ImageArrays


def read(seed: int = 0) -> tuple[ImageArrays, ImageArrays, list[str]]:
    from sklearn.datasets import load_digits

    d = load_digits()
    img = np.clip(np.round(d.images * (255.0 / 16.0)), 0, 255).astype(np.uint8)
    img = img.repeat(2, axis=1).repeat(2, axis=2)[..., None]
    labels = d.target.astype(np.int64)
    perm = np.random.default_rng(seed).permutation(len(labels))
    n_test = len(labels) // 4
    test, train = np.sort(perm[:n_test]), np.sort(perm[n_test:])
    return (ImageArrays(np.ascontiguousarray(img[train]), labels[train]),
            ImageArrays(np.ascontiguousarray(img[test]), labels[test]), [str(i) for i in range(10)])
