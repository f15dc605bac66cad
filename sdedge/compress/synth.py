"""Data-free images: synthesise a training set from a trained network alone (DeepInversion).

Yin et al., *Dreaming to Distill: Data-free Knowledge Transfer via DeepInversion* (CVPR 2020): start
from noise and optimise a batch of inputs so that (1) the teacher classifies each image as the class it
was assigned, and (2) the mean and variance of every BatchNorm layer's input over the batch match that
layer's running statistics (what the training data produced), with image priors (total variation, an
L2 penalty) and random jitter/flip keeping the images natural. The teacher's BN statistics are the
"little metadata" that stands in for the dataset: nothing but the checkpoint is read.

The images are optimised in the model's normalised input space and returned as uint8 ``[N, H, W, C]``
pixels (through the checkpoint's own normalisation), so they feed the trainer as any dataset does.
Labels are the teacher's predictions on the final uint8 images.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..common.errors import SdedgeError
from ..data.augment import normalize


class SynthError(SdedgeError, ValueError):
    """A synthesis setting is out of range."""


@dataclass
class SynthConfig:
    images: int = 2048  # how many to synthesise
    batch_size: int = 128
    iterations: int = 200  # Adam steps per batch (DeepInversion: 2 000 at 224 px; a few hundred do at 32 px)
    lr: float = 0.1
    bn_weight: float = 0.05  # weight of the BN-statistics loss (summed over layers; DeepInversion's ImageNet value)
    first_bn_multiplier: float = 10.0  # DeepInversion weighs the first BN layer more (the image statistics)
    tv_weight: float = 1e-4  # total-variation prior (per-pixel mean of |Δ|²)
    l2_weight: float = 1e-5  # L2 prior on the normalised image
    jitter: int | None = None  # random shift in pixels (None: image side / 14, at least 1)
    flip: bool = True  # random horizontal flips while optimising
    all_exits: bool = True  # the class loss reads every exit (else the deepest only)
    seed: int = 0

    def check(self) -> None:
        if self.images < 1 or self.batch_size < 2 or self.iterations < 1:
            raise SynthError(f"synthesis needs images >= 1, batch size >= 2 and iterations >= 1, got "
                             f"{self.images}, {self.batch_size}, {self.iterations}")
        if self.lr <= 0 or min(self.bn_weight, self.first_bn_multiplier, self.tv_weight, self.l2_weight) < 0:
            raise SynthError("synthesis learning rate must be > 0 and loss weights >= 0")


class _BNStats:
    """Forward hooks: the distance of each BN input's batch statistics to the layer's running ones."""

    def __init__(self, model: nn.Module) -> None:
        self.losses: list[torch.Tensor] = []
        self.handles = [m.register_forward_hook(self._hook) for m in model.modules()
                        if isinstance(m, nn.BatchNorm2d) and m.running_mean is not None]
        if not self.handles:
            raise SynthError("data-free synthesis needs a network with BatchNorm layers (their statistics stand "
                             "in for the data)")

    def _hook(self, m: nn.BatchNorm2d, args, out) -> None:
        x = args[0].float()
        mean = x.mean(dim=(0, 2, 3))
        var = x.permute(1, 0, 2, 3).flatten(1).var(dim=1, unbiased=False)
        self.losses.append(torch.norm(mean - m.running_mean, 2) + torch.norm(var - m.running_var, 2))

    def take(self, first_multiplier: float) -> torch.Tensor:
        losses, self.losses = self.losses, []
        return first_multiplier * losses[0] + sum(losses[1:])

    def close(self) -> None:
        for h in self.handles:
            h.remove()


def _tv(x: torch.Tensor) -> torch.Tensor:
    return ((x[..., 1:, :] - x[..., :-1, :]) ** 2).mean() + ((x[..., :, 1:] - x[..., :, :-1]) ** 2).mean()


def synthesize(model: nn.Module, num_classes: int, in_channels: int, image_size: tuple[int, int],
               mean: list[float], std: list[float], cfg: SynthConfig, device: torch.device | str = "cpu",
               progress: Callable[[int, int], None] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """``cfg.images`` uint8 ``[N, H, W, C]`` images and their int64 labels, synthesised from ``model``.

    ``model`` is a :class:`~sdedge.models.MultiExitNet` (``forward_exits``) or any module returning
    logits; ``mean``/``std`` are its input normalisation in [0, 1] pixel units. Classes are assigned
    round-robin, so every class is represented. ``progress(done, total)`` is called after each batch.
    """
    cfg.check()
    device = torch.device(device)
    g = torch.Generator(device="cpu").manual_seed(cfg.seed)
    was_training = model.training
    model.eval()
    req = [p.requires_grad for p in model.parameters()]
    model.requires_grad_(False)
    m = torch.tensor(mean, dtype=torch.float32, device=device).view(1, -1, 1, 1)
    s = torch.tensor(std, dtype=torch.float32, device=device).view(1, -1, 1, 1)
    lo, hi = (0 - m) / s, (1 - m) / s  # the normalised range of valid pixels
    jitter = cfg.jitter if cfg.jitter is not None else max(1, min(image_size) // 14)
    forward = getattr(model, "forward_exits", None) or (lambda t: [model(t)])
    hooks = _BNStats(model)
    images, labels = [], []
    try:
        for start in range(0, cfg.images, cfg.batch_size):
            n = min(cfg.batch_size, cfg.images - start)
            nb = max(n, 2)  # batch statistics need two images
            y = torch.arange(start, start + nb, device=device) % num_classes
            x = torch.randn((nb, in_channels, *image_size), generator=g).to(device).requires_grad_(True)
            opt = torch.optim.Adam([x], lr=cfg.lr, betas=(0.5, 0.9))
            sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, cfg.iterations)
            for _ in range(cfg.iterations):
                dx, dy = (int(v) for v in torch.randint(-jitter, jitter + 1, (2,), generator=g))
                xi = torch.roll(x, shifts=(dx, dy), dims=(2, 3))
                if cfg.flip and bool(torch.rand(1, generator=g) < 0.5):
                    xi = torch.flip(xi, dims=(3,))
                logits = forward(xi)
                used = logits if cfg.all_exits else logits[-1:]
                loss = sum(F.cross_entropy(z.float(), y) for z in used) / len(used)
                loss = loss + cfg.bn_weight * hooks.take(cfg.first_bn_multiplier)
                loss = loss + cfg.tv_weight * _tv(xi) + cfg.l2_weight * (xi ** 2).mean()
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
                with torch.no_grad():
                    x.copy_(torch.max(torch.min(x, hi), lo))
            with torch.no_grad():
                pix = ((x * s + m).clamp(0, 1) * 255).round().to(torch.uint8)[:n]
                xq = normalize(pix.permute(0, 2, 3, 1), m.flatten(), s.flatten())
                hooks.losses.clear()
                pred = forward(xq)[-1].argmax(1)
                hooks.losses.clear()
            images.append(pix.permute(0, 2, 3, 1).cpu().numpy())
            labels.append(pred.cpu().numpy().astype(np.int64))
            if progress is not None:
                progress(start + n, cfg.images)
    finally:
        hooks.close()
        for p, r in zip(model.parameters(), req):
            p.requires_grad_(r)
        model.train(was_training)
    return np.concatenate(images), np.concatenate(labels)
