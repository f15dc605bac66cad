"""Structured channel pruning of a multi-exit network with Torch-Pruning's dependency graph.

:func:`prune_network` removes whole channels (filters and everything that reads them: BN, the next
convolutions, residual partners) from the backbone and the exit heads, so the result is a smaller dense
network with the same sections, the same exits and the same output shapes. Torch-Pruning
(``torch-pruning`` on PyPI) finds the coupled layers (the residual stream of a ResNet stage, a depthwise
convolution and its producer) and prunes them together.

What is kept: every exit's classifier (its output is the class count), and the output width of the
shallow exit heads' last convolution, which must equal the deepest exit's feature width (BYOT's hint
loss compares those features): after Torch-Pruning, each shallow head's last convolution is cut to the
deepest width, dropping its weakest (smallest L2 norm) filters.

Importance (``importance``): ``magnitude`` (L2 norm of each channel group's weights), ``bn`` (the BN
scale |γ|, network-slimming style), ``taylor`` (first-order Taylor ``|w · ∂L/∂w|``, gradients of the
cross-entropy of every exit on a batch of images). ``steps`` > 1 prunes in that many equal steps,
re-estimating importance on the partly pruned network each time (and calling ``between_steps``, where
the caller may fine-tune).

Targets: ``target_macs`` is the fraction of the deepest exit's MACs to keep (its path: every section and
the final classifier); one uniform ratio per layer group is found by bisection. ``section_macs`` gives
instead a fraction per section (``[1.0, 0.5, 0.5, 0.5]`` keeps exit 1's section whole), found section by
section. Pruning is per layer group (``global_pruning=False``), so the channel counts depend only on the
ratios, not on the importance: the search runs on copies with magnitude importance, the real pruning once.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field, replace
from typing import Any, Callable

import torch
from torch import nn

from ..common.errors import SdedgeError
from ..models import MultiExitNet
from ..models.reshape import refresh_section_channels
from .macs import ExitCost, exit_costs

IMPORTANCES = ("magnitude", "bn", "taylor")
MAX_RATIO = 0.95  # never remove more than 95 % of a layer group's channels
TOLERANCE = 0.01  # bisection stops within 1 % of the MAC target


class PruneError(SdedgeError, ValueError):
    """A pruning setting is out of range, or the target cannot be reached."""


@dataclass
class PruneSettings:
    target_macs: float | None = 0.5  # fraction of the deepest exit's MACs to keep
    section_macs: list[float] | None = None  # or a fraction per section (overrides target_macs)
    importance: str = "magnitude"  # magnitude | bn | taylor
    steps: int = 1  # 1: one shot; N: N equal steps, importance re-estimated in between
    round_to: int | None = None  # channel counts multiple of this (e.g. 8 for tensor cores / INT8 kernels)

    def check(self, num_sections: int) -> None:
        if self.importance not in IMPORTANCES:
            raise PruneError(f"unknown importance {self.importance!r}; expected one of {', '.join(IMPORTANCES)}")
        if not isinstance(self.steps, int) or self.steps < 1:
            raise PruneError(f"steps must be a positive integer, got {self.steps!r}")
        if self.round_to is not None and self.round_to < 1:
            raise PruneError(f"round_to must be >= 1, got {self.round_to}")
        if self.section_macs is not None:
            if len(self.section_macs) != num_sections:
                raise PruneError(f"section MAC targets need one fraction per section ({num_sections}), "
                                 f"got {len(self.section_macs)}")
            if any(not (0 < f <= 1) for f in self.section_macs):
                raise PruneError(f"section MAC fractions must be in (0, 1], got {self.section_macs}")
        elif self.target_macs is None or not (0 < self.target_macs <= 1):
            raise PruneError(f"the MAC target must be a fraction in (0, 1], got {self.target_macs}")

    def to_json(self) -> dict:
        return {"target_macs": self.target_macs if self.section_macs is None else None,
                "section_macs": self.section_macs, "importance": self.importance, "steps": self.steps,
                "round_to": self.round_to}


@dataclass
class PruneReport:
    settings: PruneSettings
    ratios: list[float]  # channel pruning ratio per section
    before: list[ExitCost]
    after: list[ExitCost]
    section_channels_before: list[int] = field(default_factory=list)
    section_channels_after: list[int] = field(default_factory=list)

    @property
    def warning(self) -> str | None:
        """Set when the deepest exit's MACs ended more than 5 % from the target (coarse channel steps)."""
        t = self.settings.target_macs
        if self.settings.section_macs is not None or t is None or abs(self.macs_kept - t) <= 0.05 * t:
            return None
        return (f"kept {self.macs_kept:.1%} of the MACs for a target of {t:.0%}: the nearest the channel steps allow"
                + (f" with --round-to {self.settings.round_to}" if self.settings.round_to else ""))

    @property
    def macs_kept(self) -> float:
        """Deepest exit's MACs after ÷ before."""
        return self.after[-1].macs / self.before[-1].macs

    def to_json(self) -> dict:
        return {"settings": self.settings.to_json(), "ratios": [round(r, 4) for r in self.ratios],
                "macs_kept": round(self.macs_kept, 4), "warning": self.warning,
                "exits_before": [c.to_json() for c in self.before], "exits_after": [c.to_json() for c in self.after],
                "section_channels_before": self.section_channels_before,
                "section_channels_after": self.section_channels_after}

    def table(self) -> str:
        rows = ["exit  MACs before   MACs after  kept   params before  params after"]
        for b, a in zip(self.before, self.after):
            rows.append(f"{b.index:>4}  {b.macs / 1e6:>10.2f}M {a.macs / 1e6:>10.2f}M  {a.macs / b.macs:>4.0%}  "
                        f"{b.params / 1e6:>12.3f}M {a.params / 1e6:>12.3f}M")
        return "\n".join(rows)


