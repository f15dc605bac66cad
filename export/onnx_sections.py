"""PyTorch multi-exit model -> one ONNX graph per section, plus ``full.onnx``.

Exporter: the ``torch.export``-based exporter (``torch.onnx.export(..., dynamo=True)``), not the
TorchScript one. Reasons, measured with torch 2.14 on the registered backbones:

* the TorchScript exporter is deprecated (it warns "will be removed" on every call); a toolkit that
  users pin for years should not start on it;
* the dynamo exporter's onnxscript optimizer folds every BatchNorm that follows a Conv into the Conv's
  weights and bias (BN in eval mode), removes identities and constant-folds shapes, so the graphs are
  Conv/Relu/Add/Gemm only; the TorchScript output kept Identity nodes for shared constants;
* it names a dynamic dimension (``batch``) from :class:`torch.export.Dim` and keeps static C/H/W.

Its costs: it needs opset >= 18 (older opsets go through a version converter that fails on
ReduceMean), it writes external ``.data`` files unless told ``external_data=False``, and a trace takes
seconds, not milliseconds. To pay the trace once, the whole network is exported **once** as a graph
with every ``features_k`` and ``logits_k`` as outputs; the section graphs and ``full.onnx`` are then
cut out of it with :class:`onnx.utils.Extractor` (the nodes between a section's input and outputs,
with only the initializers they use). Every cut is checked with ``onnx.checker.check_model(full_check=True)``.

Opset 18 is the default: the lowest the exporter emits natively, read by ONNX Runtime >= 1.14 and
TensorRT >= 8.6 (JetPack 6 ships TensorRT 8.6/10.x). The IR version is lowered to the lowest one the
opset allows (8 for opset 18) so older runtimes load the files. Node metadata the exporter adds
(source stack traces with local paths, FX node dumps) is stripped: files are smaller and the same
checkpoint exports to the same bytes. BatchNorms that do not follow a Conv (none in the registered
families) stay as ``BatchNormalization`` nodes, which every runtime executes.
"""
from __future__ import annotations

import contextlib
import io
import warnings
from dataclasses import dataclass
from typing import Any

from ..common.errors import ExportError
from ..runtime.manifest import features_name, input_name, logits_name

DEFAULT_OPSET = 18
MIN_OPSET = 18
MAX_PROTO_BYTES = 2**31 - 1  # protobuf's limit for one file without external data


@dataclass
class OnnxGraphs:
    """The cut graphs: ``sections[k-1]`` is section k; ``full`` is image -> deepest logits."""

    sections: list[Any]  # onnx.ModelProto
    full: Any  # onnx.ModelProto
    opset: int
    remaining_batchnorms: int  # BatchNormalization nodes left after folding (over all sections)


def output_names(num_sections: int) -> list[str]:
    names = []
    for k in range(1, num_sections + 1):
        if k < num_sections:
            names.append(features_name(k))
        names.append(logits_name(k))
    return names


def _all_exits_module(model: Any) -> Any:
    import torch

    class AllExits(torch.nn.Module):
        """Image -> (features_1, logits_1, …, features_{K-1}, logits_{K-1}, logits_K)."""

        def __init__(self, net: Any) -> None:
            super().__init__()
            self.sections = net.sections
            self.exits = net.exits

        def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
            outs = []
            last = len(self.sections) - 1
            for k, (section, head) in enumerate(zip(self.sections, self.exits)):
                x = section(x)
                if k < last:
                    outs.append(x)
                outs.append(head(x))
            return tuple(outs)

    return AllExits(model).eval()


def _strip_metadata(model: Any) -> None:
    """Drop exporter debug metadata (stack traces, FX dumps) from nodes, values and the graph."""
    g = model.graph
    for node in g.node:
        del node.metadata_props[:]
        node.doc_string = ""
    for coll in (g.input, g.output, g.value_info, g.initializer):
        for v in coll:
            if hasattr(v, "metadata_props"):
                del v.metadata_props[:]
            v.doc_string = ""
    del g.metadata_props[:]
    del model.metadata_props[:]
    g.doc_string = ""


def _trace(model: Any, image_shape: tuple[int, int, int], opset: int) -> Any:
    import torch

    wrapper = _all_exits_module(model)
    example = torch.randn(2, *image_shape)  # batch 2: a batch of 1 would be specialised away
    names = output_names(len(model.sections))
    buf_out, buf_err = io.StringIO(), io.StringIO()
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(buf_out), contextlib.redirect_stderr(buf_err):
            warnings.simplefilter("ignore")
            program = torch.onnx.export(
                wrapper, (example,), None, dynamo=True, input_names=[input_name(1)], output_names=names,
                dynamic_shapes=({0: torch.export.Dim("batch")},), opset_version=opset, optimize=True,
                external_data=False, verbose=False, report=False, verify=False)
    except Exception as e:  # the exporter raises many types; name the step and keep its message
        detail = (buf_err.getvalue().strip().splitlines() or [""])[-1]
        raise ExportError(f"torch.onnx.export (dynamo) failed to trace the model: {type(e).__name__}: "
                          f"{str(e)[:800]} {detail}".strip()) from None
    proto = program.model_proto
    got_opset = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), None)
    if got_opset != opset:
        raise ExportError(f"the exporter produced opset {got_opset}, not the requested {opset}")
    return proto


