"""Per-exit and ensemble top-1 accuracy of a multi-exit model, on in-memory splits or a checkpoint.

The *ensemble* is the mean of every exit's softmax (the BYOT paper's ensemble). Inputs are
normalised with the checkpoint's stored mean/std (``meta["data"]["preprocess"]``), never recomputed,
so ``sdedge eval`` sees exactly what training and the exported bundle see. ``evaluate_checkpoint``
rebuilds the same validation hold-out as training from the checkpoint's
:class:`~sdedge.common.datasets.DataSpec` (dataset name, ``val_size``, ``seed``, ``limit``).
"""
from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..data.augment import normalize
from ..common.errors import DataError
from .ddp import DistInfo, all_reduce_sum, shard_range

SPLITS = ("val", "test")


def as_tensor(a: np.ndarray) -> torch.Tensor:
    """A tensor sharing ``a``'s memory, or a copy when ``a`` is read-only (IDX files are read zero-copy)."""
    return torch.from_numpy(a if a.flags.writeable else a.copy())


def autocast_context(device: torch.device, amp_dtype: torch.dtype | None):
    if amp_dtype is None or device.type != "cuda":
        return contextlib.nullcontext()
    return torch.autocast(device_type="cuda", dtype=amp_dtype)


def normalized_batches(images: torch.Tensor, mean: list[float], std: list[float], device: torch.device,
                       batch_size: int, channels_last: bool = True, start: int = 0, stop: int | None = None):
    """Yield ``(index, batch)``: uint8 ``[N, H, W, C]`` images ``start..stop`` as normalised NCHW float batches."""
    stop = int(images.shape[0]) if stop is None else stop
    m = torch.tensor(mean, dtype=torch.float32, device=device)
    s = torch.tensor(std, dtype=torch.float32, device=device)
    for i in range(start, stop, batch_size):
        x = normalize(images[i:min(i + batch_size, stop)].to(device, non_blocking=True), m, s)
        yield i, (x.contiguous(memory_format=torch.channels_last) if channels_last else x)


@torch.no_grad()
def evaluate_arrays(model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor, mean: list[float],
                    std: list[float], device: torch.device, batch_size: int = 512, channels_last: bool = True,
                    amp_dtype: torch.dtype | None = None, dist: DistInfo | None = None) -> dict[str, Any]:
    """Accuracy of every exit and of the softmax ensemble on uint8 ``[N, H, W, C]`` images.

    Returns ``{"exits": [acc_1, ..., acc_K], "ensemble": acc, "n": N}``. Under DDP each process
    evaluates a contiguous shard and the counts are summed, so every process returns the same numbers.
    """
    was_training = model.training
    model.eval()
    n = int(images.shape[0])
    start, stop = shard_range(n, dist) if dist is not None else (0, n)
    k = model.num_exits
    correct = torch.zeros(k + 1, dtype=torch.float64, device=device)
    try:
        for i, x in normalized_batches(images, mean, std, device, batch_size, channels_last, start, stop):
            yb = labels[i:min(i + batch_size, stop)].to(device, non_blocking=True)
            with autocast_context(device, amp_dtype):
                out = model(x)
            probs = 0
            for j, z in enumerate(out.logits):
                z = z.float()
                correct[j] += (z.argmax(1) == yb).sum()
                probs = probs + torch.softmax(z, 1)
            correct[k] += (probs.argmax(1) == yb).sum()
    finally:
        model.train(was_training)
    if dist is not None:
        correct = all_reduce_sum(correct, dist)
    acc = (correct / max(n, 1)).tolist()
    return {"exits": [round(a, 6) for a in acc[:k]], "ensemble": round(acc[k], 6), "n": n}


