"""The assembled ``byot`` MethodLoss (``build_method_loss("byot", ...)``), not its terms one by one.

With non-default α, T and λ, the total the trainer back-propagates must equal the BYOT formula computed
here by hand (numpy, written independently of ``sdedge.losses``)::

    CE(z_K) + Σ_{i<K} [ (1-α)·CE(z_i) + α·T²·KL(softmax(z_K/T) ‖ softmax(z_i/T)) + λ·mean((f_i - f_K)²) ]

and its gradient must reach the shallow exits through every term but the deepest exit only through its
own CE: the KD and hint targets are detached (the teacher learns from the labels, not from its students).
The terms compute in float32 (AMP safety), so float64 inputs match the hand values to ~1e-7.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from sdedge.losses import LossBatch, build_method_loss, get_method
from sdedge.models import ModelConfig, MultiExitOutput, build_model

ALPHA, T, LAM = 0.55, 2.5, 0.21  # none is byot's default (0.3, 3.0, 0.03)
K, B, C, D = 4, 6, 5, 7  # exits, batch, classes, feature width


def _log_softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=1, keepdims=True))


def _by_hand(z: list[np.ndarray], f: list[np.ndarray], y: np.ndarray, a: float, t: float, lam: float) -> float:
    def ce(v):
        return -_log_softmax(v)[np.arange(len(y)), y].mean()

    def kl(student, teacher):  # T²·KL(softmax(teacher/T) ‖ softmax(student/T)), mean over the batch
        lq, lp = _log_softmax(teacher / t), _log_softmax(student / t)
        return (np.exp(lq) * (lq - lp)).sum(axis=1).mean() * t * t

    deep = len(z) - 1
    total = ce(z[deep])
    for i in range(deep):
        total += (1 - a) * ce(z[i]) + a * kl(z[i], z[deep]) + lam * ((f[i] - f[deep]) ** 2).mean()
    return float(total)


def _output(seed: int = 0) -> tuple[MultiExitOutput, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    logits = [(torch.randn(B, C, generator=g, dtype=torch.float64) * 2).requires_grad_() for _ in range(K)]
    feats = [torch.rand(B, D, generator=g, dtype=torch.float64).requires_grad_() for _ in range(K)]
    return MultiExitOutput(logits, feats), torch.randint(0, C, (B,), generator=g)


def _loss(params: dict | None = None):
    params = params if params is not None else {"alpha": ALPHA, "temperature": T, "hint_weight": LAM}
    return build_method_loss("byot", params, K, C, [D] * K)


def test_params_are_not_the_defaults() -> None:
    d = get_method("byot").defaults
    assert (d["alpha"], d["temperature"], d["hint_weight"]) != (ALPHA, T, LAM)
    assert ALPHA != d["alpha"] and T != d["temperature"] and LAM != d["hint_weight"]


@pytest.mark.parametrize("via", ["dict", "resolve"])
def test_assembled_total_equals_the_formula(via: str) -> None:
    out, y = _output()
    given = {"alpha": ALPHA, "temperature": T, "hint_weight": LAM}
    params = given if via == "dict" else get_method("byot").resolve(**given)
    total, parts = _loss(params)(LossBatch(out, y))
    z = [v.detach().numpy() for v in out.logits]
    f = [v.detach().numpy() for v in out.features]
    want = _by_hand(z, f, y.numpy(), ALPHA, T, LAM)
    assert total.item() == pytest.approx(want, rel=1e-6)
    # and it is not the value at the defaults (the parameters really reached the terms)
    default = _by_hand(z, f, y.numpy(), 0.3, 3.0, 0.03)
    assert total.item() != pytest.approx(default, rel=1e-3)
    # the parts are unweighted and recombine into the total with the method's weights
    assert set(parts) == {"ce_deep", "ce", "kd", "hint"}
    recombined = parts["ce_deep"] + (1 - ALPHA) * parts["ce"] + ALPHA * parts["kd"] + LAM * parts["hint"]
    assert recombined.item() == pytest.approx(total.item(), rel=1e-6)


def test_gradients_reach_shallow_exits_and_not_the_deepest_through_kd_or_hint() -> None:
    out, y = _output(seed=1)
    total, _ = _loss()(LossBatch(out, y))
    total.backward()
    z = [v.detach() for v in out.logits]
    f = [v.detach() for v in out.features]
    onehot = F.one_hot(y, C).double()

    # deepest exit: exactly the gradient of its own CE, (softmax(z_K) - onehot) / B; nothing from KD or hint
    assert torch.allclose(out.logits[-1].grad, (F.softmax(z[-1], 1) - onehot) / B, rtol=1e-5, atol=1e-8)
    assert out.features[-1].grad is None  # the deepest feature is only ever a (detached) hint target

    # shallow exits: (1-α)·CE + α·T²·KL gives (1-α)(p_i - y)/B + α·T·(softmax(z_i/T) - softmax(z_K/T))/B
    q = F.softmax(z[-1] / T, 1)
    for i in range(K - 1):
        want = (1 - ALPHA) * (F.softmax(z[i], 1) - onehot) / B + ALPHA * T * (F.softmax(z[i] / T, 1) - q) / B
        assert torch.allclose(out.logits[i].grad, want, rtol=1e-5, atol=1e-8), f"exit {i + 1} logits"
        want_f = LAM * 2 * (f[i] - f[-1]) / f[i].numel()
        assert torch.allclose(out.features[i].grad, want_f, rtol=1e-5, atol=1e-8), f"exit {i + 1} features"
        assert out.logits[i].grad.abs().sum() > 0 and out.features[i].grad.abs().sum() > 0


def test_on_a_real_network_the_deepest_exit_learns_only_from_its_own_ce() -> None:
    """Through a real multi-exit net: the deepest classifier's gradient under the whole BYOT loss equals
    its gradient under CE(deepest) alone; the shallow heads get gradients from KD and hint too."""
    torch.manual_seed(0)
    net = build_model(ModelConfig("tiny", C, 3, (16, 16), backbone_kwargs={"width": 4})).train()
    x, y = torch.randn(B, 3, 16, 16), torch.randint(0, C, (B,))
    k = net.num_exits
    loss = build_method_loss("byot", {"alpha": ALPHA, "temperature": T, "hint_weight": LAM}, k, C,
                             net.section_channels)

    def grads(fn) -> dict[str, torch.Tensor]:
        net.zero_grad(set_to_none=True)
        fn(net(x)).backward()
        return {n: p.grad.clone() for n, p in net.named_parameters() if p.grad is not None}

    full = grads(lambda out: loss(LossBatch(out, y))[0])
    ce_deep = grads(lambda out: F.cross_entropy(out.logits[-1], y))
    deepest_fc = [n for n in full if n.startswith(f"exits.{k - 1}.")]
    assert deepest_fc, "the deepest exit has parameters"
    for n in deepest_fc:
        torch.testing.assert_close(full[n], ce_deep[n], rtol=1e-5, atol=1e-7)

    # without KD and hint (α = λ = 0) a shallow head's gradient differs from the full loss's
    plain = build_method_loss("byot", {"alpha": 0.0, "temperature": T, "hint_weight": 0.0}, k, C, net.section_channels)
    ce_only = grads(lambda out: plain(LossBatch(out, y))[0])
    for i in range(k - 1):
        names = [n for n in full if n.startswith(f"exits.{i}.")]
        assert names and all(full[n].abs().sum() > 0 for n in names)
        assert any(not torch.allclose(full[n], ce_only[n]) for n in names), f"exit {i + 1} gets no KD/hint gradient"