def _tp() -> Any:
    try:
        import torch_pruning
    except ImportError:
        raise PruneError("pruning needs Torch-Pruning: pip install torch-pruning "
                         "(or pip install 'sdedge[train]')") from None
    return torch_pruning


def _forward(model: nn.Module, x: torch.Tensor) -> list[torch.Tensor]:
    return model.forward_exits(x)


def _feature_conv(head: nn.Module) -> nn.Conv2d | None:
    """The last convolution of an exit head whose outputs are the head's pooled feature (None: none such)."""
    fc = getattr(head, "fc", None)
    convs = [m for m in head.modules() if isinstance(m, nn.Conv2d)]
    if fc is None or not convs or convs[-1].out_channels != fc.in_features:
        return None
    return convs[-1]


def _importance(tp: Any, name: str) -> Any:
    if name == "magnitude":
        return tp.importance.GroupMagnitudeImportance(p=2)
    if name == "bn":
        return tp.importance.BNScaleImportance()
    return tp.importance.GroupTaylorImportance()


def _grouped(net: nn.Module) -> dict[nn.Module, int]:
    """Grouped (not depthwise) convolutions: Torch-Pruning keeps their channels per group."""
    return {m: m.groups for m in net.modules()
            if isinstance(m, nn.Conv2d) and m.groups > 1 and not (m.groups == m.in_channels == m.out_channels)}


def _match_head_widths(tp: Any, net: MultiExitNet, example: torch.Tensor) -> None:
    """Cut each shallow head's feature convolution to the deepest exit's feature width (weakest filters first)."""
    width = net.exits[-1].fc.in_features
    todo = []
    for head in net.exits[:-1]:
        conv = _feature_conv(head)
        if conv is not None and conv.out_channels > width:
            norms = conv.weight.detach().flatten(1).norm(dim=1)
            todo.append((conv, norms.argsort()[: conv.out_channels - width].tolist()))
    if not todo:
        return
    dg = tp.DependencyGraph().build_dependency(net, example_inputs=example, forward_fn=_forward)
    for conv, idxs in todo:
        group = dg.get_pruning_group(conv, tp.prune_conv_out_channels, idxs=idxs)
        if dg.check_pruning_group(group):
            group.prune()