def export_graphs(model: Any, image_shape: tuple[int, int, int], opset: int = DEFAULT_OPSET) -> OnnxGraphs:
    """Trace ``model`` (a :class:`~sdedge.models.MultiExitNet` in eval mode) once and cut it into sections."""
    import onnx
    from onnx.utils import Extractor

    if opset < MIN_OPSET:
        raise ExportError(f"opset {opset} is not supported: the dynamo exporter emits opset >= {MIN_OPSET} "
                          f"(ONNX Runtime >= 1.14 and TensorRT >= 8.6 read it); pass --opset {MIN_OPSET} or higher")
    if model.training:
        raise ExportError("the model must be in eval mode for export (BatchNorm running statistics are folded)")
    proto = _trace(model, image_shape, opset)
    _strip_metadata(proto)
    try:
        proto = onnx.shape_inference.infer_shapes(proto, check_type=True, strict_mode=True, data_prop=True)
    except Exception:  # strict mode trips on some ops; the cut only needs the types of section boundaries
        try:
            proto = onnx.shape_inference.infer_shapes(proto)
        except Exception as e:
            raise ExportError(f"ONNX shape inference failed on the exported graph: {e}") from None
    k_total = len(model.sections)
    extractor = Extractor(proto)
    ir = onnx.helper.find_min_ir_version_for(list(proto.opset_import), ignore_unknown=True)
    sections = []
    for k in range(1, k_total + 1):
        outs = ([features_name(k)] if k < k_total else []) + [logits_name(k)]
        sections.append(_cut(extractor, proto, ir, [input_name(k)], outs, f"section {k} of {k_total}"))
    full = _cut(extractor, proto, ir, [input_name(1)], [logits_name(k_total)], f"full network to exit {k_total}")
    remaining = sum(1 for s in sections for n in s.graph.node if n.op_type == "BatchNormalization")
    return OnnxGraphs(sections, full, opset, remaining)


def _cut(extractor: Any, proto: Any, ir: int, inputs: list[str], outputs: list[str], doc: str) -> Any:
    """The nodes of ``proto`` between ``inputs`` and ``outputs`` as a checked model of their own."""
    import onnx

    try:
        sub = extractor.extract_model(inputs, outputs)
    except Exception as e:
        raise ExportError(f"could not cut {doc} out of the exported graph: {e}") from None
    sub.ir_version = min(proto.ir_version, max(ir, 3))
    sub.producer_name, sub.producer_version = proto.producer_name, proto.producer_version
    sub.graph.name = doc.replace(" ", "_")
    sub.doc_string = f"sdedge {doc}"
    del sub.functions[:]
    try:
        onnx.checker.check_model(sub, full_check=True)
    except Exception as e:
        raise ExportError(f"onnx.checker rejected {doc}: {e}") from None
    if sub.ByteSize() > MAX_PROTO_BYTES:
        raise ExportError(f"{doc} is larger than 2 GiB, the limit of one ONNX file without external data")
    return sub


def split_head(section: Any, index: int, num_sections: int) -> tuple[Any, Any]:
    """Section ``index`` (< K, with its exit head, as :func:`export_graphs` cut it) as two graphs: the trunk
    (``input -> features_k``) and the exit head (``features_k -> logits_k``), bundle format version 2."""
    import onnx
    from onnx.utils import Extractor

    if not 1 <= index < num_sections:
        raise ExportError(f"only sections 1..{num_sections - 1} have a head to split off, not section {index}")
    extractor = Extractor(section)
    ir = onnx.helper.find_min_ir_version_for(list(section.opset_import), ignore_unknown=True)
    trunk = _cut(extractor, section, ir, [input_name(index)], [features_name(index)],
                 f"section {index} of {num_sections} without its exit head")
    head = _cut(extractor, section, ir, [features_name(index)], [logits_name(index)],
                f"exit head {index} of {num_sections}")
    return trunk, head


def tensor_shape(model: Any, name: str) -> list[int | None]:
    """Shape of graph input/output ``name``: ints for static dims, None for symbolic ones (the batch)."""
    for v in list(model.graph.input) + list(model.graph.output):
        if v.name == name:
            dims = v.type.tensor_type.shape.dim
            return [d.dim_value if d.HasField("dim_value") else None for d in dims]
    raise ExportError(f"graph has no input or output named {name!r}")


def save_model(model: Any, path: Any) -> bytes:
    """Serialize to one file (no external data) and return the bytes written."""
    data = model.SerializeToString()
    with open(path, "wb") as f:
        f.write(data)
    return data
