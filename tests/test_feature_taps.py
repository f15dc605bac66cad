"""Feature-distillation taps (``forward(x, return_preacts=True).preacts``) of every registered family.

Heo et al. 2019's partial L2 ("skip where student <= teacher <= 0") assumes each tap is the tensor a
ReLU is about to read: a BatchNorm output before its ReLU. What each family taps (``sdedge/models/base.py``):

========================== =================================================================================
family                     tap of section i (shape)
========================== =================================================================================
tiny, vgg*_bn              the section's last BN output, input of its last ReLU (section output's shape)
resnet*, resnext*          the input of the last block's output ReLU: the residual sum ``BN + shortcut``, not a
                           plain BN output (post-activation ResNets have no BN after the sum; Heo's ResNet
                           code taps this same sum); section output's shape
wrn*                       sections 1..K-1: the *next* section's first block's ``bn1`` output (its ``relu1``
                           reads it); section K: the final BN output (section output's shape; the raw residual
                           sum that sections 1..K-1 output is never read by a ReLU)
mobilenetv2                sections 1..K-1: the next section's first block's 1×1 expansion BN output (its
                           ReLU6 reads it): the section output's spatial size, ``6×`` its channels
                           (``MultiExitNet.preact_channels``); section K: the final BN output
========================== =================================================================================
"""
from __future__ import annotations

import pytest
import torch
from torch import nn

from sdedge.losses import LossBatch, build_term
from sdedge.losses.terms import TermContext
from sdedge.models import ModelConfig, build_model, list_backbones

# Tiny versions of every registered backbone (a new family must add itself here).
TINY: dict[str, dict] = {
    "tiny": {"width": 4},
    **{f"resnet{d}": {"width": 4} for d in (18, 34, 50, 101, 152)},
    **{f"vgg{d}_bn": {"width": 4} for d in (11, 13, 16, 19)},
    **{n: {"width": 4, "widen_factor": 1} for n in ("wrn16_4", "wrn28_10", "wrn40_4")},
    **{n: {"width": 4, "base_width": 16} for n in ("resnext29_8x64d", "resnext29_16x64d")},
    "mobilenetv2": {"width_mult": 0.25, "last_channels": 32},
}
RESIDUAL_SUM = ("resnet", "resnext")  # taps that are BN + shortcut, not a BN output
NEXT_BLOCK = ("wrn", "mobilenetv2")  # sections 1..K-1 tap the next block's BN


def _model(name: str, seed: int = 0) -> nn.Module:
    if name not in TINY:
        pytest.fail(f"backbone {name!r} is registered but has no tiny configuration in tests/test_feature_taps.py")
    torch.manual_seed(seed)
    net = build_model(ModelConfig(name, 10, 3, (32, 32), backbone_kwargs=TINY[name])).eval()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():  # non-trivial BN statistics and affine terms, so BN outputs are not just z-scores
        for m in net.modules():
            if isinstance(m, nn.BatchNorm2d):
                n = m.num_features
                m.running_mean.copy_(torch.randn(n, generator=g) * 0.3)
                m.running_var.copy_(torch.rand(n, generator=g) + 0.5)
                m.weight.copy_(torch.rand(n, generator=g) + 0.5)
                m.bias.copy_(torch.randn(n, generator=g) * 0.3)
    return net


def _run_with_bn_outputs(net: nn.Module, x: torch.Tensor):
    """``net(x, return_preacts=True)`` and a copy of every BN output (copied before in-place ReLUs)."""
    bn_out: dict[str, torch.Tensor] = {}
    hooks = [m.register_forward_hook(lambda _m, _i, o, n=n: bn_out.__setitem__(n, o.detach().clone()))
             for n, m in net.named_modules() if isinstance(m, nn.BatchNorm2d)]
    try:
        with torch.no_grad():
            out = net(x, return_preacts=True)
    finally:
        for h in hooks:
            h.remove()
    return out, bn_out


def test_every_registered_backbone_is_covered() -> None:
    assert set(list_backbones()) == set(TINY)


