"""Loss terms and methods (sdedge/losses/): hand computations, defaults, refusals and the term wiring that the
mutation run of issue 17 item 4 found untested. Small random tensors only (no model, no data set)."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from sdedge.losses import Component, LossBatch, MethodLoss, build_method_loss, build_term, get_method
from sdedge.losses.terms import PartialL2Term, TermContext
from sdedge.models import MultiExitOutput

from test_losses import _np_ce, _np_kl_t, _random_output

CTX = TermContext(3, 4, [2, 4, 6])
PARAMS = ("['alpha', 'temperature', 'hint_weight', 'feature_weight', 'correct_prob', 'deepest_ce_weight', "
          "'label_smoothing']")


def _z(out: MultiExitOutput) -> list[np.ndarray]:
    return [v.numpy() for v in out.logits]


# -- terms ---------------------------------------------------------------------------------------------------
def test_unknown_exit_choice_is_refused_listing_the_choices() -> None:
    with pytest.raises(ValueError) as e:
        build_term("ce", CTX, exits="some")
    assert str(e.value) == "exits must be one of ('all', 'deepest', 'shallow'), got 'some'"


def test_ce_term_defaults_to_every_exit_and_names_its_exits() -> None:
    out, y = _random_output()
    z, yn = _z(out), y.numpy()
    assert build_term("ce", CTX)(LossBatch(out, y)).item() == pytest.approx(sum(_np_ce(v, yn) for v in z), rel=1e-6)
    assert "exits=shallow" in repr(build_term("hint", CTX))
    assert repr(build_term("ce", CTX)) == "CrossEntropyTerm(exits=all)"  # no smoothing: not named
    assert repr(build_term("ce", CTX, exits="shallow", label_smoothing=0.1)) == (
        "CrossEntropyTerm(exits=shallow, label_smoothing=0.1)")


def test_kl_term_takes_the_softmax_over_classes_without_a_warning() -> None:
    import warnings

    out, y = _random_output(seed=3)
    teacher, _ = _random_output(seed=4)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # torch warns when softmax has to guess its dim
        v = build_term("kl", CTX, temperature=3.0)(LossBatch(out, y, teacher)).item()
    z, zt = _z(out), _z(teacher)
    assert v == pytest.approx(sum(_np_kl_t(z[i], zt[2], 3.0) for i in range(3)), rel=1e-6)


def test_kl_term_defaults_are_the_teachers_deepest_exit_at_t4_on_every_exit() -> None:
    out, y = _random_output(seed=1)
    teacher, _ = _random_output(seed=2)
    term = build_term("kl", CTX)
    assert term.needs_teacher and not build_term("kl", CTX, source="self").needs_teacher
    z, zt = _z(out), _z(teacher)
    want = sum(_np_kl_t(z[i], zt[2], 4.0) for i in range(3))
    assert term(LossBatch(out, y, teacher)).item() == pytest.approx(want, rel=1e-6)


def test_kl_from_the_teacher_is_not_the_students_own_deepest_exit() -> None:
    out, y = _random_output(seed=1)
    teacher, _ = _random_output(seed=2)
    z, zt = _z(out), _z(teacher)
    v = build_term("kl", CTX, exits="shallow", temperature=2.0, source="teacher")(LossBatch(out, y, teacher)).item()
    assert v == pytest.approx(sum(_np_kl_t(z[i], zt[2], 2.0) for i in (0, 1)), rel=1e-6)
    assert v != pytest.approx(sum(_np_kl_t(z[i], z[2], 2.0) for i in (0, 1)), rel=1e-3)


@pytest.mark.parametrize("term,kw,message", [
    ("kl", {"temperature": 0}, "temperature must be > 0, got 0"),
    ("kl", {"source": "x"}, "kl source must be one of ('self', 'teacher', 'teacher_exit'), got 'x'"),
    ("tfkd_reg", {"temperature": 0}, "temperature must be > 0, got 0"),
    ("tfkd_reg", {"correct_prob": 0.25}, "correct_prob must be in (1/4, 1), got 0.25"),
    ("tfkd_reg", {"correct_prob": 1.0}, "correct_prob must be in (1/4, 1), got 1.0"),
])
def test_term_parameters_are_refused_with_their_message(term: str, kw: dict, message: str) -> None:
    with pytest.raises(ValueError) as e:
        build_term(term, CTX, **kw)
    assert str(e.value) == message


def test_partial_l2_without_teacher_channels_is_refused() -> None:
    with pytest.raises(ValueError) as e:
        build_term("partial_l2", CTX)
    assert str(e.value) == "partial_l2 needs a teacher (its section channels)"


def test_virtual_teacher_defaults_and_bounds() -> None:
    ctx = TermContext(3, 10, [2, 4, 6])
    term = build_term("tfkd_reg", ctx, correct_prob=0.15)  # anything above 1/C = 0.1 is a valid a
    q = term.virtual_probs(torch.tensor([3]))
    logq = torch.full((1, 10), math.log(0.85 / 9))
    logq[0, 3] = math.log(0.15)
    torch.testing.assert_close(q, F.softmax(logq / 20.0, dim=1))  # T = 20 by default
    meta = term.virtual_probs(torch.tensor([3, 1], device="meta"))
    assert meta.device.type == "meta" and meta.shape == (2, 10)  # built on the targets' device


def test_virtual_teacher_term_applies_to_the_exits_asked_for() -> None:
    out, y = _random_output(seed=4)
    all_exits = build_term("tfkd_reg", CTX, temperature=2.0)
    deepest = build_term("tfkd_reg", CTX, exits="deepest", temperature=2.0)
    q = all_exits.virtual_probs(y)
    z = _z(out)
    per_exit = [float(F.kl_div(F.log_softmax(torch.from_numpy(v).float() / 2.0, dim=1), q, reduction="batchmean")) * 4
                for v in z]
    assert all_exits(LossBatch(out, y)).item() == pytest.approx(sum(per_exit), rel=1e-5)
    assert deepest(LossBatch(out, y)).item() == pytest.approx(per_exit[2], rel=1e-5)


# -- partial L2 (Heo et al.) ---------------------------------------------------------------------------------
def test_partial_l2_counts_a_student_below_a_zero_teacher_as_off() -> None:
    t = torch.zeros(1, 2, 1, 1)
    s = torch.tensor([-1.0, 1.0]).view(1, 2, 1, 1)
    assert PartialL2Term.partial_l2(s, t).item() == pytest.approx(0.5)  # only the student above 0 counts


def _margin_by_hand(t: np.ndarray) -> np.ndarray:
    out = t.copy()
    for c in range(t.shape[1]):
        vals = t[:, c]
        neg = vals[vals < 0]
        m = neg.mean() if neg.size else 0.0
        out[:, c] = np.maximum(vals, m)
    return out


def test_margin_relu_uses_each_channels_negative_mean_over_batch_and_space() -> None:
    t = np.zeros((2, 3, 2, 5), np.float32)
    t[0, 0] = [[-1.0, -3.0, 0.0, 0.5, 2.0], [0.0, 0.0, -2.0, 0.25, 1.0]]
    t[1, 0] = [[-6.0, 0.0, 0.0, 0.75, 0.0], [0.0, 0.0, 0.0, 0.0, 3.0]]
    t[0, 1, 0, 0] = -4.0  # one negative response in channel 1
    t[1, 2] = 0.5  # channel 2: none negative, some in (0, 1)
    got = PartialL2Term.margin_relu(torch.from_numpy(t))
    np.testing.assert_allclose(got.numpy(), _margin_by_hand(t), rtol=1e-6)
    assert got[1, 0, 0, 0].item() == pytest.approx(-3.0)  # channel 0: mean of -1, -3, -2, -6


def test_partial_l2_term_value_by_hand() -> None:
    """Two student sections against a three-section teacher, same channels (identity connectors)."""
    g = torch.Generator().manual_seed(5)
    sp = [torch.randn(2, 3, 4, 4, generator=g), torch.randn(2, 4, 2, 2, generator=g)]
    tp = [torch.randn(2, 3, 4, 4, generator=g), torch.randn(2, 3, 4, 4, generator=g), torch.randn(2, 4, 2, 2, generator=g)]
    ctx = TermContext(2, 3, student_channels=[3, 4], teacher_channels=[3, 3, 4])
    student = MultiExitOutput([torch.zeros(2, 3)] * 2, [None, None], sp)
    teacher = MultiExitOutput([torch.zeros(2, 3)] * 3, [None] * 3, tp)
    batch = LossBatch(student, torch.zeros(2, dtype=torch.long), teacher)
    pl2 = PartialL2Term.partial_l2
    plain = build_term("partial_l2", ctx, margin=False)
    assert plain.pairs == [(0, 1), (1, 2)]
    assert plain(batch).item() == pytest.approx((pl2(sp[0], tp[1]) + pl2(sp[1], tp[2])).item(), rel=1e-6)
    margin = build_term("partial_l2", ctx)  # margin=True by default
    mr = PartialL2Term.margin_relu
    want = pl2(sp[0], mr(tp[1])) + pl2(sp[1], mr(tp[2]))
    assert margin(batch).item() == pytest.approx(want.item(), rel=1e-6)
    assert margin(batch).item() != pytest.approx(plain(batch).item(), rel=1e-3)
    deepest = build_term("partial_l2", ctx, exits="deepest", margin=False)
    assert deepest.pairs == [(1, 2)]
    assert deepest(batch).item() == pytest.approx(pl2(sp[1], tp[2]).item(), rel=1e-6)


def test_partial_l2_pairs_sections_at_the_same_depth_fraction() -> None:
    term = build_term("partial_l2", TermContext(4, 3, [2, 2, 2, 2], teacher_channels=[2, 2]), margin=False)
    assert term.pairs == [(0, 0), (1, 0), (2, 1), (3, 1)]


def test_connector_is_a_1x1_conv_without_bias_then_batch_norm() -> None:
    term = build_term("partial_l2", TermContext(1, 3, [2], teacher_channels=[5]))
    conn = term.connectors["0"]
    assert sum(p.numel() for p in conn.parameters()) == 2 * 5 + 2 * 5  # conv weight; BN weight and bias
    conn.train()
    y = conn(torch.randn(4, 2, 3, 3, generator=torch.Generator().manual_seed(0)))
    assert y.shape == (4, 5, 3, 3)  # 1x1: the map keeps its size
    torch.testing.assert_close(y.mean(dim=(0, 2, 3)), torch.zeros(5), atol=1e-5, rtol=0)  # batch-normalized


@pytest.mark.parametrize("missing", ["student", "teacher", "teacher_output"])
def test_partial_l2_needs_both_preactivations(missing: str) -> None:
    ctx = TermContext(1, 3, [2], teacher_channels=[2])
    pre = [torch.zeros(1, 2, 2, 2)]
    student = MultiExitOutput([torch.zeros(1, 3)], [None], None if missing == "student" else pre)
    teacher = None if missing == "teacher_output" else MultiExitOutput([torch.zeros(1, 3)], [None],
                                                                        None if missing == "teacher" else pre)
    with pytest.raises(RuntimeError) as e:
        build_term("partial_l2", ctx)(LossBatch(student, torch.zeros(1, dtype=torch.long), teacher))
    assert str(e.value) == "partial_l2 needs pre-activation features (forward with return_preacts=True)"


# -- methods -----------------------------------------------------------------------------------------------------
def test_unknown_method_parameters_are_refused_naming_the_known_ones() -> None:
    with pytest.raises(ValueError) as e:
        get_method("byot").resolve(beta=1.0)
    assert str(e.value) == f"unknown method parameter(s) ['beta']; known: {PARAMS}"


def test_resolve_ignores_none_and_parameters_the_method_does_not_use() -> None:
    assert get_method("byot").resolve(alpha=None, feature_weight=2.0) == {"alpha": 0.3, "temperature": 3.0,
                                                                          "hint_weight": 0.03,
                                                                          "deepest_ce_weight": 1.0,
                                                                          "label_smoothing": 0.0}


@pytest.mark.parametrize("method,kw,message", [
    ("byot", {"alpha": 1.5}, "byot: alpha must be in [0, 1], got 1.5"),
    ("byot", {"hint_weight": -1}, "byot: hint_weight must be >= 0, got -1.0"),
    ("feature-kd", {"feature_weight": -2}, "feature-kd: feature_weight must be >= 0, got -2.0"),
    ("kd", {"temperature": 0}, "kd: temperature must be > 0, got 0.0"),
])
def test_bad_method_parameters_are_refused_naming_the_method(method: str, kw: dict, message: str) -> None:
    with pytest.raises(ValueError) as e:
        get_method(method).resolve(**kw)
    assert str(e.value) == message


def test_method_parameter_bounds_are_inclusive() -> None:
    assert get_method("byot").resolve(alpha=1.0, temperature=0.5, hint_weight=0.0)["alpha"] == 1.0
    assert get_method("feature-kd").resolve(feature_weight=0.0) == {"feature_weight": 0.0}


@pytest.mark.parametrize("method", ["kd", "tfkd-self"])
def test_teacher_kd_matches_a_hand_computation(method: str) -> None:
    """(1-α)·CE + α·T²·KL(teacher's deepest ‖ exit at T) on every exit, with non-default α and T."""
    out, y = _random_output(seed=6)
    teacher, _ = _random_output(seed=7)
    params = get_method(method).resolve(alpha=0.6, temperature=2.5)
    loss = build_method_loss(method, params, 3, 4, [2, 4, 6], [2, 4, 6])
    assert loss.labels == ["ce", "kd"] and loss.needs_teacher
    total, parts = loss(LossBatch(out, y, teacher))
    z, zt, yn = _z(out), _z(teacher), y.numpy()
    ce = sum(_np_ce(v, yn) for v in z)
    kd = sum(_np_kl_t(v, zt[2], 2.5) for v in z)
    assert parts["ce"].item() == pytest.approx(ce, rel=1e-6) and parts["kd"].item() == pytest.approx(kd, rel=1e-6)
    assert total.item() == pytest.approx(0.4 * ce + 0.6 * kd, rel=1e-6)


def test_method_loss_knows_its_name_and_the_exits_it_reads() -> None:
    byot = build_method_loss("byot", get_method("byot").resolve(), 3, 4, [2, 4, 6])
    assert byot.name == "byot" and byot.exits_used == [0, 1, 2] and not byot.needs_teacher
    plain = build_method_loss("plain", {}, 3, 4, [2, 4, 6])
    assert plain.exits_used == [2]
    heads = build_method_loss("plain", {}, 3, 4, [2, 4, 6], components=[Component("ce", 1.0, "ce", {"exits": "shallow"})])
    assert heads.exits_used == [0, 1] and heads.labels == ["ce"]
    out, y = _random_output(seed=8)
    z, yn = _z(out), y.numpy()
    assert heads(LossBatch(out, y))[0].item() == pytest.approx(_np_ce(z[0], yn) + _np_ce(z[1], yn), rel=1e-6)


def test_a_method_with_only_zero_weights_is_refused() -> None:
    with pytest.raises(ValueError) as e:
        MethodLoss("x", {}, CTX, [Component("ce", 0.0, "ce")])
    assert str(e.value) == "method 'x' has no term with a non-zero weight"


def test_build_method_loss_passes_classes_and_channels_to_the_terms() -> None:
    tf = build_method_loss("tfkd-reg", get_method("tfkd-reg").resolve(correct_prob=0.3), 3, 4, [2, 4, 6])
    assert tf.terms[1].num_classes == 4  # 0.3 > 1/4 is accepted for 4 classes (it is not for 3)
    fk = build_method_loss("feature-kd", get_method("feature-kd").resolve(), 2, 3, [2, 4], [3, 3, 4])
    assert fk.needs_preacts and fk.terms[1].pairs == [(0, 1), (1, 2)]
    assert isinstance(fk.terms[1].connectors["0"], torch.nn.Sequential)  # 2 -> 3 channels
    assert isinstance(fk.terms[1].connectors["1"], torch.nn.Identity)  # 4 == 4
