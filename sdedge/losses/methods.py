"""Training methods: a method is a named set of weighted loss terms (``shared/DESIGN.md`` section 3).

=========== ==================================================================== ===================
method      loss (K exits, exit K = deepest; weights are flags)                  defaults
=========== ==================================================================== ===================
plain       CE on the deepest exit only (``--train-heads-after N`` then trains   -
            the shallow heads for N epochs on the frozen backbone)
dsn         CE on every exit (deep supervision)                                  -
byot        deepest: w·CE; shallow exits: (1-α)·CE + α·T²·KL(deepest ‖ exit at T) α=0.3, T=3, λ=0.03,
            + λ·hint L2 (exit's bottleneck feature vs detached deepest feature)  w=1
kd          every exit: (1-α)·CE + α·T²·KL(teacher ‖ exit at T)                   α=0.9, T=4
tfkd-self   as ``kd``; the teacher must be a trained copy of the same network    α=0.9, T=4
tfkd-reg    every exit: (1-α)·CE + α·T²·KL(virtual teacher ‖ exit at T)          α=0.1, T=20, a=0.9
feature-kd  every exit CE + β·partial-L2 on pre-ReLU section outputs             β=1
logit-l2    every exit: (1-α)·CE + α·L2(exit logits, teacher logits)              α=0.5
distill     every exit: (1-α)·CE + α/3·T²·[KL(teacher exit i ‖ i) + KL(teacher   α=0.9, T=4, λ=0.03,
            deepest ‖ i)] (+ α/3·T²·KL(own deepest ‖ i) on shallow exits)        β=1
            + λ·hint + β·partial-L2 on pre-ReLU section outputs; the teacher is
            the unpruned network (``sdedge prune``)
=========== ==================================================================== ===================

Why these defaults
------------------
*byot* follows the paper's loss (Zhang et al., ICCV 2019, "Be Your Own Teacher") with the
hyper-parameters of the first author's public code (``ArchipLab-LinfengZhang/pytorch-self-distillation-final``:
``loss_coefficient`` α = 0.3, ``feature_loss_coefficient`` λ = 0.03, ``temperature`` T = 3; the
deepest exit is trained with the plain CE, every shallow exit with (1-α)·CE + α·KD). Two deliberate
differences, both written in this project's design: (1) the KD term is multiplied by T² (Hinton's
scaling, so the gradient size does not shrink as 1/T²; the authors' code leaves it out, which makes
its KD gradient 9× weaker at T = 3); (2) the hint is an L2 averaged per element of the pooled
bottleneck feature (not a batch sum, not an L2 norm), so λ does not depend on batch size or width.
Per element, λ = 0.03 is close to the effective weight of the widely used BYOT re-implementation
(``luanyunteng/pytorch-be-your-own-teacher``: β = 1e-6 on a sum over a 128 × 512 batch ≈ 0.066).
The hint applies to every shallow exit (the paper's formulation). The deepest exit's CE weight ``w``
(``--deepest-ce-weight``) is 1 as in the authors' code; DESIGN section 3 writes (1-α) at every exit,
which ``--deepest-ce-weight 0.7`` gives at the default α (not yet compared by measurement).
``--label-smoothing ε`` (plain, dsn, byot; default 0) smooths the CE targets; under byot only the shallow
exits' (the students'), never the deepest exit's: a smoothed teacher distils worse (Müller et al. 2019,
"When does label smoothing help?").

*distill* (``sdedge prune``'s recovery, after the pruning-and-distillation survey and Heo et al.):
the teacher is the same network before pruning, so each exit learns from the teacher's exit of the
same depth as well as from its deepest one; the KD weight α is shared by the three KL terms in
equal parts, with the common α = 0.9, T = 4; the hint and the partial L2 keep byot's and
feature-kd's defaults.

*kd*/*tfkd-self* use the common CIFAR Hinton-KD setting (α = 0.9, T = 4). *tfkd-reg* uses Yuan et al.
2020's T = 20 and weight 0.1 with a = 0.9 correct-class probability (their ResNet-18 script uses
0.99). *feature-kd*: Heo et al.'s ``sum / batch / 1000`` weighting with its 1/2^(K-i) section factors
equals β ≈ 8 per element for a width-64 CIFAR ResNet-18 (its four sections all have 8 192 weighted
elements per image); the default is β = 1 because at 8 the feature term swamps CE on small
networks and short runs (``benchmarks/feature_weight_probe.py``, tiny width 8 on digits, 4 epochs, 3 seeds:
deepest test 0.66 at β = 8, 0.78 at 4, 0.85 at 1, 0.91 at 0.25; ``benchmarks/results/feature_weight_probe.json``;
1 is kept rather than the lower value so the feature term still counts on larger networks). Pass
``--feature-weight 8`` for Heo's weighting. *logit-l2* blends CE and the logit regression half and half.

Multi-exit students: every teacher method trains every exit (a multi-exit network needs all of
them), which makes ``dsn`` the matching no-teacher baseline.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import nn

from ..common.registry import Registry
from .terms import LossBatch, TermContext, build_term

PARAM_NAMES = ("alpha", "temperature", "hint_weight", "feature_weight", "correct_prob", "deepest_ce_weight",
               "label_smoothing")


@dataclass(frozen=True)
class Component:
    label: str  # shown in progress bars and logs
    weight: float
    term: str
    kwargs: dict = field(default_factory=dict)


@dataclass(frozen=True)
class MethodSpec:
    name: str
    summary: str
    defaults: dict  # the parameters this method uses and their defaults
    components: Callable[[dict], list[Component]]
    needs_teacher: bool = False
    same_architecture_teacher: bool = False

    def resolve(self, **overrides) -> dict:
        """This method's parameters: defaults overridden by the non-None values given."""
        unknown = [k for k in overrides if k not in PARAM_NAMES]
        if unknown:
            raise ValueError(f"unknown method parameter(s) {unknown}; known: {list(PARAM_NAMES)}")
        params = dict(self.defaults)
        for k, v in overrides.items():
            if v is not None and k in params:
                params[k] = float(v)
        _check(self.name, params)
        return params


