"""Loss terms, registered by name: each is one weighted component of a training method.

A term is an ``nn.Module`` built by ``build_term(name, ctx, **params)`` and called on a
:class:`LossBatch` (the student's :class:`~sdedge.models.MultiExitOutput`, the labels and, for
teacher methods, the teacher's output). It returns one scalar: the sum over the exits it applies to
of a per-exit loss that is a *mean* over the batch (and over elements for the L2 terms), so no weight
depends on the batch size.

Exits are chosen with ``exits="all" | "deepest" | "shallow"`` (shallow = every exit but the last).

========== ===========================================================================================
term       loss per selected exit ``i`` (``z`` logits, ``f`` pooled features, ``T`` temperature)
========== ===========================================================================================
ce         cross-entropy with the labels
kl         Hinton KD: ``T² · KL(softmax(z_src/T) ‖ softmax(z_i/T))``; ``source="self"`` uses the
           network's own deepest exit (detached: the teacher receives no gradient from its students),
           ``source="teacher"`` the separate teacher's deepest exit, ``source="teacher_exit"`` the
           teacher's exit of the same index (teacher and student have as many exits: pruning recovery)
hint       ``mean((f_i - f_K.detach())²)``: BYOT's L2 hint between an exit's bottleneck feature and the
           deepest feature, averaged per element
partial_l2 Heo et al. 2019 feature distillation on pre-ReLU section outputs: student section → 1×1
           conv + BN connector (when channels differ) → ``(s - t)²`` except where ``s ≤ t ≤ 0``
           (both "off" after the ReLU and the student already below); teacher through Heo's margin
           ReLU (optional); averaged per element, summed over sections
logit_l2   Ba & Caruana: ``mean((z_i - z_teacher)²)``
tfkd_reg   Yuan et al. 2020 virtual teacher: ``q`` = ``a`` on the correct class, ``(1-a)/(C-1)``
           elsewhere, softened as ``q^(1/T)``; ``T² · KL(q_T ‖ softmax(z_i/T))``
========== ===========================================================================================
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from ..common.registry import Registry
from ..models import MultiExitOutput

EXIT_CHOICES = ("all", "deepest", "shallow")
KL_SOURCES = ("self", "teacher", "teacher_exit")


@dataclass
class LossBatch:
    student: MultiExitOutput
    targets: torch.Tensor
    teacher: MultiExitOutput | None = None


@dataclass
class TermContext:
    """What a term may need to build itself: the student and (optional) teacher networks.

    ``*_channels`` are the channels of each section's pre-ReLU tap (``MultiExitNet.preact_channels``,
    what ``forward(x, return_preacts=True).preacts`` holds), not always the section's output channels.
    """

    num_exits: int
    num_classes: int
    student_channels: list[int]
    teacher_channels: list[int] | None = None


TERMS: Registry[Callable[..., "Term"]] = Registry("loss term")


def register_term(name: str) -> Callable:
    """Register a :class:`Term` subclass under ``name`` (its ``__init__(ctx, **params)``)."""

    def deco(cls):
        cls.term_name = name
        return TERMS.add(name, cls)

    return deco


def list_terms() -> list[str]:
    return TERMS.names()


def build_term(name: str, ctx: TermContext, **params) -> "Term":
    return TERMS.get(name)(ctx, **params)


def select_exits(which: str, num_exits: int) -> list[int]:
    if which == "all":
        return list(range(num_exits))
    if which == "deepest":
        return [num_exits - 1]
    if which == "shallow":
        return list(range(num_exits - 1))
    raise ValueError(f"exits must be one of {EXIT_CHOICES}, got {which!r}")


def kl_at_temperature(student_logits: torch.Tensor, teacher_probs_t: torch.Tensor, temperature: float) -> torch.Tensor:
    """``T² · KL(p_teacher,T ‖ softmax(z/T))`` averaged over the batch (float32 for AMP safety)."""
    log_p = F.log_softmax(student_logits.float() / temperature, dim=1)
    return F.kl_div(log_p, teacher_probs_t.float(), reduction="batchmean") * temperature ** 2


class Term(nn.Module):
    term_name = "?"
    needs_teacher = False
    needs_preacts = False  # pre-ReLU section outputs of the student and the teacher

    def __init__(self, ctx: TermContext, exits: str) -> None:  # each term sets its own default exits
        super().__init__()
        self.exits = select_exits(exits, ctx.num_exits)
        self.exits_name = exits

    def extra_repr(self) -> str:
        return f"exits={self.exits_name}"


@register_term("ce")
class CrossEntropyTerm(Term):
    """Cross-entropy on the selected exits, with torch's label smoothing ``label_smoothing`` (0: none)."""

    def __init__(self, ctx: TermContext, exits: str = "all", label_smoothing: float = 0.0) -> None:
        super().__init__(ctx, exits)
        self.label_smoothing = float(label_smoothing)

    def extra_repr(self) -> str:
        return super().extra_repr() + (f", label_smoothing={self.label_smoothing}" if self.label_smoothing else "")

    def forward(self, b: LossBatch) -> torch.Tensor:
        return sum(F.cross_entropy(b.student.logits[i].float(), b.targets, label_smoothing=self.label_smoothing)
                   for i in self.exits)