def format_table(accuracy: dict[str, dict | None], title: str | None = None) -> str:
    """A plain-text table: one row per split, one column per exit, then the ensemble."""
    rows = [(name, acc) for name, acc in accuracy.items() if acc]
    if not rows:
        return "(no accuracy)"
    k = len(rows[0][1]["exits"])
    head = ["split", *[f"exit {i + 1}" for i in range(k)], "ensemble", "n"]
    lines = [head] + [[name, *[f"{a:.4f}" for a in acc["exits"]], f"{acc['ensemble']:.4f}", str(acc.get("n", ""))]
                      for name, acc in rows]
    widths = [max(len(r[c]) for r in lines) for c in range(len(head))]
    out = [("  ".join(v.rjust(w) if c else v.ljust(w) for c, (v, w) in enumerate(zip(r, widths)))) for r in lines]
    out.insert(1, "  ".join("-" * w for w in widths))
    if title:
        out.insert(0, title)
    return "\n".join(out)


def format_deltas(results: dict[str, dict], method: str = "byot", baselines: tuple[str, ...] = ("plain", "dsn"),
                  label_width: int = 11) -> list[str]:
    """Rows of ``method`` minus each baseline present in ``results`` (test accuracy per exit, then ensemble),
    in the column layout of the benchmarks' side-by-side tables (9 characters per exit, 10 for the ensemble)."""
    if method not in results:
        return []
    mine = results[method]["test"]
    rows = []
    for base in [b for b in baselines if b in results]:
        ref = results[base]["test"]
        d = [a - b for a, b in zip(mine["exits"], ref["exits"])]
        rows.append(f"{method + '-' + base:<{label_width}}" + "".join(f"{v:>+9.4f}" for v in d)
                    + f"{mine['ensemble'] - ref['ensemble']:>+10.4f}")
    return rows


def splits_for_checkpoint(meta: dict, data: str | os.PathLike | None = None, download: bool = False):
    """Load the dataset a checkpoint was trained on, with the same validation hold-out.

    The folder: ``data``, else the one training used (``meta['hparams']['data']``) if it still exists,
    else ``SDEDGE_DATA`` / the dataset's default place.
    """
    from ..data import checkpoint_data_spec, splits_for_spec

    spec = checkpoint_data_spec(meta)
    if spec is None:
        raise DataError("checkpoint metadata does not name its dataset (meta['data']['dataset'])")
    hp = meta.get("hparams") or {}
    if data is None and hp.get("data") and Path(hp["data"]).is_dir():
        data = hp["data"]  # where training read it, when that folder is still there
    return splits_for_spec(spec, data, download)


def evaluate_checkpoint(checkpoint: str | os.PathLike, split: str = "test", data: str | os.PathLike | None = None,
                        batch_size: int = 512, device: str = "auto", download: bool = False,
                        channels_last: bool = True) -> dict[str, dict]:
    """Per-exit and ensemble top-1 of a checkpoint on ``split`` ('val', 'test' or 'both'), no training.

    Returns ``{split_name: {"exits": [...], "ensemble": x, "n": N}}``.
    """
    from ..checkpoint import load_checkpoint, model_from_checkpoint
    from .ddp import resolve_device

    if split not in (*SPLITS, "both"):
        raise DataError(f"split must be 'val', 'test' or 'both', got {split!r}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise DataError(f"batch_size must be a positive integer, got {batch_size!r}")
    ckpt = load_checkpoint(checkpoint)
    model = model_from_checkpoint(ckpt)
    dev = resolve_device(device)
    model.to(dev)
    if channels_last:
        model.to(memory_format=torch.channels_last)
    splits = splits_for_checkpoint(ckpt.meta, data, download)
    pre = ckpt.meta["data"].get("preprocess") or splits.preprocess_json()
    if len(ckpt.meta.get("classes", [])) != model.num_classes:
        raise DataError(f"checkpoint lists {len(ckpt.meta.get('classes', []))} classes but its model has "
                        f"{model.num_classes} outputs")
    out: dict[str, dict] = {}
    for name in (SPLITS if split == "both" else (split,)):
        arr = splits.split(name)
        if len(arr) == 0:
            raise DataError(f"split {name!r} is empty (validation size 0?)")
        if int(np.max(arr.labels)) >= model.num_classes:
            raise DataError(f"{name} labels reach {int(np.max(arr.labels))} but the model has {model.num_classes} classes")
        out[name] = evaluate_arrays(model, as_tensor(arr.images), as_tensor(arr.labels),
                                    pre["mean"], pre["std"], dev, batch_size, channels_last)
    return out
