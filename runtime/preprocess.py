"""Turn what a caller hands the runtime into the float32 NCHW batch the first section expects.

Accepted inputs (``C, H, W`` from the manifest's ``input.shape``):

* float (``float16/32/64``), already preprocessed: ``[C, H, W]`` (one image) or ``[N, C, H, W]``;
* raw ``uint8`` pixels in the model's channel order (``manifest.input.preprocess.channel_order``):
  ``[H, W, C]`` (one image) or ``[N, H, W, C]``; for a one-channel model also ``[H, W]`` (one image)
  and ``[N, H, W]``. They become ``(pixel * scale - mean) / std`` per channel, then NCHW.

Anything else (another rank or dtype, wrong channels or size, NaN/Inf, an empty batch or one larger
than ``max_batch``) raises :class:`~sdedge.common.errors.InputError` saying what was expected and what
came. Images are never resized: that is the caller's job (``sdedge run`` does it with Pillow).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ..common.errors import InputError
from .manifest import Manifest

_FLOATS = (np.float16, np.float32, np.float64)


@dataclass(frozen=True)
class Prepared:
    """A validated C-contiguous batch and whether the caller sent a single image: float32 NCHW, or (only when
    asked ``for_core``) the raw uint8 NHWC pixels, which the native core preprocesses itself."""

    batch: np.ndarray
    single: bool


class Preprocessor:
    """Validation and preprocessing bound to one manifest (constants computed once)."""

    def __init__(self, manifest: Manifest, max_batch: int) -> None:
        _, c, h, w = manifest.input.shape
        self.chw = (int(c), int(h), int(w))  # type: ignore[arg-type]
        self.max_batch = int(max_batch)
        pre = manifest.preprocess
        # (pix * scale - mean) / std  ==  pix * a + b, per channel
        std = np.asarray(pre.std, np.float32)
        self._a = (np.float32(pre.scale) / std).astype(np.float32)
        self._b = (-np.asarray(pre.mean, np.float32) / std).astype(np.float32)
        self.channel_order = pre.channel_order

    def expected(self) -> str:
        c, h, w = self.chw
        raw = f"uint8 [H,W,C]=[{h},{w},{c}] or [N,{h},{w},{c}]"
        if c == 1:
            raw += f" (or [{h},{w}] / [N,{h},{w}])"
        return f"float32 [C,H,W]=[{c},{h},{w}] or [N,{c},{h},{w}] (preprocessed), or raw {raw}"

    def __call__(self, x: object, for_core: bool = False) -> Prepared:
        """Validate and preprocess ``x``. ``for_core``: the native core takes the batch, and does what it does
        itself (the same rules and messages, in C++): raw uint8 pixels stay uint8 NHWC (it preprocesses them)
        and float input is not checked for NaN/Inf here (it checks); shapes and sizes are checked alike."""
        if not isinstance(x, np.ndarray):
            if isinstance(x, (list, tuple)) or hasattr(x, "__array__"):
                try:
                    x = np.asarray(x)
                except Exception as e:  # ragged lists and the like
                    raise InputError(f"input could not be converted to an array ({e}); expected {self.expected()}") from None
            else:
                raise InputError(f"input must be a numpy array, got {type(x).__name__}; expected {self.expected()}")
        assert isinstance(x, np.ndarray)
        if x.dtype == np.uint8:
            return self._raw(x, for_core)
        if x.dtype.type in _FLOATS:
            return self._float(x, for_core)
        raise InputError(f"input dtype {x.dtype} is not supported; expected {self.expected()}")

    def _check_batch(self, n: int) -> None:
        if n == 0:
            raise InputError("empty batch: the input has 0 images")
        if n > self.max_batch:
            raise InputError(f"batch of {n} images is larger than max_batch={self.max_batch}; split it or raise max_batch")

    def _float(self, x: np.ndarray, for_core: bool = False) -> Prepared:
        c, h, w = self.chw
        single = x.ndim == 3
        if x.ndim not in (3, 4):
            raise InputError(f"float input has rank {x.ndim} (shape {list(x.shape)}); expected {self.expected()}")
        xb = x[None] if single else x
        if tuple(xb.shape[1:]) != self.chw:
            hint = ""
            if tuple(xb.shape[1:]) == (h, w, c):
                hint = " (it looks like HWC: float inputs must be preprocessed CHW; send uint8 HWC to have it preprocessed)"
            raise InputError(f"float input has shape {list(x.shape)}; expected {self.expected()}{hint}")
        self._check_batch(xb.shape[0])
        out = np.ascontiguousarray(xb, dtype=np.float32)
        if for_core:
            return Prepared(out, single)
        # one reduction on the hot path: a finite sum proves every value finite; otherwise look closely
        with np.errstate(over="ignore"):  # a sum overflowing to Inf only sends us to the exact check
            finite_sum = math.isfinite(float(out.sum()))
        if not finite_sum and not np.isfinite(out).all():
            bad = int(np.size(out) - np.count_nonzero(np.isfinite(out)))
            raise InputError(f"input holds {bad} NaN/Inf value(s); expected finite floats")
        return Prepared(out, single)

    def _raw(self, x: np.ndarray, for_core: bool = False) -> Prepared:
        c, h, w = self.chw
        if x.ndim == 2 and c == 1:
            xb, single = x[None, :, :, None], True
        elif x.ndim == 3 and x.shape == (h, w, c):
            xb, single = x[None], True
        elif x.ndim == 3 and c == 1 and x.shape[1:] == (h, w):
            xb, single = x[..., None], False
        elif x.ndim == 4:
            xb, single = x, False
        else:
            raise InputError(f"uint8 input has shape {list(x.shape)}; expected {self.expected()}")
        if tuple(xb.shape[1:]) != (h, w, c):
            hint = " (it looks like CHW: raw uint8 pixels must be HWC)" if tuple(xb.shape[1:]) == (c, h, w) else ""
            raise InputError(f"uint8 input has shape {list(x.shape)}; expected {self.expected()}{hint}")
        self._check_batch(xb.shape[0])
        if for_core:
            return Prepared(np.ascontiguousarray(xb), single)
        out = xb.astype(np.float32).transpose(0, 3, 1, 2)  # NHWC -> NCHW (a view)
        out = out * self._a[None, :, None, None] + self._b[None, :, None, None]
        return Prepared(np.ascontiguousarray(out, dtype=np.float32), single)
