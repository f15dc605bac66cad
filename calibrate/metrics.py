"""Classification metrics on logits in numpy: log-softmax, NLL, accuracy, expected calibration error.

All functions take logits ``[N, C]`` (float) and integer labels ``[N]``; a temperature ``T`` divides
the logits before the softmax. ECE uses equal-width confidence bins over the max probability (15 by
default, the usual choice since Guo et al. 2017): ``sum_b |B_b|/N * |acc(B_b) - conf(B_b)|``.
"""
from __future__ import annotations

import numpy as np

from sdedge.common.errors import InputError

ECE_BINS = 15


def check_logits_labels(logits: np.ndarray, labels: np.ndarray, where: str = "logits") -> tuple[np.ndarray, np.ndarray]:
    """Validate ``[N, C]`` finite logits and ``[N]`` integer labels in ``0..C-1``; return float64/int64 copies."""
    z = np.asarray(logits)
    y = np.asarray(labels)
    if z.ndim != 2 or z.shape[0] == 0 or z.shape[1] < 2:
        raise InputError(f"{where} must be a non-empty [N, C>=2] array, got shape {list(z.shape)}")
    if y.shape != (z.shape[0],):
        raise InputError(f"labels must have shape [{z.shape[0]}] to match {where}, got {list(y.shape)}")
    if not np.issubdtype(y.dtype, np.integer):
        raise InputError(f"labels must be integers, got dtype {y.dtype}")
    if y.min() < 0 or y.max() >= z.shape[1]:
        raise InputError(f"labels must lie in 0..{z.shape[1] - 1}, found {int(y.min())}..{int(y.max())}")
    z = z.astype(np.float64)
    if not np.isfinite(z).all():
        raise InputError(f"{where} contain NaN or Inf values")
    return z, y.astype(np.int64)


def log_softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    z = np.asarray(logits, np.float64) / float(temperature)
    z = z - z.max(axis=-1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=-1, keepdims=True))


def nll(logits: np.ndarray, labels: np.ndarray, temperature: float = 1.0) -> float:
    """Mean negative log-likelihood of the true class under ``softmax(logits / T)``."""
    lp = log_softmax(logits, temperature)
    return float(-lp[np.arange(lp.shape[0]), labels].mean())


def accuracy(logits: np.ndarray, labels: np.ndarray) -> float:
    return float((np.asarray(logits).argmax(axis=-1) == labels).mean())


def ece_from_probs(confidence: np.ndarray, correct: np.ndarray, bins: int = ECE_BINS) -> float:
    """ECE from per-sample confidence (in [0, 1]) and correctness, equal-width bins ``(lo, hi]``."""
    conf = np.asarray(confidence, np.float64)
    corr = np.asarray(correct, np.float64)
    if conf.size == 0:
        return float("nan")
    # bin b holds conf in (b/B, (b+1)/B]; conf == 0 goes to bin 0
    idx = np.clip(np.ceil(conf * bins).astype(np.int64) - 1, 0, bins - 1)
    sum_conf = np.bincount(idx, weights=conf, minlength=bins)
    sum_corr = np.bincount(idx, weights=corr, minlength=bins)
    return float(np.abs(sum_corr - sum_conf).sum() / conf.size)


def ece(logits: np.ndarray, labels: np.ndarray, temperature: float = 1.0, bins: int = ECE_BINS) -> float:
    """Expected calibration error of the max-probability confidence of ``softmax(logits / T)``."""
    p = np.exp(log_softmax(logits, temperature))
    return ece_from_probs(p.max(axis=-1), p.argmax(axis=-1) == labels, bins)
