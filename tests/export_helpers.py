"""Helpers for the export tests: small checkpoints of any registered backbone, and a quickly trained one.

Checkpoints are written with the real ``sdedge.checkpoint.save_checkpoint`` and the metadata keys the
trainer writes (model config, data + preprocess, classes, method, per-exit accuracies).
"""
from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any

import numpy as np

# how to make each family tiny: every one of these keyword arguments its builder accepts
# (width = stem channels in every family; WRN-10-1; ResNeXt with 2 groups)
_TINY_KW = (("width", 8), ("widen_factor", 1), ("depth", 10), ("cardinality", 2))
_SLOW = ("resnet101", "resnet152")


def tiny_kwargs(name: str) -> dict[str, Any]:
    from sdedge.models import get_backbone

    params = inspect.signature(get_backbone(name)).parameters
    return {k: v for k, v in _TINY_KW if k in params}


def families() -> list[str]:
    """One backbone per registered family (per module), the smallest at tiny widths."""
    import torch

    from sdedge.models import get_backbone, list_backbones

    best: dict[str, tuple[int, str]] = {}
    for name in list_backbones():
        if name in _SLOW:
            continue
        fn = get_backbone(name)
        try:
            bb = fn(in_channels=1, **tiny_kwargs(name))
        except Exception:  # a family that cannot be made tiny is still tested at its defaults below
            bb = fn(in_channels=1)
        n = sum(p.numel() for s in bb.sections for p in s.parameters() if isinstance(p, torch.Tensor))
        mod = fn.__module__
        if mod not in best or n < best[mod][0]:
            best[mod] = (n, name)
    return sorted(name for _, name in best.values())


def randomize_batchnorm(model: Any, seed: int = 0) -> None:
    """Give every BatchNorm non-trivial statistics and affine terms, so folding them is really tested."""
    import torch

    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                n = m.num_features
                m.running_mean.copy_(torch.rand(n, generator=g) - 0.5)
                m.running_var.copy_(torch.rand(n, generator=g) + 0.5)
                if m.affine:
                    m.weight.copy_(torch.rand(n, generator=g) + 0.5)
                    m.bias.copy_(torch.rand(n, generator=g) - 0.5)


def make_checkpoint(path: Path, backbone: str = "tiny", kwargs: dict | None = None, dataset: str = "digits",
                    image_size: tuple[int, int] | None = None, splits: Any = None, seed: int = 0,
                    accuracy: dict | None = None, model: Any = None) -> Path:
    """Write an (untrained, BN-randomised) sdedge checkpoint for ``backbone`` on ``dataset``'s geometry."""
    import torch

    from sdedge.checkpoint import save_checkpoint
    from sdedge.models import ModelConfig, build_model

    if splits is None:
        from sdedge.data import load_splits

        splits = load_splits(dataset)
    hw = tuple(image_size or splits.image_size)
    cfg = ModelConfig(backbone, splits.num_classes, splits.in_channels, hw,
                      backbone_kwargs=tiny_kwargs(backbone) if kwargs is None else kwargs)
    if model is None:
        torch.manual_seed(seed)
        model = build_model(cfg)
        randomize_batchnorm(model, seed)
    k = model.num_exits
    meta = {
        "model": cfg.to_json(),
        "data": {"dataset": dataset, "preprocess": splits.preprocess_json(), "image_size": list(hw),
                 "in_channels": splits.in_channels},
        "classes": list(splits.classes),
        "method": {"name": "dsn"},
        "accuracy": accuracy or {"val": {"exits": [None] * k, "ensemble": None}, "test": {"exits": [None] * k}},
        "epoch": 0,
    }
    return save_checkpoint(path, meta, model.state_dict())


def quick_trained_checkpoint(path: Path, epochs: int = 6, seed: int = 0) -> Path:
    """A tiny 3-exit model trained with CE on every exit on the built-in digits (seconds on one core).

    Used until ``sdedge.train`` exists; then the tests use the ``tiny_checkpoint`` fixture instead.
    """
    import torch

    from sdedge.data import load_splits
    from sdedge.models import ModelConfig, build_model

    s = load_splits("digits")
    cfg = ModelConfig("tiny", s.num_classes, s.in_channels, s.image_size, backbone_kwargs={"width": 8})
    torch.manual_seed(seed)
    model = build_model(cfg)

    def prep(images: np.ndarray) -> torch.Tensor:
        x = images.astype(np.float32).transpose(0, 3, 1, 2) / 255.0
        return torch.from_numpy((x - np.float32(s.mean[0])) / np.float32(s.std[0]))

    x, y = prep(s.train.images), torch.from_numpy(s.train.labels)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    g = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        model.train()
        for idx in torch.randperm(len(x), generator=g).split(64):
            out = model(x[idx])
            loss = sum(torch.nn.functional.cross_entropy(lg, y[idx]) for lg in out.logits)
            opt.zero_grad()
            loss.backward()
            opt.step()
    model.eval()
    acc: dict[str, Any] = {}
    with torch.no_grad():
        for split, arr in (("val", s.val), ("test", s.test)):
            logits = model(prep(arr.images)).logits
            labels = torch.from_numpy(arr.labels)
            acc[split] = {"exits": [float((lg.argmax(1) == labels).float().mean()) for lg in logits],
                          "ensemble": None}
    return make_checkpoint(path, "tiny", {"width": 8}, splits=s, accuracy=acc, model=model)


def trained_checkpoint(request: Any, tmp_path_factory: Any) -> Path:
    """The conftest ``tiny_checkpoint`` (trained by sdedge.train) when the trainer exists, else a quick one."""
    try:
        from sdedge.train import train  # noqa: F401
    except ImportError:
        return quick_trained_checkpoint(tmp_path_factory.mktemp("quick_ckpt") / "tiny.pt")
    return Path(request.getfixturevalue("tiny_checkpoint"))