def _check(name: str, p: dict) -> None:
    if "alpha" in p and not 0.0 <= p["alpha"] <= 1.0:
        raise ValueError(f"{name}: alpha must be in [0, 1], got {p['alpha']}")
    if "temperature" in p and p["temperature"] <= 0:
        raise ValueError(f"{name}: temperature must be > 0, got {p['temperature']}")
    for k in ("hint_weight", "feature_weight", "deepest_ce_weight"):
        if k in p and p[k] < 0:
            raise ValueError(f"{name}: {k} must be >= 0, got {p[k]}")
    if "label_smoothing" in p and not 0.0 <= p["label_smoothing"] < 1.0:
        raise ValueError(f"{name}: label_smoothing must be in [0, 1), got {p['label_smoothing']}")


def _teacher_kd(p: dict) -> list[Component]:
    return [Component("ce", 1 - p["alpha"], "ce", {"exits": "all"}),
            Component("kd", p["alpha"], "kl", {"exits": "all", "temperature": p["temperature"], "source": "teacher"})]


METHODS: Registry[MethodSpec] = Registry("method")


def register_method(spec: MethodSpec) -> MethodSpec:
    return METHODS.add(spec.name, spec)


register_method(MethodSpec(
    "plain", "cross-entropy on the deepest exit only (baseline)", {"label_smoothing": 0.0},
    lambda p: [Component("ce", 1.0, "ce", {"exits": "deepest", "label_smoothing": p.get("label_smoothing", 0.0)})]))
register_method(MethodSpec(
    "dsn", "cross-entropy on every exit (deep supervision)", {"label_smoothing": 0.0},
    lambda p: [Component("ce", 1.0, "ce", {"exits": "all", "label_smoothing": p.get("label_smoothing", 0.0)})]))
register_method(MethodSpec(
    "byot", "Be Your Own Teacher: CE + KD from the deepest exit + hint L2 on bottleneck features",
    {"alpha": 0.3, "temperature": 3.0, "hint_weight": 0.03, "deepest_ce_weight": 1.0, "label_smoothing": 0.0},
    # label smoothing applies to the students' CE only: the deepest exit is the teacher, its targets stay hard
    lambda p: [Component("ce_deep", p.get("deepest_ce_weight", 1.0), "ce", {"exits": "deepest"}),
               Component("ce", 1 - p["alpha"], "ce", {"exits": "shallow",
                                                      "label_smoothing": p.get("label_smoothing", 0.0)}),
               Component("kd", p["alpha"], "kl", {"exits": "shallow", "temperature": p["temperature"], "source": "self"}),
               Component("hint", p["hint_weight"], "hint", {"exits": "shallow"})]))
register_method(MethodSpec(
    "kd", "Hinton KD from a separate teacher checkpoint (--teacher)", {"alpha": 0.9, "temperature": 4.0},
    _teacher_kd, needs_teacher=True))
register_method(MethodSpec(
    "tfkd-self", "teacher-free KD: a trained copy of the same network is the teacher (--teacher)",
    {"alpha": 0.9, "temperature": 4.0}, _teacher_kd, needs_teacher=True, same_architecture_teacher=True))
