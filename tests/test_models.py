"""Backbone families and the multi-exit model: shapes, section-by-section runs, pre-activation taps,
declared strides, full-size parameter counts against the papers, config round trip, bad arguments."""
from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from sdedge.models import ModelConfig, build_model, get_backbone, list_backbones

# Tiny versions of every registered backbone (a new family must add itself here).
TINY: dict[str, dict] = {
    "tiny": {"width": 4},
    **{f"resnet{d}": {"width": 4} for d in (18, 34, 50, 101, 152)},
    **{f"vgg{d}_bn": {"width": 4} for d in (11, 13, 16, 19)},
    **{n: {"width": 4, "widen_factor": 1} for n in ("wrn16_4", "wrn28_10", "wrn40_4")},
    **{n: {"width": 4, "base_width": 16} for n in ("resnext29_8x64d", "resnext29_16x64d")},
    "mobilenetv2": {"width_mult": 0.25, "last_channels": 32},
}

# (in_channels, H, W, num_classes): Fashion-MNIST, CIFAR-100, the built-in digits example.
INPUTS = [(1, 28, 28, 10), (3, 32, 32, 100), (1, 16, 16, 10)]


def _tiny_model(name: str, c: int, h: int, w: int, n: int, seed: int = 0):
    if name not in TINY:
        pytest.fail(f"backbone {name!r} is registered but has no tiny configuration in tests/test_models.py TINY")
    torch.manual_seed(seed)
    return build_model(ModelConfig(name, n, c, (h, w), backbone_kwargs=TINY[name])).eval()


def _leaf_call_order(section: nn.Module, x: torch.Tensor) -> tuple[list[nn.Module], torch.Tensor]:
    """Run ``section`` on ``x`` and return the leaf modules in the order they were called."""
    order: list[nn.Module] = []
    leaves = [m for m in section.modules() if not list(m.children())]
    hooks = [m.register_forward_hook(lambda mod, _i, _o: order.append(mod)) for m in leaves]
    try:
        y = section(x)
    finally:
        for h in hooks:
            h.remove()
    return order, y