@pytest.mark.parametrize("name", sorted(TINY))
def test_taps_are_pre_relu_batchnorm_outputs(name: str) -> None:
    net = _model(name)
    x = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    out, bn_out = _run_with_bn_outputs(net, x)
    k = net.num_exits
    assert out.preacts is not None and len(out.preacts) == k

    with torch.no_grad():  # the section outputs, section by section
        f, section_out = x, []
        for s in net.sections:
            f = s(f)
            section_out.append(f)

    for i, tap in enumerate(out.preacts):
        where = f"{name} section {i + 1}"
        # pre-ReLU: both signs present (a post-ReLU map has no negative value)
        assert (tap < 0).any() and (tap > 0).any(), f"{where}: the tap has no negative value (post-ReLU?)"
        # shape: the section output's batch and spatial size; the declared tap channels
        assert tap.shape[0] == 4 and tap.shape[-2:] == section_out[i].shape[-2:], where
        assert tap.shape[1] == net.preact_channels[i], where
        if name == "mobilenetv2" and i < k - 1:  # the next block's expansion (t = 6)
            assert tap.shape[1] == 6 * net.section_channels[i], where
        else:
            assert tap.shape[1] == net.section_channels[i], where

        matches = [n for n, v in bn_out.items() if v.shape == tap.shape and torch.equal(v, tap)]
        declared = net._preact_bn_names[i]
        if name.startswith(RESIDUAL_SUM):
            # post-activation residual block: the tap is its last BN plus the shortcut, exactly
            assert not matches and declared is None, where
            block = net.sections[i][-1]
            last_bn = block.bn3 if hasattr(block, "bn3") else block.bn2
            bn_name = next(n for n, m in net.named_modules() if m is last_bn)
            with torch.no_grad():
                prev = section_out[i - 1] if i else x
                block_in = net.sections[i][:-1](prev)
                assert torch.equal(_block_sum(block, block_in), tap), where
                assert torch.equal(bn_out[bn_name] + block.shortcut(block_in), tap), where
        else:
            assert matches, f"{where}: the tap equals no BatchNorm output"
            if declared is not None or name.startswith(NEXT_BLOCK):  # tiny/VGG declare none: their own last BN
                assert declared in matches, f"{where}: the tap is not the declared BN {declared!r} ({matches})"
        if name.startswith(NEXT_BLOCK) and i < k - 1:
            # it is read in the next section, and it is not the raw section output the old taps took
            assert declared.startswith(f"sections.{i + 1}."), where
            assert not (tap.shape == section_out[i].shape and torch.equal(tap, section_out[i])), where
            # the next block really activates this tensor: relu(tap) is what its first conv reads
            relu_in = _relu_input_of(net, net._preact_modules[i], x)
            assert torch.equal(relu_in, tap), where


def _block_sum(block: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The residual sum of a post-activation ResNet block (the input of its ``relu_out``)."""
    got: list[torch.Tensor] = []
    h = block.relu_out.register_forward_pre_hook(lambda _m, a: got.append(a[0].clone()))
    try:
        block(x)
    finally:
        h.remove()
    return got[0]


def _relu_input_of(net: nn.Module, relu: nn.Module, x: torch.Tensor) -> torch.Tensor:
    got: list[torch.Tensor] = []
    h = relu.register_forward_pre_hook(lambda _m, a: got.append(a[0].clone()))
    try:
        with torch.no_grad():
            net(x)
    finally:
        h.remove()
    assert len(got) == 1, "the tap module runs once per forward"
    return got[0]


@pytest.mark.parametrize("name", ["resnet18", "resnext29_8x64d", "tiny", "vgg11_bn"])
def test_unchanged_families_tap_their_own_last_relu(name: str) -> None:
    """Post-activation families keep their taps: the ReLU that ends each section (ResNet unchanged)."""
    net = _model(name)
    for i, tap in enumerate(net._preact_modules):
        leaves = [m for m in net.sections[i].modules() if not list(m.children())]
        assert tap is leaves[-1] or tap is getattr(net.sections[i][-1], "relu_out", None), f"{name} {i + 1}"


@pytest.mark.parametrize("name", ["wrn16_4", "mobilenetv2"])
def test_capture_changes_nothing_and_gradients_flow(name: str) -> None:
    net = _model(name).train()
    x = torch.randn(4, 3, 32, 32)
    torch.manual_seed(0)
    a = net(x, return_preacts=True)
    net.eval()
    with torch.no_grad():
        ref = net(x).logits
        got = net(x, return_preacts=True).logits
    for r, g in zip(ref, got):
        assert torch.equal(r, g)
    net.train()
    loss = sum(p.pow(2).mean() for p in a.preacts)
    loss.backward()  # the copies taken before in-place ReLUs are differentiable
    bn = net.get_submodule(net._preact_bn_names[0])
    assert bn.weight.grad is not None and bn.weight.grad.abs().sum() > 0
    first = next(net.sections[0].parameters())
    assert first.grad is not None and first.grad.abs().sum() > 0


def test_preact_channels_follow_a_replaced_batchnorm() -> None:
    """Pruning replaces layers by name (``sdedge.models.reshape``): the channel count is read, not stored."""
    net = _model("mobilenetv2")
    name = net._preact_bn_names[0]
    parent, _, attr = name.rpartition(".")
    setattr(net.get_submodule(parent), attr, nn.BatchNorm2d(5))
    assert net.preact_channels[0] == 5


@pytest.mark.parametrize("student,teacher", [("resnet18", "mobilenetv2"), ("mobilenetv2", "wrn16_4")])
def test_partial_l2_runs_across_families_with_preact_channels(student: str, teacher: str) -> None:
    """The feature-KD connectors must be built from ``preact_channels`` (not ``section_channels``),
    which differ on MobileNetV2; with them, any student/teacher pair runs."""
    s, t = _model(student).train(), _model(teacher)
    x, y = torch.randn(4, 3, 32, 32), torch.randint(0, 10, (4,))
    term = build_term("partial_l2", TermContext(s.num_exits, 10, s.preact_channels, t.preact_channels))
    with torch.no_grad():
        t_out = t(x, return_preacts=True)
    v = term(LossBatch(s(x, return_preacts=True), y, t_out))
    assert torch.isfinite(v) and v.item() > 0
    v.backward()
