"""Loss terms and methods: hand computations, invariances, and that every method's loss goes down."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from sdedge.losses import LossBatch, build_method_loss, build_term, get_method, list_methods
from sdedge.losses.terms import PartialL2Term, TermContext
from sdedge.models import ModelConfig, MultiExitOutput, build_model

ALL_METHODS = ["plain", "dsn", "byot", "kd", "tfkd-self", "tfkd-reg", "feature-kd", "logit-l2", "distill"]


def _np_log_softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=1, keepdims=True))


def _np_ce(z: np.ndarray, y: np.ndarray) -> float:
    return float(-_np_log_softmax(z)[np.arange(len(y)), y].mean())


def _np_kl_t(student: np.ndarray, teacher: np.ndarray, t: float) -> float:
    """T² · KL(softmax(teacher/T) || softmax(student/T)), mean over the batch."""
    lq = _np_log_softmax(teacher / t)
    lp = _np_log_softmax(student / t)
    return float((np.exp(lq) * (lq - lp)).sum(axis=1).mean() * t * t)


def _random_output(k: int = 3, b: int = 5, c: int = 4, d: int = 6, seed: int = 0) -> tuple[MultiExitOutput, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    logits = [torch.randn(b, c, generator=g, dtype=torch.float64) * 2 for _ in range(k)]
    feats = [torch.rand(b, d, generator=g, dtype=torch.float64) for _ in range(k)]
    y = torch.randint(0, c, (b,), generator=g)
    return MultiExitOutput(logits, feats), y


def test_registry_has_every_method() -> None:
    assert set(list_methods()) == set(ALL_METHODS)
    with pytest.raises(ValueError, match="unknown method 'nope'"):
        get_method("nope")


def _np_byot(out: MultiExitOutput, y: torch.Tensor, alpha: float, t: float, lam: float) -> float:
    """BYOT by hand: deepest exit CE; each shallow exit (1-α)·CE + α·T²·KL(deepest ‖ exit at T) + λ·hint."""
    z = [v.numpy() for v in out.logits]
    f = [v.numpy() for v in out.features]
    yn = y.numpy()
    deep = len(z) - 1
    expected = _np_ce(z[deep], yn)  # the deepest exit: plain CE
    for i in range(deep):  # shallow exits
        expected += (1 - alpha) * _np_ce(z[i], yn)
        expected += alpha * _np_kl_t(z[i], z[deep], t)
        expected += lam * float(((f[i] - f[deep]) ** 2).mean())
    return expected


def test_byot_matches_a_hand_computation() -> None:
    out, y = _random_output()
    loss = build_method_loss("byot", get_method("byot").resolve(), 3, 4, [2, 4, 6])
    total, parts = loss(LossBatch(out, y))

    z = [v.numpy() for v in out.logits]
    f = [v.numpy() for v in out.features]
    assert total.item() == pytest.approx(_np_byot(out, y, alpha=0.3, t=3.0, lam=0.03), rel=1e-6)  # the defaults
    assert parts["kd"].item() == pytest.approx(sum(_np_kl_t(z[i], z[2], 3.0) for i in (0, 1)), rel=1e-6)
    assert parts["hint"].item() == pytest.approx(sum(float(((f[i] - f[2]) ** 2).mean()) for i in (0, 1)), rel=1e-6)


@pytest.mark.parametrize("given", [
    {"alpha": 0.7, "temperature": 1.5, "hint_weight": 0.4},
    {"alpha": 0.0, "temperature": 3.0, "hint_weight": 0.03},  # α alone: no KD term at all
    {"alpha": 0.3, "temperature": 8.0, "hint_weight": 0.03},  # T alone
    {"alpha": 0.3, "temperature": 3.0, "hint_weight": 2.0},  # λ alone
])
def test_byot_uses_the_weights_it_is_given(given: dict) -> None:
    """Non-default α, T and λ change the loss exactly as the hand computation with those numbers says."""
    out, y = _random_output(seed=3)
    default = build_method_loss("byot", get_method("byot").resolve(), 3, 4, [2, 4, 6])(LossBatch(out, y))[0].item()
    want = _np_byot(out, y, alpha=given["alpha"], t=given["temperature"], lam=given["hint_weight"])
    assert want != pytest.approx(default, rel=1e-3)  # the case really differs from the defaults
    # through the method's parameters (what the trainer's flags go through) and as a parameter dict
    for params in (get_method("byot").resolve(**given), dict(given)):
        loss = build_method_loss("byot", params, 3, 4, [2, 4, 6])
        assert loss(LossBatch(out, y))[0].item() == pytest.approx(want, rel=1e-6), params


def test_byot_deepest_ce_weight_scales_only_the_deepest_cross_entropy() -> None:
    out, y = _random_output(seed=5)
    base = build_method_loss("byot", get_method("byot").resolve(), 3, 4, [2, 4, 6])(LossBatch(out, y))
    half = build_method_loss("byot", get_method("byot").resolve(deepest_ce_weight=0.7), 3, 4, [2, 4, 6])(
        LossBatch(out, y))
    ce_deep = float(torch.nn.functional.cross_entropy(out.logits[2], y))
    assert half[0].item() == pytest.approx(base[0].item() - 0.3 * ce_deep, rel=1e-6)
    with pytest.raises(ValueError, match="deepest_ce_weight must be >= 0"):
        get_method("byot").resolve(deepest_ce_weight=-1)


def test_byot_teacher_receives_no_gradient_from_students() -> None:
    out, y = _random_output()
    for v in out.logits + out.features:
        v.requires_grad_(True)
    loss = build_method_loss("byot", get_method("byot").resolve(), 3, 4, [2, 4, 6])
    _, parts = loss(LossBatch(out, y))
    kd = build_term("kl", TermContext(3, 4, [2, 4, 6]), exits="shallow", temperature=3.0, source="self")
    hint = build_term("hint", TermContext(3, 4, [2, 4, 6]))
    (kd(LossBatch(out, y)) + hint(LossBatch(out, y))).backward()
    assert out.logits[2].grad is None and out.features[2].grad is None  # deepest is only a target
    assert out.logits[0].grad is not None and out.features[0].grad.abs().sum() > 0


def test_kl_is_t_squared_scaled_and_zero_for_identical_logits() -> None:
    out, y = _random_output()
    ctx = TermContext(3, 4, [2, 4, 6])
    same = MultiExitOutput([out.logits[2]] * 3, out.features)
    assert build_term("kl", ctx, exits="shallow", temperature=3.0, source="self")(LossBatch(same, y)).item() == \
        pytest.approx(0.0, abs=1e-6)
    for t in (1.0, 4.0):
        v = build_term("kl", ctx, exits="all", temperature=t, source="teacher")(LossBatch(out, y, teacher=out))
        z = [a.numpy() for a in out.logits]
        assert v.item() == pytest.approx(sum(_np_kl_t(z[i], z[2], t) for i in range(3)), rel=1e-6)


def test_kl_from_the_teachers_same_exit() -> None:
    """``source="teacher_exit"``: exit i learns from the teacher's exit i (the pruned student's recovery),
    not from the teacher's deepest exit."""
    out, y = _random_output()
    teacher, _ = _random_output(seed=7)
    ctx = TermContext(3, 4, [2, 4, 6])
    v = build_term("kl", ctx, exits="all", temperature=2.0, source="teacher_exit")(LossBatch(out, y, teacher=teacher))
    z, t = [a.numpy() for a in out.logits], [a.numpy() for a in teacher.logits]
    assert v.item() == pytest.approx(sum(_np_kl_t(z[i], t[i], 2.0) for i in range(3)), rel=1e-6)
    assert build_term("kl", ctx, exits="all", temperature=2.0, source="teacher_exit")(
        LossBatch(out, y, teacher=out)).item() == pytest.approx(0.0, abs=1e-6)
    short = MultiExitOutput(teacher.logits[:2], teacher.features[:2])
    with pytest.raises(RuntimeError, match="teacher has 2 exits and the student 3"):
        build_term("kl", ctx, exits="all", temperature=2.0, source="teacher_exit")(LossBatch(out, y, teacher=short))


