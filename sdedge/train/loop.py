"""One training epoch: seeded shuffling and sharding, batch augmentation, AMP, per-iteration LR.

The learning rate (and momentum) is a pure function of training progress (a
:class:`~sdedge.train.schedule.StepSchedule`), set before every step, so resuming needs no scheduler
object: epoch ``e`` of a resumed run sees the same rates as an uninterrupted one. Shuffling and
augmentation are seeded from ``(seed, epoch[, rank])`` for the same reason. An exponential moving
average of the weights (``ema``, torch's ``AveragedModel``) is updated after every optimiser step.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch
from torch import nn

from ..losses import LossBatch, MethodLoss
from ..models import MultiExitNet, MultiExitOutput
from .ddp import DistInfo, shard_permutation
from .evaluate import autocast_context
from .schedule import StepSchedule, steps_per_epoch


def epoch_seed(seed: int, epoch: int, stream: int = 0) -> int:
    return (seed * 1_000_003 + epoch * 7919 + stream * 104_729) % (2 ** 63 - 1)


class TrainForward(nn.Module):
    """The module the optimiser step runs (and DDP wraps).

    ``deepest_only`` skips the shallow exit heads entirely (``plain``: no term reads them), so the
    plain baseline pays only for the backbone and its classifier.
    """

    def __init__(self, net: MultiExitNet, deepest_only: bool = False) -> None:
        super().__init__()
        self.net = net
        self.deepest_only = deepest_only

    def forward(self, x: torch.Tensor, return_preacts: bool = False) -> MultiExitOutput:
        if not self.deepest_only:
            return self.net(x, return_preacts=return_preacts)
        for s in self.net.sections:
            x = s(x)
        head = self.net.exits[-1]
        emb = head.embed(x)
        k = self.net.num_exits
        return MultiExitOutput([None] * (k - 1) + [head.fc(emb)], [None] * (k - 1) + [emb])


@dataclass
class EpochStats:
    loss: float
    parts: dict[str, float]
    train_acc: list[float | None]
    lr: float
    seconds: float
    images: int
    steps: int = 0
    extra: dict = field(default_factory=dict)


@dataclass
class EpochInputs:
    images: torch.Tensor  # uint8 [N, H, W, C] (CPU, or on the device)
    labels: torch.Tensor  # int64 [N]
    augment: object  # BatchAugment
    batch_size: int  # per process
    device: torch.device
    channels_last: bool
    amp_dtype: torch.dtype | None


def _average_grads(params: list[torch.Tensor], dist: DistInfo) -> None:
    import torch.distributed as td

    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    flat = torch.cat([g.reshape(-1) for g in grads])
    td.all_reduce(flat, op=td.ReduceOp.SUM)
    flat /= dist.world
    i = 0
    for p in params:
        n = p.numel()
        p.grad = flat[i:i + n].view_as(p).clone()
        i += n


def run_epoch(step_module: nn.Module, loss_fn: MethodLoss, optimizer: torch.optim.Optimizer,
              scaler: torch.amp.GradScaler | None, data: EpochInputs, epoch: int, seed: int, dist: DistInfo,
              schedule: StepSchedule, teacher: nn.Module | None = None, progress_desc: str | None = None,
              frozen_sections: bool = False, ema: nn.Module | None = None) -> EpochStats:
    """Train one epoch; returns the mean loss, its parts and the per-exit training accuracy."""
    dev = data.device
    n = int(data.labels.shape[0])
    g_perm = torch.Generator().manual_seed(epoch_seed(seed, epoch))
    perm = shard_permutation(torch.randperm(n, generator=g_perm), dist)
    g_aug = torch.Generator().manual_seed(epoch_seed(seed, epoch, 1 + dist.rank))
    bs = data.batch_size
    steps = steps_per_epoch(len(perm), bs)
    step_module.train()
    net = step_module.module.net if hasattr(step_module, "module") else step_module.net
    if frozen_sections:
        net.sections.eval()  # frozen backbone: batch-norm statistics stay as trained
    needs_preacts = loss_fn.needs_preacts
    loss_params = [p for p in loss_fn.parameters() if p.requires_grad]
    k = net.num_exits
    correct = torch.zeros(k, dtype=torch.float64, device=dev)
    seen = 0
    loss_sum = torch.zeros((), dtype=torch.float64, device=dev)
    part_sums: dict[str, torch.Tensor] = {}
    lr = schedule.lr(epoch)
    bar = None
    if progress_desc is not None:
        from tqdm import tqdm

        bar = tqdm(total=steps, desc=progress_desc, leave=False, dynamic_ncols=True, unit="step")
    t0 = time.perf_counter()
    for step in range(steps):
        idx = perm[step * bs:(step + 1) * bs] if steps > 1 or len(perm) >= bs else perm
        lr = schedule.apply(optimizer, epoch + step / steps)
        idx_dev = idx.to(data.images.device)
        xb = data.images.index_select(0, idx_dev)
        yb = data.labels.index_select(0, idx_dev).to(dev, non_blocking=True)
        x = data.augment(xb, g_aug).to(dev, non_blocking=True)
        if data.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with autocast_context(dev, data.amp_dtype):
            t_out = None
            if teacher is not None:
                with torch.no_grad():
                    t_out = teacher(x, return_preacts=needs_preacts)
            out = step_module(x, return_preacts=needs_preacts)
            loss, parts = loss_fn(LossBatch(out, yb, t_out))
        if not torch.isfinite(loss):
            from .config import TrainConfigError

            raise TrainConfigError(f"the loss became {loss.item()} at epoch {epoch + 1}, step {step + 1}; "
                                   f"lower the learning rate (now {lr:g}) or check the loss weights")
        optimizer.zero_grad(set_to_none=True)
        use_scaler = scaler is not None and scaler.is_enabled()
        (scaler.scale(loss) if use_scaler else loss).backward()
        if dist.enabled and loss_params:
            _average_grads(loss_params, dist)  # DDP syncs the network; the loss's connectors are ours to sync
        if use_scaler:
            scaler.step(optimizer)
            scaler.update()
        else:
            optimizer.step()
        if ema is not None:
            ema.update_parameters(net)
        with torch.no_grad():
            b = int(yb.shape[0])
            seen += b
            loss_sum += loss.detach().double() * b
            for name, v in parts.items():
                part_sums[name] = part_sums.get(name, 0) + v.double() * b
            for j, z in enumerate(out.logits):
                if z is not None:
                    correct[j] += (z.argmax(1) == yb).sum()
        if bar is not None:
            if step % 10 == 0 or step == steps - 1:
                acc = [f"{(c / seen):.3f}" for j, c in enumerate(correct.tolist()) if out.logits[j] is not None]
                bar.set_postfix_str(f"loss {loss_sum.item() / seen:.3f} acc {'/'.join(acc)} lr {lr:.3g}", refresh=False)
            bar.update(1)
    if dist.enabled:
        from .ddp import all_reduce_sum

        names = sorted(part_sums)
        packed = torch.stack([loss_sum, torch.tensor(float(seen), dtype=torch.float64, device=dev),
                              *[part_sums[nm] for nm in names], *correct])
        packed = all_reduce_sum(packed, dist)
        loss_sum, seen = packed[0], int(packed[1].item())
        part_sums = {nm: packed[2 + i] for i, nm in enumerate(names)}
        correct = packed[2 + len(names):]
    seconds = time.perf_counter() - t0
    if bar is not None:
        bar.close()
    used = [out.logits[j] is not None for j in range(k)]
    acc = [float(c / max(seen, 1)) if u else None for c, u in zip(correct.tolist(), used)]
    return EpochStats(float(loss_sum.item() / max(seen, 1)),
                      {kk: float(v.item() / max(seen, 1)) for kk, v in part_sums.items()}, acc, lr, seconds,
                      seen, steps)
