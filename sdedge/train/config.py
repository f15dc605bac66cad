"""Training configuration and result dataclasses (one flag of ``sdedge train`` per field).

``TrainConfig`` is stored in every checkpoint as ``meta["hparams"]`` (``dataclasses.asdict``), so
every field stays JSON-able. Loss weights and temperatures default to ``None``: "the method's own
default" (see :mod:`sdedge.losses.methods`); the resolved values go to ``meta["method"]``.

Resume compares the *identity* of two configs: every field except the ones that only say how or where
this invocation runs (:data:`RUN_ONLY_FIELDS`: output folder, data folder, device, AMP, threads,
progress display, ...). A run folder whose ``last.pt`` has another identity is refused.
"""
from __future__ import annotations

import json
from pathlib import Path
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from ..common.errors import SdedgeError

SCHEDULES = ("multistep", "cosine", "onecycle")
SELECTIONS = ("auto", "mean", "deepest", "ensemble")
DEVICES = ("auto", "cpu", "cuda")
RUN_ONLY_FIELDS = frozenset({"output", "data", "download", "device", "amp", "channels_last", "progress", "verbose",
                             "resume", "stop_after", "eval_batch_size", "threads"})


def default_channels_last(device: Any) -> bool:
    """Whether training uses the channels_last memory format when the config leaves it open: on for CUDA
    (tensor cores) and for CPUs with AVX-512 (oneDNN's NHWC kernels), off on other CPUs.

    Why not on every CPU: with torch 2.14.1 on an AVX2-only machine, oneDNN's AVX2 kernel for the weight
    gradients of 1x1 convolutions in channels_last crashed (segmentation fault) or hung in a few of 40
    backward passes of a width-4 ResNet-18 (``tests/test_models.py``); contiguous NCHW ran them all.
    """
    if str(getattr(device, "type", device)).startswith("cuda"):
        return True
    from ..common.hostinfo import cpu_flags

    return bool(cpu_flags().get("avx512f"))


class TrainConfigError(SdedgeError, ValueError):
    """A training option is out of range, inconsistent with the method, or with a resumed run."""