def test_hint_does_not_depend_on_batch_size() -> None:
    out, y = _random_output(b=4)
    hint = build_term("hint", TermContext(3, 4, [2, 4, 6]))
    v1 = hint(LossBatch(out, y)).item()
    big = MultiExitOutput(out.logits, [f.repeat(8, 1) for f in out.features])
    v8 = hint(LossBatch(big, y.repeat(8))).item()
    assert v8 == pytest.approx(v1, rel=1e-6)
    assert v1 > 0


def test_partial_l2_is_zero_where_student_below_teacher_below_zero() -> None:
    t = torch.tensor([[-1.0, -0.5, 0.5, -2.0]]).view(1, 4, 1, 1)
    s_below = torch.tensor([[-3.0, -0.6, 0.5, -2.5]]).view(1, 4, 1, 1)  # s <= t <= 0 (and equal where t > 0)
    assert PartialL2Term.partial_l2(s_below, t).item() == 0.0
    s_mixed = torch.tensor([[-3.0, 0.5, 0.0, -1.0]]).view(1, 4, 1, 1)
    # elements: skipped; (0.5+0.5)²; (0-0.5)² (teacher positive counts both ways); (-1+2)² (student above)
    assert PartialL2Term.partial_l2(s_mixed, t).item() == pytest.approx((1.0 + 0.25 + 1.0) / 4)