register_method(MethodSpec(
    "tfkd-reg", "teacher-free KD with a virtual teacher (label smoothing with a confident correct class)",
    {"alpha": 0.1, "temperature": 20.0, "correct_prob": 0.9},
    lambda p: [Component("ce", 1 - p["alpha"], "ce", {"exits": "all"}),
               Component("reg", p["alpha"], "tfkd_reg", {"exits": "all", "temperature": p["temperature"],
                                                          "correct_prob": p["correct_prob"]})]))
register_method(MethodSpec(
    "feature-kd", "partial-L2 feature distillation on pre-ReLU features from a teacher (--teacher)",
    {"feature_weight": 1.0},
    lambda p: [Component("ce", 1.0, "ce", {"exits": "all"}),
               Component("feat", p["feature_weight"], "partial_l2", {"exits": "all"})],
    needs_teacher=True))
register_method(MethodSpec(
    "distill", "recovery of a pruned network from its unpruned self (--teacher): KD from the teacher's same and "
               "deepest exits, self-distillation, partial-L2 on section outputs",
    {"alpha": 0.9, "temperature": 4.0, "hint_weight": 0.03, "feature_weight": 1.0},
    lambda p: [Component("ce", 1 - p["alpha"], "ce", {"exits": "all"}),
               Component("kd_exit", p["alpha"] / 3, "kl", {"exits": "all", "temperature": p["temperature"],
                                                          "source": "teacher_exit"}),
               Component("kd_deep", p["alpha"] / 3, "kl", {"exits": "all", "temperature": p["temperature"],
                                                          "source": "teacher"}),
               Component("kd_self", p["alpha"] / 3, "kl", {"exits": "shallow", "temperature": p["temperature"],
                                                          "source": "self"}),
               Component("hint", p["hint_weight"], "hint", {"exits": "shallow"}),
               Component("feat", p["feature_weight"], "partial_l2", {"exits": "all"})],
    needs_teacher=True))
register_method(MethodSpec(
    "logit-l2", "L2 regression on the teacher's logits (Ba & Caruana) blended with CE (--teacher)",
    {"alpha": 0.5},
    lambda p: [Component("ce", 1 - p["alpha"], "ce", {"exits": "all"}),
               Component("l2", p["alpha"], "logit_l2", {"exits": "all"})],
    needs_teacher=True))


def list_methods() -> list[str]:
    return list(METHODS)


def get_method(name: str) -> MethodSpec:
    return METHODS.get(name)


class MethodLoss(nn.Module):
    """The weighted sum of a method's terms. Returns ``(total, {label: unweighted value})``.

    ``components`` overrides the method's own list (the trainer uses it for the head-training phase
    of ``plain``: CE on the shallow exits).
    """

    def __init__(self, name: str, params: dict, ctx: TermContext,
                 components: list[Component] | None = None) -> None:
        super().__init__()
        self.name = name
        self.params = dict(params)
        self.num_exits = ctx.num_exits
        if components is None:
            components = get_method(name).components(self.params)
        comps = [c for c in components if c.weight != 0.0]
        if not comps:
            raise ValueError(f"method {name!r} has no term with a non-zero weight")
        self.labels = [c.label for c in comps]
        self.weights = [float(c.weight) for c in comps]
        self.terms = nn.ModuleList([build_term(c.term, ctx, **c.kwargs) for c in comps])

    @property
    def needs_teacher(self) -> bool:
        return any(t.needs_teacher for t in self.terms)

    @property
    def needs_preacts(self) -> bool:
        return any(t.needs_preacts for t in self.terms)

    @property
    def exits_used(self) -> list[int]:
        """Exits (0-based) whose logits or features some term reads."""
        used = set()
        for t in self.terms:
            used.update(t.exits)
            if t.term_name == "hint" or (t.term_name == "kl" and t.source == "self"):
                used.add(self.num_exits - 1)  # the deepest exit is the target
        return sorted(used)

    def forward(self, batch: LossBatch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        total = None
        parts: dict[str, torch.Tensor] = {}
        for label, w, term in zip(self.labels, self.weights, self.terms):
            v = term(batch)
            parts[label] = v.detach()
            total = w * v if total is None else total + w * v
        return total, parts


def build_method_loss(name: str, params: dict, num_exits: int, num_classes: int, student_channels: list[int],
                      teacher_channels: list[int] | None = None,
                      components: list[Component] | None = None) -> MethodLoss:
    ctx = TermContext(num_exits, num_classes, list(student_channels),
                      list(teacher_channels) if teacher_channels is not None else None)
    return MethodLoss(name, params, ctx, components)
