"""Exit-head kinds: the BYOT authors' head (``byot-authors``) and the journal version's attention head
(``byot-attention``): shapes, structure, gradients, training through the CLI config, ONNX export."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from sdedge.models import ModelConfig, build_model, get_head, list_heads

NEW_HEADS = ("byot-authors", "byot-attention")
# (backbone, kwargs, input H=W): odd maps (28 -> 7x7 on ResNet section 3), five sections, a wide stride ratio
CASES = [
    ("resnet18", {"width": 4}, 28),
    ("resnet18", {"width": 4}, 32),
    ("vgg11_bn", {"width": 4, "num_sections": 5}, 32),
    ("mobilenetv2", {"width_mult": 0.25, "last_channels": 32}, 32),
    ("wrn16_4", {"width": 4, "widen_factor": 1}, 16),
    ("tiny", {"width": 4}, 16),
]


def _model(backbone: str, kw: dict, size: int, head: str, channels: int = 3, seed: int = 0):
    torch.manual_seed(seed)
    return build_model(ModelConfig(backbone, 10, channels, (size, size), head=head, backbone_kwargs=kw))


def test_heads_are_registered() -> None:
    assert set(NEW_HEADS) | {"bottleneck", "linear"} <= set(list_heads())
    for h in NEW_HEADS:
        assert get_head(h) is not None


@pytest.mark.parametrize("head", NEW_HEADS)
@pytest.mark.parametrize("backbone,kw,size", CASES)
def test_head_shapes_and_interface(head: str, backbone: str, kw: dict, size: int) -> None:
    net = _model(backbone, kw, size, head).eval()
    x = torch.randn(3, 3, size, size)
    with torch.no_grad():
        out = net(x)
        f = x
        for i in range(net.num_exits):
            f = net.sections[i](f)
            e = net.exits[i]
            emb = e.embed(f)
            assert emb.shape == (3, net.feature_dim)  # the deepest width, for BYOT's hint
            torch.testing.assert_close(e(f), e.fc(emb))
            torch.testing.assert_close(out.logits[i], e(f))
            assert out.logits[i].shape == (3, 10) and torch.isfinite(out.logits[i]).all()
    for e in net.exits[:-1]:
        assert type(e) is get_head(head)


@pytest.mark.parametrize("head", NEW_HEADS)
def test_every_head_parameter_gets_a_gradient(head: str) -> None:
    net = _model("resnet18", {"width": 4}, 28, head).train()
    out = net(torch.randn(4, 3, 28, 28))
    loss = sum(nn.functional.cross_entropy(lg, torch.arange(4)) for lg in out.logits)
    loss = loss + sum((f - out.features[-1].detach()).pow(2).mean() for f in out.features[:-1])
    loss.backward()
    for name, p in net.exits.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, name


def test_byot_authors_head_is_the_authors_branch_bottleneck() -> None:
    """ResNet-18 (width 64 → deepest 512 channels at stride 8): 1×1 to 128, k×k stride k with k = 8, 4, 2,
    1×1 to 512, each with BN-ReLU; the strided conv lands on the deepest 4×4 map at 32×32."""
    net = _model("resnet18", {"width": 16}, 32, "byot-authors").eval()
    c_last = net.section_channels[-1]
    assert [e.kernel_size for e in net.exits[:-1]] == [8, 4, 2]
    f = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        for i, e in enumerate(net.exits[:-1]):
            f = net.sections[i](f)
            convs = [m for m in e.body if isinstance(m, nn.Conv2d)]
            assert [(c.kernel_size, c.stride) for c in convs] == [((1, 1), (1, 1)), ((e.kernel_size,) * 2,) * 2,
                                                                  ((1, 1), (1, 1))]
            assert [c.out_channels for c in convs] == [c_last // 4, c_last // 4, c_last]
            assert [type(m) for m in e.body] == [nn.Conv2d, nn.BatchNorm2d, nn.ReLU] * 3
            assert e.body[:4](f).shape[-2:] == (4, 4)  # the deepest section's size after one strided conv
    assert get_head("byot-authors")(16, 1, 64, 8, 10, reduction=8).body[0].out_channels == 8


def test_byot_attention_head_structure() -> None:
    net = _model("resnet18", {"width": 4}, 28, "byot-attention").eval()
    f = torch.randn(2, 3, 28, 28)
    with torch.no_grad():
        for i, e in enumerate(net.exits[:-1]):
            f = net.sections[i](f)  # 28, 14, 7 (odd: the upsampling goes back to the input's own size)
            m = e.attention.mask(f)
            assert m.shape == f.shape
            assert (m >= 0.5).all() and (m < 1).all()  # sigmoid of a ReLU output, as in the authors' code
            torch.testing.assert_close(e.attention(f), f * m)
            # one stride-2 separable conv per halving to the deepest stride; channels double, the last is C_K
            n = int(np.log2(net.section_strides[-1] // net.section_strides[i]))
            assert len(e.scala) == n
            assert e.scala[-1][-2].num_features == net.section_channels[-1]
            assert e.scala(e.attention(f)).shape[-2:] == (4, 4)  # 28 → 4 at stride 8 (ceil halvings)
    same = get_head("byot-attention")(8, 4, 16, 4, 10)  # equal strides: one stride-1 separable conv
    assert len(same.scala) == 1 and same.scala[0][0].stride == (1, 1)
    assert same(torch.randn(1, 8, 5, 5)).shape == (1, 10)


def test_cli_accepts_the_head_kinds(tmp_path: Path) -> None:
    from sdedge.cli import build_parser
    from sdedge.commands.train import config_from_args

    for head in NEW_HEADS:
        extra = ["--head-arg", "reduction=2"] if head == "byot-authors" else []
        args = build_parser().parse_args(["train", "-o", str(tmp_path), "--head", head, *extra])
        cfg = config_from_args(args)
        assert cfg.head == head and cfg.head_kwargs == ({"reduction": 2} if extra else {})


def _chain(sessions: list, x: np.ndarray) -> list[np.ndarray]:
    out, f = [], x
    for k, s in enumerate(sessions):
        res = s.run(None, {s.get_inputs()[0].name: f})
        out.append(res[-1])
        if k < len(sessions) - 1:
            f = res[0]
    return out


@pytest.mark.parametrize("head", NEW_HEADS)
@pytest.mark.parametrize("backbone,kw,size", [("tiny", {"width": 4}, 16), ("resnet18", {"width": 4}, 28)])
def test_exported_sections_match_pytorch(head: str, backbone: str, kw: dict, size: int, tmp_path: Path) -> None:
    """The bundle exporter's per-section graphs (dynamo trace, cut per section) run in ONNX Runtime and
    give PyTorch's logits at every exit, at batch 1 and 5."""
    ort = pytest.importorskip("onnxruntime")
    onnx = pytest.importorskip("onnx")
    from export_helpers import randomize_batchnorm
    from sdedge.export.onnx_sections import export_graphs

    net = _model(backbone, kw, size, head, channels=1)
    randomize_batchnorm(net)
    net.eval()
    graphs = export_graphs(net, (1, size, size))
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    sessions = []
    for k, g in enumerate(graphs.sections):
        p = tmp_path / f"s{k + 1}.onnx"
        onnx.save(g, str(p))
        sessions.append(ort.InferenceSession(str(p), so, providers=["CPUExecutionProvider"]))
    if head == "byot-authors":
        assert graphs.remaining_batchnorms == 0  # every BN follows a conv and is folded
    else:  # the attention's BN after a ReLU (authors' layout) stays, one per shallow exit
        assert graphs.remaining_batchnorms <= net.num_exits - 1
    rng = np.random.default_rng(0)
    for n in (1, 5):
        x = rng.standard_normal((n, 1, size, size)).astype(np.float32)
        with torch.no_grad():
            ref = [lg.numpy() for lg in net(torch.from_numpy(x)).logits]
        got = _chain(sessions, x)
        for e, (a, b) in enumerate(zip(ref, got), start=1):
            assert b.shape == (n, 10)
            assert np.abs(a - b).max() <= 1e-3, f"{head} {backbone} exit {e} batch {n}: {np.abs(a - b).max()}"


@pytest.mark.parametrize("head", NEW_HEADS)
def test_train_and_export_a_bundle_with_the_head(head: str, tmp_path: Path) -> None:
    """End to end: ``sdedge train --head KIND`` (one epoch on the built-in digits), then ``sdedge export``
    with its parity check; the checkpoint records the head kind."""
    pytest.importorskip("onnxruntime")
    from sdedge.checkpoint import model_from_checkpoint
    from sdedge.export import ExportConfig, export_bundle
    from sdedge.train import TrainConfig, train

    cfg = TrainConfig(dataset="digits", backbone="tiny", method="byot", epochs=1, batch_size=64, lr=0.1,
                      output=str(tmp_path / "run"), seed=0, device="cpu", progress=False,
                      backbone_kwargs={"width": 4}, head=head)
    ckpt = Path(train(cfg).best_checkpoint)
    model = model_from_checkpoint(ckpt)
    assert type(model.exits[0]) is get_head(head)
    res = export_bundle(ExportConfig(checkpoint=str(ckpt), output=str(tmp_path / "bundle"), threads=1,
                                     parity_samples=16))
    assert res.manifest["model"]["head"] == head
    assert all(r.max_abs_diff <= 1e-3 for r in res.parity)