def _apply(net: MultiExitNet, ratios: list[float], settings: PruneSettings, example: torch.Tensor,
           grad_batch: Callable[[MultiExitNet], None] | None = None,
           between_steps: Callable[[MultiExitNet, int], None] | None = None) -> None:
    tp = _tp()
    ignored: list[nn.Module] = [e.fc for e in net.exits if hasattr(e, "fc")]
    ignored += [c for c in (_feature_conv(h) for h in net.exits[:-1]) if c is not None]
    ratio_dict = {}
    for section, head, r in zip(net.sections, net.exits, ratios):
        ratio_dict[section] = r
        ratio_dict[head] = r
    pruner = tp.pruner.MetaPruner(
        net, example, importance=_importance(tp, settings.importance), global_pruning=False, pruning_ratio=0.0,
        pruning_ratio_dict=ratio_dict, max_pruning_ratio=MAX_RATIO, iterative_steps=settings.steps,
        ignored_layers=ignored, round_to=settings.round_to, forward_fn=_forward,
        in_channel_groups=_grouped(net), out_channel_groups=_grouped(net))
    for step in range(settings.steps):
        if settings.importance == "taylor":
            if grad_batch is None:
                raise PruneError("taylor importance needs images to take gradients on")
            net.zero_grad()
            grad_batch(net)
        pruner.step()
        if between_steps is not None and step + 1 < settings.steps:
            # a consistent network for the caller (heads' features as wide as the deepest exit's, channel
            # bookkeeping current), so it can be saved, loaded and trained like a finished one
            _match_head_widths(tp, net, example)
            _refresh_channels(net, example)
            between_steps(net, step + 1)
    net.zero_grad(set_to_none=True)
    _match_head_widths(tp, net, example)


def _geometry(example: torch.Tensor) -> tuple[int, tuple[int, int]]:
    """``(channels, (height, width))`` of an NCHW example batch."""
    return int(example.shape[1]), (int(example.shape[2]), int(example.shape[3]))


def _refresh_channels(net: MultiExitNet, example: torch.Tensor) -> None:
    """``net.section_channels`` after pruning, probed at ``example``'s channels and size."""
    refresh_section_channels(net, *_geometry(example))


def _costs(net: MultiExitNet, example: torch.Tensor) -> list[ExitCost]:
    return exit_costs(net, *_geometry(example))


def _trial(net: MultiExitNet, ratios: list[float], settings: PruneSettings, example: torch.Tensor) -> list[ExitCost]:
    trial = copy.deepcopy(net)
    _apply(trial, ratios, replace(settings, importance="magnitude", steps=1), example)
    return _costs(trial, example)


def _bisect(measure: Callable[[float], float], target: float) -> float:
    """The ratio in [0, MAX_RATIO] whose kept fraction ``measure(ratio)`` is closest to ``target`` (decreasing)."""
    lo, hi = 0.0, MAX_RATIO
    best, best_err = 0.0, abs(measure(0.0) - target)
    for _ in range(14):
        mid = (lo + hi) / 2
        kept = measure(mid)
        if abs(kept - target) < best_err:
            best, best_err = mid, abs(kept - target)
        if best_err <= TOLERANCE * target:
            break
        lo, hi = (mid, hi) if kept > target else (lo, mid)
    return best


def search_ratios(net: MultiExitNet, settings: PruneSettings, example: torch.Tensor) -> list[float]:
    """Per-section channel ratios that meet ``settings``' MAC target (on copies; ``net`` is untouched)."""
    n = net.num_exits
    base = _costs(net, example)
    if settings.section_macs is None:
        target = float(settings.target_macs)
        if target >= 1.0:
            return [0.0] * n
        r = _bisect(lambda r: _trial(net, [r] * n, settings, example)[-1].macs / base[-1].macs, target)
        return [r] * n
    ratios = [0.0] * n
    for _ in range(2):  # sections are coupled (a section's output is the next one's input): two passes
        for i, target in enumerate(settings.section_macs):
            if target >= 1.0:
                ratios[i] = 0.0
                continue

            def kept(r: float, i: int = i) -> float:
                trial = list(ratios)
                trial[i] = r
                return _trial(net, trial, settings, example)[i].section_macs / base[i].section_macs

            ratios[i] = _bisect(kept, target)
    return ratios


def prune_network(net: MultiExitNet, settings: PruneSettings, example: torch.Tensor,
                  grad_batch: Callable[[MultiExitNet], None] | None = None,
                  between_steps: Callable[[MultiExitNet, int], None] | None = None) -> PruneReport:
    """Prune ``net`` in place to ``settings``' target; ``example`` is one input batch (shape only matters).

    ``grad_batch(net)`` runs a forward and backward pass (taylor importance); ``between_steps(net, k)``
    runs after step ``k`` of ``settings.steps`` (fine-tuning between steps)."""
    settings.check(net.num_exits)
    was_training = net.training
    net.eval()
    example = example[:1].detach()
    before = _costs(net, example)
    channels_before = list(net.section_channels)
    ratios = search_ratios(net, settings, example)
    _apply(net, ratios, settings, example, grad_batch, between_steps)
    _refresh_channels(net, example)
    after = _costs(net, example)
    net.train(was_training)
    return PruneReport(settings, ratios, before, after, channels_before, list(net.section_channels))