@register_term("kl")
class KLTerm(Term):
    def __init__(self, ctx: TermContext, exits: str = "all", temperature: float = 4.0, source: str = "teacher") -> None:
        super().__init__(ctx, exits)
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        if source not in KL_SOURCES:
            raise ValueError(f"kl source must be one of {KL_SOURCES}, got {source!r}")
        self.temperature = float(temperature)
        self.source = source
        self.needs_teacher = source != "self"

    def _probs(self, z: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return F.softmax(z.detach().float() / self.temperature, dim=1)

    def forward(self, b: LossBatch) -> torch.Tensor:
        if self.source == "teacher_exit":
            t = b.teacher.logits
            if len(t) != len(b.student.logits):
                raise RuntimeError(f"kl source 'teacher_exit' pairs exits one to one, but the teacher has {len(t)} "
                                   f"exits and the student {len(b.student.logits)}")
            return sum(kl_at_temperature(b.student.logits[i], self._probs(t[i]), self.temperature) for i in self.exits)
        q = self._probs(b.student.logits[-1] if self.source == "self" else b.teacher.logits[-1])
        return sum(kl_at_temperature(b.student.logits[i], q, self.temperature) for i in self.exits)


@register_term("hint")
class HintTerm(Term):
    def __init__(self, ctx: TermContext, exits: str = "shallow") -> None:
        super().__init__(ctx, exits)

    def forward(self, b: LossBatch) -> torch.Tensor:
        target = b.student.features[-1].detach().float()
        return sum(F.mse_loss(b.student.features[i].float(), target) for i in self.exits)


@register_term("logit_l2")
class LogitL2Term(Term):
    needs_teacher = True

    def forward(self, b: LossBatch) -> torch.Tensor:
        target = b.teacher.logits[-1].detach().float()
        return sum(F.mse_loss(b.student.logits[i].float(), target) for i in self.exits)


@register_term("tfkd_reg")
class VirtualTeacherTerm(Term):
    def __init__(self, ctx: TermContext, exits: str = "all", temperature: float = 20.0,
                 correct_prob: float = 0.9) -> None:
        super().__init__(ctx, exits)
        c = ctx.num_classes
        if not (1.0 / c < correct_prob < 1.0):
            raise ValueError(f"correct_prob must be in (1/{c}, 1), got {correct_prob}")
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        self.temperature = float(temperature)
        self.correct_prob = float(correct_prob)
        self.num_classes = c

    def virtual_probs(self, targets: torch.Tensor) -> torch.Tensor:
        """The virtual teacher's distribution at temperature T: ``softmax(log q / T)``."""
        c, a = self.num_classes, self.correct_prob
        logq = torch.full((targets.shape[0], c), math.log((1 - a) / (c - 1)), device=targets.device)
        logq.scatter_(1, targets[:, None], math.log(a))
        return F.softmax(logq / self.temperature, dim=1)

    def forward(self, b: LossBatch) -> torch.Tensor:
        q = self.virtual_probs(b.targets)
        return sum(kl_at_temperature(b.student.logits[i], q, self.temperature) for i in self.exits)


@register_term("partial_l2")
class PartialL2Term(Term):
    """Heo et al. 2019 ("A Comprehensive Overhaul of Feature Distillation").

    Student section ``i`` is paired with teacher section ``round((i+1)·K_t/K_s) - 1`` (same depth
    fraction), so teacher and student may differ in section count. A connector (1×1 conv + BN) maps
    the student's channels to the teacher's when they differ; the student map is average-pooled to
    the teacher's spatial size when that differs. Connectors are trainable and live in this term
    (they are saved with the optimizer state for resume, not in the exported model). ``exits``
    selects the *sections* whose outputs are distilled (default all).

    ``margin=True`` (default) applies Heo's margin ReLU to the teacher: negative teacher responses are
    raised to the per-channel mean of the negative responses (estimated on the batch here; Heo derives
    it from batch-norm statistics, which do not describe our post-residual pre-activations). The
    partial L2 then skips the elements where ``s <= t <= 0``.
    """

    needs_teacher = True
    needs_preacts = True

    def __init__(self, ctx: TermContext, exits: str = "all", margin: bool = True) -> None:
        super().__init__(ctx, exits)
        if ctx.teacher_channels is None:
            raise ValueError("partial_l2 needs a teacher (its section channels)")
        kt, ks = len(ctx.teacher_channels), ctx.num_exits
        self.pairs = [(i, max(0, round((i + 1) * kt / ks) - 1)) for i in self.exits]
        self.margin = bool(margin)
        conns = {}
        for i, j in self.pairs:
            cs, ct = ctx.student_channels[i], ctx.teacher_channels[j]
            conns[str(i)] = nn.Identity() if cs == ct else nn.Sequential(
                nn.Conv2d(cs, ct, 1, bias=False), nn.BatchNorm2d(ct))
        self.connectors = nn.ModuleDict(conns)

    @staticmethod
    def partial_l2(s: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """Mean over elements of ``(s - t)²``, skipping the elements where ``s <= t <= 0``."""
        s, t = s.float(), t.float()
        mask = ~((s <= t) & (t <= 0))
        return ((s - t) ** 2 * mask).mean()

    @staticmethod
    def margin_relu(t: torch.Tensor) -> torch.Tensor:
        """Raise negative responses to their per-channel mean (``max(t, m_c)``, ``m_c < 0``)."""
        neg = t.clamp(max=0)
        count = (t < 0).sum(dim=(0, 2, 3), keepdim=True).clamp(min=1)
        m = neg.sum(dim=(0, 2, 3), keepdim=True) / count
        return torch.maximum(t, m)

    def forward(self, b: LossBatch) -> torch.Tensor:
        sp, tp = b.student.preacts, b.teacher.preacts if b.teacher is not None else None
        if sp is None or tp is None:
            raise RuntimeError("partial_l2 needs pre-activation features (forward with return_preacts=True)")
        total = 0.0
        for i, j in self.pairs:
            s = self.connectors[str(i)](sp[i])
            t = tp[j].detach().float()
            if self.margin:
                t = self.margin_relu(t)
            if s.shape[-2:] != t.shape[-2:]:
                s = F.adaptive_avg_pool2d(s, t.shape[-2:])
            total = total + self.partial_l2(s, t)
        return total