@dataclass
class TrainConfig:
    # data
    dataset: str = "digits"
    data: str | None = None  # dataset folder; None: SDEDGE_DATA or the dataset's default place
    download: bool = False  # CIFAR only, through torchvision's downloader
    val_size: int | None = None  # None: the dataset default (5 000; 200 for digits; 10 % with limit)
    limit: int | None = None  # keep only the first N training (and test) images
    # model
    backbone: str = "resnet18"
    backbone_kwargs: dict = field(default_factory=dict)
    head: str = "bottleneck"
    head_kwargs: dict = field(default_factory=dict)
    init_from: str | None = None  # start from this checkpoint's architecture and weights (a pruned one: its widths);
    # the backbone/head fields above are then ignored
    # method and its weights (None = the method's default)
    method: str = "byot"
    teacher: str | None = None  # checkpoint of the teacher (kd, tfkd-self, feature-kd, logit-l2)
    alpha: float | None = None
    temperature: float | None = None
    hint_weight: float | None = None
    feature_weight: float | None = None
    correct_prob: float | None = None
    deepest_ce_weight: float | None = None  # byot: weight of the deepest exit's CE (1, the authors' code)
    label_smoothing: float | None = None  # plain/dsn: every CE; byot: the shallow exits' CE only (0)
    train_heads_after: int = 0  # plain only: train the shallow heads for N more epochs on the frozen backbone
    # optimisation
    epochs: int = 200
    batch_size: int = 128  # global batch (split across DDP processes)
    lr: float = 0.1
    momentum: float = 0.9  # onecycle: the momentum at the ends of the cycle
    min_momentum: float = 0.85  # onecycle: the momentum at the peak rate (= momentum: no cycling)
    nesterov: bool = False
    weight_decay: float = 5e-4
    schedule: str = "multistep"
    milestones: list[int] | None = None  # None: epochs//2 and 3*epochs//4
    gamma: float = 0.1
    warmup_epochs: float = 0.0  # onecycle: the rising part (0: torch's 30 % of the epochs)
    ema_decay: float = 0.0  # exponential moving average of the weights (0 = off; 0.999 is usual)
    # augmentation
    crop_padding: int | None = None  # None: 4 px at 32x32, scaled with the image size; 0: off
    hflip: bool | None = None  # None: where the dataset allows it
    cutout: int = 0
    autoaugment: bool = False
    random_erasing: float = 0.0  # per-image probability of torchvision's RandomErasing (0 = off)
    # run
    seed: int = 0
    select: str = "auto"  # best.pt criterion on validation: mean of exits | deepest | ensemble | auto
    device: str = "auto"
    amp: bool | None = None  # None: on for CUDA (bf16 where supported, else fp16 + GradScaler); off on CPU
    channels_last: bool | None = None  # None: default_channels_last(device)
    threads: int | None = None  # torch intra-op threads (None: leave torch's default)
    eval_batch_size: int = 512
    output: str = "runs/run"
    resume: bool = True
    stop_after: int | None = None  # run at most N epochs in this invocation (then resume later)
    progress: bool = True
    verbose: bool = True

    def validate(self) -> "TrainConfig":
        from ..losses import get_method

        def bad(msg: str) -> None:
            raise TrainConfigError(msg)

        try:
            spec = get_method(self.method)
        except ValueError as e:
            raise TrainConfigError(str(e)) from None
        if self.epochs < 1:
            bad(f"epochs must be >= 1, got {self.epochs}")
        if self.batch_size < 2:
            bad(f"batch size must be >= 2 (batch norm needs two samples), got {self.batch_size}")
        if self.lr <= 0:
            bad(f"learning rate must be > 0, got {self.lr}")
        if not 0 <= self.momentum < 1:
            bad(f"momentum must be in [0, 1), got {self.momentum}")
        if self.schedule == "onecycle" and not 0 <= self.min_momentum <= self.momentum:
            bad(f"one-cycle min momentum must be in [0, momentum={self.momentum}], got {self.min_momentum}")
        if not 0.0 <= self.ema_decay < 1.0:
            bad(f"EMA decay must be in [0, 1) (0 = off), got {self.ema_decay}")
        if self.weight_decay < 0:
            bad(f"weight decay must be >= 0, got {self.weight_decay}")
        if self.schedule not in SCHEDULES:
            bad(f"schedule must be one of {SCHEDULES}, got {self.schedule!r}")
        if self.milestones is not None and any(not 0 < m < self.epochs for m in self.milestones):
            bad(f"milestones must lie in 1..{self.epochs - 1}, got {self.milestones}")
        if not 0 < self.gamma <= 1:
            bad(f"gamma must be in (0, 1], got {self.gamma}")
        if self.warmup_epochs < 0 or self.warmup_epochs >= self.epochs:
            bad(f"warmup epochs must be in [0, epochs), got {self.warmup_epochs}")
        if self.select not in SELECTIONS:
            bad(f"select must be one of {SELECTIONS}, got {self.select!r}")
        if self.device not in DEVICES and not self.device.startswith("cuda:"):
            bad(f"device must be one of {DEVICES} (or cuda:N), got {self.device!r}")
        if self.train_heads_after < 0:
            bad(f"train_heads_after must be >= 0, got {self.train_heads_after}")
        if self.train_heads_after and self.method != "plain":
            bad("--train-heads-after only applies to --method plain (the other methods train every exit)")
        if spec.needs_teacher and not self.teacher:
            bad(f"method {self.method!r} needs a teacher checkpoint: pass --teacher CKPT")
        if self.teacher and not spec.needs_teacher:
            bad(f"method {self.method!r} does not use a teacher; --teacher is for "
                "kd, tfkd-self, feature-kd, logit-l2 and distill")
        if self.init_from is not None and not Path(self.init_from).is_file():
            bad(f"--init-from {self.init_from}: no such checkpoint file")
        if not 0.0 <= self.random_erasing <= 1.0:
            bad(f"random erasing probability must be in [0, 1], got {self.random_erasing}")
        if self.limit is not None and self.limit < 10:
            bad(f"limit must be >= 10 images, got {self.limit}")
        if self.stop_after is not None and self.stop_after < 1:
            bad(f"stop_after must be >= 1, got {self.stop_after}")
        if self.eval_batch_size < 1:
            bad(f"eval batch size must be >= 1, got {self.eval_batch_size}")
        try:
            self.method_params()
        except ValueError as e:
            raise TrainConfigError(str(e)) from None
        try:
            json.dumps(asdict(self), allow_nan=False)
        except (TypeError, ValueError) as e:
            bad(f"training config must be JSON-able (backbone/head kwargs hold plain values): {e}")
        return self

    def method_params(self) -> dict:
        """The method's weights and temperatures: its defaults overridden by the fields set here."""
        from ..losses import PARAM_NAMES, get_method

        spec = get_method(self.method)
        given = {k: getattr(self, k) for k in PARAM_NAMES}
        ignored = [k for k, v in given.items() if v is not None and k not in spec.defaults]
        if ignored:
            raise ValueError(f"method {self.method!r} has no parameter(s) {ignored}; it uses "
                             f"{sorted(spec.defaults) or 'none'}")
        return spec.resolve(**given)

    def total_epochs(self) -> int:
        return self.epochs + self.train_heads_after

    def resolved_milestones(self) -> list[int]:
        if self.milestones is not None:
            return sorted(int(m) for m in self.milestones)
        e = self.epochs
        return sorted({m for m in (e // 2, 3 * e // 4) if 0 < m < e})

    def identity(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if k not in RUN_ONLY_FIELDS}

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


@dataclass
class TrainResult:
    best_checkpoint: str
    last_checkpoint: str
    metrics: dict  # {"val": {"exits": [...], "ensemble": x, "n": N}, "test": {...}} of best.pt
    history: list[dict]  # one entry per epoch: loss, lr, train/val accuracy per exit, seconds
    best_epoch: int = 0  # 1-based
    selection: str = "mean"
    epochs_done: int = 0
    completed: bool = True  # False when stop_after ended this invocation early
    results_json: str | None = None