def test_partial_l2_term_with_connectors_and_margin() -> None:
    ctx = TermContext(2, 3, student_channels=[2, 4], teacher_channels=[3, 3, 4])
    term = build_term("partial_l2", ctx, margin=False)
    assert isinstance(term.connectors["0"], torch.nn.Sequential)  # 2 -> 3 channels
    assert isinstance(term.connectors["1"], torch.nn.Identity)  # 4 == 4
    assert term.pairs == [(0, 1), (1, 2)]  # same depth fraction
    sp = [torch.randn(2, 2, 8, 8), torch.randn(2, 4, 4, 4)]
    tp = [torch.randn(2, 3, 8, 8), torch.randn(2, 3, 4, 4), torch.randn(2, 4, 2, 2)]  # spatial mismatch on 2nd pair
    out = MultiExitOutput([torch.zeros(2, 3)] * 2, [None, None], sp)
    v = term(LossBatch(out, torch.zeros(2, dtype=torch.long), MultiExitOutput([torch.zeros(2, 3)] * 3, [None] * 3, tp)))
    assert torch.isfinite(v) and v.item() > 0
    # margin ReLU: negative teacher responses rise to the channel's mean negative response
    t = torch.tensor([-1.0, -3.0, 2.0]).view(1, 1, 3, 1)
    assert PartialL2Term.margin_relu(t).flatten().tolist() == [-1.0, -2.0, 2.0]


def test_tfkd_virtual_teacher_distribution() -> None:
    term = build_term("tfkd_reg", TermContext(1, 5, [4]), temperature=1.0, correct_prob=0.9)
    q = term.virtual_probs(torch.tensor([2, 0]))
    assert q.sum(1).tolist() == pytest.approx([1.0, 1.0])
    assert q[0, 2].item() == pytest.approx(0.9) and q[0, 0].item() == pytest.approx(0.025)
    soft = build_term("tfkd_reg", TermContext(1, 5, [4]), temperature=20.0).virtual_probs(torch.tensor([2]))
    assert soft[0, 2].item() < 0.9 and soft[0, 2].item() == pytest.approx(soft.max().item())
    # the student that matches the softened virtual teacher has zero loss
    logits = torch.log(soft) * 20.0
    out = MultiExitOutput([logits], [None])
    term = build_term("tfkd_reg", TermContext(1, 5, [4]), temperature=20.0)
    v = term(LossBatch(out, torch.tensor([2])))
    assert v.item() == pytest.approx(0.0, abs=1e-3)  # float32 round-off times T² = 400
    wrong = term(LossBatch(MultiExitOutput([torch.tensor([[5.0, 0, 0, 0, 0]])], [None]), torch.tensor([2])))
    assert wrong.item() > 0.1