def _models_import_graph() -> dict[str, set[str]]:
    """Module -> the modules of ``sdedge.models`` it imports (``__init__`` is the package itself)."""
    import ast
    from pathlib import Path

    import sdedge.models

    folder = Path(sdedge.models.__file__).parent
    names = {p.stem for p in folder.glob("*.py")}
    graph: dict[str, set[str]] = {}
    for path in folder.glob("*.py"):
        imported: list[str] = []  # absolute module names, `from X import a, b` also as X.a, X.b
        for node in ast.walk(ast.parse(path.read_text("utf-8"))):
            if isinstance(node, ast.Import):
                imported += [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = ".".join((["sdedge", "models"][: 3 - node.level] if node.level else []) + [node.module or ""])
                base = base.strip(".")
                imported += [base] + [f"{base}.{a.name}" for a in node.names]
        deps = {m[len("sdedge.models."):].split(".")[0] if m != "sdedge.models" else "__init__"
                for m in imported if m == "sdedge.models" or m.startswith("sdedge.models.")}
        graph[path.stem] = deps & names
    return graph


def test_the_registry_imports_no_family_and_the_package_imports_them_all():
    """timm's layout: families import the registry and register themselves; the package imports the families."""
    graph = _models_import_graph()
    assert graph["registry"] == set(), "the registry must import no family (that made an import loop)"
    families = set(graph) - {"__init__", "base", "registry"}
    assert families <= graph["__init__"], f"sdedge/models/__init__.py does not import {families - graph['__init__']}"
    for mod, deps in graph.items():  # no import loop anywhere in the package
        seen, todo = set(), [d for d in deps if d != "__init__" or mod != "__init__"]
        while todo:
            d = todo.pop()
            assert d != mod, f"sdedge.models.{mod} imports itself through {sorted(seen)}"
            if d not in seen:
                seen.add(d)
                todo.extend(graph[d])


def test_every_way_in_sees_every_family():
    """Whichever module is imported first (the registry itself included), the families are registered."""
    import subprocess
    import sys

    code = ("import sys; from sdedge.models.registry import get_backbone, list_backbones, list_heads; "
            "assert 'tiny' in list_backbones() and list_heads() == ['bottleneck', 'byot-attention', 'byot-authors', "
            "'linear'], list_backbones(); "
            "print(len(list_backbones()))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert int(out.stdout) == len(TINY)


def test_every_backbone_has_a_tiny_config():
    assert set(list_backbones()) == set(TINY), "TINY must list exactly the registered backbones"
    for name in ("vgg11_bn", "vgg16_bn", "vgg19_bn", "wrn28_10", "wrn16_4", "wrn40_4",
                 "resnext29_8x64d", "resnext29_16x64d", "mobilenetv2", "resnet18", "tiny"):
        assert name in list_backbones()


@pytest.mark.parametrize("name", sorted(TINY))
@pytest.mark.parametrize("c,h,w,n", INPUTS, ids=["1x28x28", "3x32x32", "1x16x16"])
@torch.no_grad()
def test_exits_sections_and_preacts(name, c, h, w, n):
    model = _tiny_model(name, c, h, w, n)
    k = model.num_exits
    assert k >= 3 and len(model.exits) == k
    x = torch.randn(2, c, h, w)
    out = model(x)
    assert len(out.logits) == len(out.features) == k and out.preacts is None
    for lg, ft in zip(out.logits, out.features):
        assert lg.shape == (2, n) and torch.isfinite(lg).all()
        assert ft.shape == (2, model.feature_dim)
    assert model.feature_dim == model.section_channels[-1]

    # Section by section gives the same logits; each section's output has the declared channels.
    f, section_outs = x, []
    for i in range(k):
        f = model.sections[i](f)
        assert f.shape[:2] == (2, model.section_channels[i]), f"section {i + 1}"
        section_outs.append(f)
        torch.testing.assert_close(model.exits[i](f), out.logits[i], rtol=1e-5, atol=1e-5)

    # Pre-activation taps (tests/test_feature_taps.py checks them against the BN outputs): a ReLU(6)
    # whose input is the section's pre-ReLU feature. Post-activation sections tap their own last op (not
    # in-place; applying it to the captured map reproduces the section output); pre-activation WRN and
    # MobileNetV2's linear bottlenecks tap the next section's first BN-ReLU (same spatial size; MobileNetV2's
    # has the expansion's channels, model.preact_channels).
    pre = model(x, return_preacts=True)
    assert pre.preacts is not None and len(pre.preacts) == k
    for i, t in enumerate(pre.preacts):
        tap = model._preact_modules[i]
        order, y = _leaf_call_order(model.sections[i], section_outs[i - 1] if i else x)
        assert isinstance(tap, (nn.ReLU, nn.ReLU6))
        assert t.shape[0] == y.shape[0] and t.shape[-2:] == y.shape[-2:] and t.shape[1] == model.preact_channels[i]
        assert (t < 0).any(), f"{name}: section {i + 1} preact has no negative value (post-ReLU?)"
        if order[-1] is tap:
            assert not getattr(tap, "inplace", False) and t.shape == y.shape
            torch.testing.assert_close(tap(t), y, rtol=1e-5, atol=1e-5)
        else:
            assert i < k - 1 and any(m is tap for m in model.sections[i + 1].modules()), \
                f"{name}: the pre-activation tap of section {i + 1} is neither its last op nor the next section's"
    for a, b in zip(pre.logits, out.logits):  # capturing does not change the result
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("name", sorted(TINY))
@torch.no_grad()
def test_declared_strides_match_feature_maps(name):
    model = _tiny_model(name, 3, 32, 32, 10)
    f = torch.randn(1, 3, 32, 32)
    for i, (section, stride) in enumerate(zip(model.sections, model.section_strides)):
        f = section(f)
        assert f.shape[-2:] == (32 // stride, 32 // stride), f"{name} section {i + 1}: stride {stride}"
    assert model.section_strides == sorted(model.section_strides)


def _backbone_params(name: str, **kw) -> int:
    with torch.device("meta"):  # no memory, no init: counts only
        bb = get_backbone(name)(in_channels=3, **kw)
    return sum(p.numel() for s in bb.sections for p in s.parameters())


# Published parameter counts of the full-size CIFAR networks (millions; they include a 10-class FC
# of at most 13k weights, which the backbone count leaves out).
PAPER_PARAMS_M = {
    "resnet18": 11.17,  # CIFAR ResNet-18 as in the BYOT code (11 173 962 with a 10-class FC)
    "resnet50": 23.52,
    "wrn16_4": 2.7,  # Zagoruyko & Komodakis 2016, tables 4-6
    "wrn40_4": 8.9,
    "wrn28_10": 36.5,
    "resnext29_8x64d": 34.4,  # Xie et al. 2017, table 7
    "resnext29_16x64d": 68.1,
    "vgg16_bn": 14.7,  # CIFAR VGG-16 with BN, one FC
    "vgg19_bn": 20.0,
    "mobilenetv2": 2.24,  # ImageNet MobileNetV2 3.50M minus its 1.28M classifier
}


@pytest.mark.parametrize("name", sorted(PAPER_PARAMS_M))
def test_full_size_parameter_counts(name):
    got = _backbone_params(name) / 1e6
    want = PAPER_PARAMS_M[name]
    assert abs(got - want) <= 0.02 * want, f"{name}: {got:.3f}M parameters, the paper has {want}M"


def test_resnet18_width_64_is_the_cifar_resnet18():
    n = _backbone_params("resnet18")
    # 11 173 962 (CIFAR ResNet-18 with a 512x10 FC) - 5 130 (that FC) = 11 168 832
    assert n == 11_168_832
    assert _backbone_params("resnet18", width=32) < n / 3.5  # width scales the count ~quadratically


@pytest.mark.parametrize("name,kw,sections,channels,strides", [
    ("vgg16_bn", {}, 4, [128, 256, 512, 512], [2, 4, 8, 16]),
    ("vgg16_bn", {"num_sections": 5}, 5, [64, 128, 256, 512, 512], [1, 2, 4, 8, 16]),
    ("wrn28_10", {}, 3, [160, 320, 640], [1, 2, 4]),
    ("resnext29_8x64d", {}, 3, [256, 512, 1024], [1, 2, 4]),
    ("mobilenetv2", {}, 4, [24, 32, 96, 1280], [1, 2, 4, 8]),
    ("mobilenetv2", {"width": 16}, 4, [16, 16, 48, 1280], [1, 2, 4, 8]),
])
def test_full_size_section_layout(name, kw, sections, channels, strides):
    with torch.device("meta"):
        bb = get_backbone(name)(in_channels=3, **kw)
    assert (len(bb.sections), bb.channels, bb.strides) == (sections, channels, strides)
    assert len(bb.preacts) == sections


def test_model_config_round_trip_rebuilds_the_same_model():
    cfg = ModelConfig("wrn16_4", 10, 1, (28, 28), head="bottleneck",
                      backbone_kwargs={"width": 4, "widen_factor": 1}, head_kwargs={"reduction": 4})
    back = ModelConfig.from_json(json.loads(json.dumps(cfg.to_json())))
    assert back == cfg and back.image_size == (28, 28)
    torch.manual_seed(1)
    a = build_model(cfg).eval()
    b = build_model(back).eval()
    b.load_state_dict(a.state_dict())  # same architecture: every key and shape matches
    x = torch.randn(2, 1, 28, 28)
    with torch.no_grad():
        for la, lb in zip(a(x).logits, b(x).logits):
            torch.testing.assert_close(la, lb)


@pytest.mark.parametrize("name,kw,match", [
    ("wrn28_10", {"depth": 27}, "6n\\+4"),
    ("vgg11_bn", {"num_sections": 3}, "4 or 5"),
    ("mobilenetv2", {"width": 16, "width_mult": 0.5}, "not both"),
    ("mobilenetv2", {"width_mult": 0}, "positive"),
    ("resnext29_8x64d", {"width": 2, "base_width": 16}, "at least 64"),
    ("no_such_net", {}, "choose one of"),
])
def test_bad_backbone_arguments_are_refused(name, kw, match):
    with pytest.raises(ValueError, match=match):
        get_backbone(name)(in_channels=3, **kw)


def test_unknown_backbone_kwarg_is_a_type_error():
    with pytest.raises(TypeError, match="unexpected keyword argument 'widen_factor'"):
        get_backbone("vgg19_bn")(in_channels=3, widen_factor=2)


@pytest.mark.parametrize("name", sorted(TINY))
def test_trains_with_preacts_in_the_trainers_memory_format(name):
    # Training mode, the memory format the trainer picks on this CPU (channels_last where it is sound: see
    # sdedge.train.config.default_channels_last), preacts captured: every weight gets a gradient.
    from sdedge.train.config import default_channels_last

    fmt = torch.channels_last if default_channels_last("cpu") else torch.contiguous_format
    model = _tiny_model(name, 3, 32, 32, 10).train().to(memory_format=fmt)
    x = torch.randn(4, 3, 32, 32).to(memory_format=fmt)
    out = model(x, return_preacts=True)
    loss = sum(nn.functional.cross_entropy(lg, torch.arange(4)) for lg in out.logits)
    loss = loss + sum(p.pow(2).mean() for p in out.preacts)
    loss.backward()
    for pname, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), pname


@pytest.mark.parametrize("name", ["vgg11_bn", "wrn16_4", "resnext29_8x64d", "mobilenetv2"])
def test_new_families_export_to_onnx_sections(name):
    # Each family traces with the bundle exporter and its chained ONNX sections give the PyTorch logits.
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    from sdedge.export.onnx_sections import export_graphs

    model = _tiny_model(name, 1, 16, 16, 10)
    for m in model.modules():  # non-trivial BatchNorm statistics, so folding errors would show
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
    graphs = export_graphs(model, (1, 16, 16))
    assert len(graphs.sections) == model.num_exits
    x = torch.randn(3, 1, 16, 16)
    with torch.no_grad():
        ref = model(x).logits
    feed = x.numpy()
    for k, proto in enumerate(graphs.sections):
        sess = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
        outs = dict(zip([o.name for o in sess.get_outputs()], sess.run(None, {sess.get_inputs()[0].name: feed})))
        logits = next(v for n, v in outs.items() if n.startswith("logits"))
        torch.testing.assert_close(torch.from_numpy(logits), ref[k], rtol=1e-4, atol=1e-4)
        if k < model.num_exits - 1:
            feed = next(v for n, v in outs.items() if n.startswith("features"))


def test_channels_last_is_the_default_only_where_it_is_sound(monkeypatch):
    import sdedge.common.hostinfo as hostinfo
    from sdedge.train.config import default_channels_last

    assert default_channels_last(torch.device("cuda", 0)) and default_channels_last("cuda")
    monkeypatch.setattr(hostinfo, "cpu_flags", lambda *a: {"avx2": True, "avx512f": False})
    assert not default_channels_last(torch.device("cpu"))  # oneDNN's AVX2 channels_last backward crashed
    monkeypatch.setattr(hostinfo, "cpu_flags", lambda *a: {"avx2": True, "avx512f": True})
    assert default_channels_last("cpu")
    monkeypatch.setattr(hostinfo, "cpu_flags", lambda *a: {})  # unknown CPU (no /proc/cpuinfo): the safe format
    assert not default_channels_last("cpu")
