"""MACs and parameters of each exit's path through a :class:`~sdedge.models.MultiExitNet` (torch side).

Exit ``k``'s path is sections ``1..k`` plus exit head ``k``: what the runtime computes to answer at that
exit. MACs follow the convention of ``export/macs.py`` (which counts the exported ONNX graphs):
convolutions ``output elements × in/groups × kernel area``, linear layers ``in × out``, everything else 0;
per sample, batch 1. Counted with forward hooks on one forward pass, so pruned widths are what is seen.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


@dataclass
class ExitCost:
    index: int  # 1-based exit
    macs: int  # sections 1..index + exit head index
    params: int  # parameters on that path
    section_macs: int  # section ``index`` alone
    head_macs: int  # exit head ``index`` alone

    def to_json(self) -> dict:
        return {"exit": self.index, "macs": self.macs, "params": self.params, "section_macs": self.section_macs,
                "head_macs": self.head_macs}

    @classmethod
    def from_json(cls, d: dict) -> "ExitCost":
        return cls(d["exit"], d["macs"], d["params"], d["section_macs"], d["head_macs"])


def _module_macs(net: nn.Module, x: torch.Tensor) -> dict[int, int]:
    macs: dict[int, int] = {}

    def hook(m: nn.Module, args, out) -> None:
        if isinstance(m, nn.Conv2d):
            k = m.kernel_size[0] * m.kernel_size[1]
            macs[id(m)] = macs.get(id(m), 0) + int(out[0].numel()) * (m.in_channels // m.groups) * k
        elif isinstance(m, nn.Linear):
            macs[id(m)] = macs.get(id(m), 0) + m.in_features * m.out_features

    handles = [m.register_forward_hook(hook) for m in net.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    was_training = net.training
    net.eval()
    try:
        with torch.no_grad():
            net(x)
    finally:
        for h in handles:
            h.remove()
        net.train(was_training)
    return macs


def _sum(module: nn.Module, macs: dict[int, int]) -> tuple[int, int]:
    return (sum(macs.get(id(m), 0) for m in module.modules()),
            sum(p.numel() for p in module.parameters()))


def exit_costs(net: nn.Module, in_channels: int, image_size: tuple[int, int]) -> list[ExitCost]:
    """MACs and parameters per exit path of ``net`` for one ``in_channels × image_size`` image."""
    p = next(net.parameters())
    x = torch.zeros(1, in_channels, *image_size, device=p.device, dtype=p.dtype)
    macs = _module_macs(net, x)
    out, path_macs, path_params = [], 0, 0
    for k, (section, head) in enumerate(zip(net.sections, net.exits), start=1):
        sm, sp = _sum(section, macs)
        hm, hp = _sum(head, macs)
        path_macs += sm
        path_params += sp
        out.append(ExitCost(k, path_macs + hm, path_params + hp, sm, hm))
    return out