def test_logit_l2_hand_computation() -> None:
    out, y = _random_output()
    teacher = MultiExitOutput([out.logits[0] * 0 + 1.5], [None])
    v = build_term("logit_l2", TermContext(3, 4, [2, 4, 6]), exits="deepest")(LossBatch(out, y, teacher))
    assert v.item() == pytest.approx(float(((out.logits[2].numpy() - 1.5) ** 2).mean()))


def test_bad_method_parameters_are_refused() -> None:
    with pytest.raises(ValueError, match="alpha must be in"):
        get_method("byot").resolve(alpha=1.5)
    with pytest.raises(ValueError, match="temperature must be > 0"):
        get_method("kd").resolve(temperature=0)
    with pytest.raises(ValueError, match="correct_prob"):
        build_term("tfkd_reg", TermContext(1, 10, [4]), correct_prob=0.05)
    with pytest.raises(ValueError, match="unknown loss term"):
        build_term("nope", TermContext(1, 10, [4]))


@pytest.fixture(scope="module")
def tiny_batch(digits_splits):
    from sdedge.data.augment import normalize

    x = normalize(torch.from_numpy(digits_splits.train.images[:32]), torch.tensor(digits_splits.mean),
                  torch.tensor(digits_splits.std))
    return x, torch.from_numpy(digits_splits.train.labels[:32])


@pytest.mark.parametrize("method", ALL_METHODS)
def test_each_method_loss_is_finite_and_decreases(method, tiny_batch, tiny_checkpoint) -> None:
    from sdedge.checkpoint import model_from_checkpoint

    x, y = tiny_batch
    torch.manual_seed(0)
    # the student is narrower than the tiny teacher (width 8), so feature-kd needs its connectors
    student = build_model(ModelConfig("tiny", 10, 1, (16, 16), backbone_kwargs={"width": 4 if method != "tfkd-self" else 8}))
    spec = get_method(method)
    teacher = model_from_checkpoint(tiny_checkpoint) if spec.needs_teacher else None
    loss_fn = build_method_loss(method, spec.resolve(), student.num_exits, 10, student.preact_channels,
                                teacher.preact_channels if teacher is not None else None)
    opt = torch.optim.SGD(list(student.parameters()) + list(loss_fn.parameters()), lr=0.05, momentum=0.9)
    values = []
    student.train()
    for _ in range(12):
        t_out = None
        if teacher is not None:
            with torch.no_grad():
                t_out = teacher(x, return_preacts=loss_fn.needs_preacts)
        loss, parts = loss_fn(LossBatch(student(x, return_preacts=loss_fn.needs_preacts), y, t_out))
        assert torch.isfinite(loss), (method, parts)
        values.append(loss.item())
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert values[-1] < values[0] * 0.9, (method, values)
    assert not math.isnan(sum(values))


def test_byot_label_smoothing_reaches_the_shallow_exits_only() -> None:
    out, y = _random_output(seed=6)
    base = build_method_loss("byot", get_method("byot").resolve(), 3, 4, [2, 4, 6])(LossBatch(out, y))[0].item()
    smooth = build_method_loss("byot", get_method("byot").resolve(label_smoothing=0.2), 3, 4, [2, 4, 6])(
        LossBatch(out, y))[0].item()
    F = torch.nn.functional
    shallow = [out.logits[i] for i in (0, 1)]
    want = base + 0.7 * sum(float(F.cross_entropy(z, y, label_smoothing=0.2) - F.cross_entropy(z, y)) for z in shallow)
    assert smooth == pytest.approx(want, rel=1e-6)  # the deepest exit (the teacher) keeps hard targets
    dsn = build_method_loss("dsn", get_method("dsn").resolve(label_smoothing=0.2), 3, 4, [2, 4, 6])(LossBatch(out, y))
    assert dsn[0].item() == pytest.approx(sum(float(F.cross_entropy(z, y, label_smoothing=0.2)) for z in out.logits),
                                          rel=1e-6)
    with pytest.raises(ValueError, match=r"label_smoothing must be in \[0, 1\)"):
        get_method("byot").resolve(label_smoothing=1.0)
