"""Training augmentation and normalisation on whole batches of uint8 tensors (no per-image PIL).

:class:`BatchAugment` takes a uint8 ``[B, H, W, C]`` batch (the in-memory layout of
:class:`~sdedge.data.ImageArrays`, on any device) and returns the normalised float ``[B, C, H, W]``
model input:

1. random crop with zero padding (``padding`` pixels each side; default 4 at 32×32, scaled with the
   image size: 4 for 28×28, 2 for 16×16) and a random horizontal flip (only where the data allows it,
   ``DataSplits.hflip``) — both in one gather over the padded batch;
2. optional AutoAugment (``torchvision.transforms.v2.AutoAugment``, CIFAR-10 policy) on the uint8
   images, one policy draw per image (the only per-image step; costs about 0.1 ms per 32×32 image);
3. scaling to [0, 1] and normalisation with the training split's mean/std;
4. optional Cutout (DeVries & Taylor 2017): one ``length``×``length`` square per image, centred
   anywhere (it may be clipped by the border), set to 0 after normalisation (the mean pixel).

Randomness comes from a ``torch.Generator`` the caller seeds (per epoch), so a resumed run sees the
same augmentations. :func:`normalize` is the evaluation path (no augmentation).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch


def default_padding(image_size: tuple[int, int]) -> int:
    """4 pixels at 32×32 (the CIFAR standard), scaled with the image size (at least 1)."""
    return max(1, int(round(4 * min(image_size) / 32)))


def normalize(batch_nhwc_u8: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """uint8 ``[B, H, W, C]`` -> float ``[B, C, H, W]``, ``(x / 255 - mean) / std``."""
    x = batch_nhwc_u8.permute(0, 3, 1, 2).float().div_(255.0)
    return x.sub_(mean.view(1, -1, 1, 1)).div_(std.view(1, -1, 1, 1))


@dataclass
class AugmentConfig:
    padding: int | None = None  # None: default_padding(image size); 0: no crop
    hflip: bool = True
    cutout: int = 0  # square side in pixels; 0 = off
    autoaugment: bool = False
    random_erasing: float = 0.0  # probability per image of torchvision's RandomErasing (0 = off)


class BatchAugment:
    def __init__(self, cfg: AugmentConfig, image_size: tuple[int, int], mean: list[float], std: list[float]) -> None:
        self.cfg = cfg
        self.h, self.w = image_size
        self.pad = default_padding(image_size) if cfg.padding is None else int(cfg.padding)
        if self.pad < 0:
            raise ValueError(f"crop padding must be >= 0, got {self.pad}")
        if cfg.cutout < 0:
            raise ValueError(f"cutout length must be >= 0, got {cfg.cutout}")
        if not 0.0 <= cfg.random_erasing <= 1.0:
            raise ValueError(f"random erasing probability must be in [0, 1], got {cfg.random_erasing}")
        self.mean = torch.tensor(mean, dtype=torch.float32)
        self.std = torch.tensor(std, dtype=torch.float32)
        self._autoaugment = None
        if cfg.autoaugment:
            from torchvision.transforms import v2

            self._autoaugment = v2.AutoAugment(v2.AutoAugmentPolicy.CIFAR10)
        self._erasing = None
        if cfg.random_erasing > 0:
            from torchvision.transforms import v2

            # torchvision's defaults (Zhong et al. 2020); value 0 is the mean pixel after normalisation
            self._erasing = v2.RandomErasing(p=cfg.random_erasing, scale=(0.02, 0.33), ratio=(0.3, 3.3), value=0)

    def describe(self) -> str:
        parts = [f"crop pad {self.pad}" if self.pad else "no crop", "hflip" if self.cfg.hflip else "no flip"]
        if self.cfg.autoaugment:
            parts.append("AutoAugment(CIFAR10)")
        if self.cfg.cutout:
            parts.append(f"cutout {self.cfg.cutout}")
        if self.cfg.random_erasing:
            parts.append(f"random erasing p={self.cfg.random_erasing:g}")
        return ", ".join(parts)

    def crop_flip(self, x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        """Random crop with zero padding and random horizontal flip, on uint8 ``[B, H, W, C]``."""
        b, h, w, _c = x.shape
        p = self.pad
        flip = (torch.rand(b, generator=gen) < 0.5) if self.cfg.hflip else torch.zeros(b, dtype=torch.bool)
        if p == 0 and not bool(flip.any()):
            return x
        if p:
            x = torch.nn.functional.pad(x, (0, 0, p, p, p, p))  # pads W and H of NHWC
        oy = torch.randint(0, 2 * p + 1, (b,), generator=gen)
        ox = torch.randint(0, 2 * p + 1, (b,), generator=gen)
        ar_h, ar_w = torch.arange(h), torch.arange(w)
        rows = oy[:, None] + ar_h[None, :]  # [B, H]
        cols = torch.where(flip[:, None], ox[:, None] + (w - 1 - ar_w)[None, :], ox[:, None] + ar_w[None, :])
        dev = x.device
        bi = torch.arange(b, device=dev)[:, None, None]
        return x[bi, rows.to(dev)[:, :, None], cols.to(dev)[:, None, :]]

    @staticmethod
    def _per_image(transform, x_nchw: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        """``transform`` on each image; torchvision draws from the global RNG, seeded here from ``gen``."""
        seed = int(torch.randint(0, 2 ** 62, (1,), generator=gen))
        state = torch.random.get_rng_state()
        try:
            torch.manual_seed(seed)
            return torch.stack([transform(img) for img in x_nchw])
        finally:
            torch.random.set_rng_state(state)

    def autoaugment(self, x_nchw: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        return self._per_image(self._autoaugment, x_nchw, gen)

    def cutout(self, x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        b, _c, h, w = x.shape
        half = self.cfg.cutout // 2
        cy = torch.randint(0, h, (b,), generator=gen).to(x.device)
        cx = torch.randint(0, w, (b,), generator=gen).to(x.device)
        ys = torch.arange(h, device=x.device)[None, :]
        xs = torch.arange(w, device=x.device)[None, :]
        in_y = (ys >= (cy[:, None] - half)) & (ys < (cy[:, None] - half + self.cfg.cutout))
        in_x = (xs >= (cx[:, None] - half)) & (xs < (cx[:, None] - half + self.cfg.cutout))
        mask = in_y[:, :, None] & in_x[:, None, :]  # [B, H, W]
        return x.masked_fill(mask[:, None], 0.0)

    def __call__(self, batch_nhwc_u8: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        """uint8 ``[B, H, W, C]`` -> augmented, normalised float ``[B, C, H, W]``."""
        if batch_nhwc_u8.dtype != torch.uint8 or batch_nhwc_u8.ndim != 4:
            raise ValueError(f"expected a uint8 [B, H, W, C] batch, got {batch_nhwc_u8.dtype} {tuple(batch_nhwc_u8.shape)}")
        x = self.crop_flip(batch_nhwc_u8, gen)
        if self._autoaugment is not None:
            x_nchw = self.autoaugment(x.permute(0, 3, 1, 2).cpu(), gen).to(x.device)
            x = x_nchw.permute(0, 2, 3, 1)
        dev = x.device
        x = normalize(x, self.mean.to(dev), self.std.to(dev))
        if self.cfg.cutout:
            x = self.cutout(x, gen)
        if self._erasing is not None:
            x = self._per_image(self._erasing, x, gen)
        return x
