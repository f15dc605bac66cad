"""MAC and parameter counts read from exported ONNX graphs (``shared/DESIGN.md`` section 8).

Counts are per sample (batch 1) and cover what the graph really computes after BN folding:

* ``Conv`` / ``ConvTranspose``: output elements × (input channels / groups) × kernel area;
* ``Gemm``: M × N × K; ``MatMul``: output elements × the contracted dimension;
* everything else (ReLU, Add, pooling, reshapes, a leftover BatchNormalization) counts 0 MACs, the
  usual convention (fvcore, ptflops), since those are memory-bound, not multiply-accumulate bound.

Parameters are the elements of the graph's floating-point initializers (weights and folded biases;
integer shape constants are not parameters). Shapes come from ONNX shape inference; the symbolic batch
dimension is taken as 1. A node whose shapes cannot be inferred makes the count ``None`` rather than a
guess.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

_FLOAT_TYPES = {1, 10, 11, 16}  # FLOAT, FLOAT16, DOUBLE, BFLOAT16


@dataclass
class GraphCost:
    macs: int | None
    params: int
    by_op: dict[str, int] = field(default_factory=dict)  # MACs per op type


def _shapes(model: Any) -> dict[str, list[int | None]]:
    import onnx

    inferred = onnx.shape_inference.infer_shapes(model)
    g = inferred.graph
    out: dict[str, list[int | None]] = {}
    for v in list(g.input) + list(g.output) + list(g.value_info):
        t = v.type.tensor_type
        if t.HasField("shape"):
            out[v.name] = [d.dim_value if d.HasField("dim_value") else None for d in t.shape.dim]
    for init in g.initializer:
        out[init.name] = list(init.dims)
    return out


def _per_sample(shape: list[int | None] | None) -> list[int] | None:
    """The shape with the leading (batch) dimension set to 1; None if another dimension is unknown."""
    if shape is None:
        return None
    dims = [1 if (i == 0 and d is None) else d for i, d in enumerate(shape)]
    return None if any(d is None for d in dims) else [int(d) for d in dims]  # type: ignore[arg-type]


def _attr(node: Any, name: str, default: Any) -> Any:
    import onnx

    for a in node.attribute:
        if a.name == name:
            return onnx.helper.get_attribute_value(a)
    return default


def count(model: Any) -> GraphCost:
    """MACs (per sample) and parameters of an ONNX ``ModelProto``."""
    shapes = _shapes(model)
    params = sum(int(np.prod(list(i.dims), dtype=np.int64)) for i in model.graph.initializer
                 if i.data_type in _FLOAT_TYPES)
    by_op: dict[str, int] = {}
    unknown = False
    for node in model.graph.node:
        op = node.op_type
        if op not in ("Conv", "ConvTranspose", "Gemm", "MatMul"):
            continue
        macs = None
        if op in ("Conv", "ConvTranspose"):
            w = shapes.get(node.input[1])
            x = _per_sample(shapes.get(node.input[0]))
            y = _per_sample(shapes.get(node.output[0]))
            if w is not None and y is not None and x is not None and None not in w:
                kernel = int(np.prod(w[2:], dtype=np.int64))
                if op == "Conv":  # W: [M, C/group, k...]: each output element sums C/group × k products
                    macs = int(np.prod(y, dtype=np.int64)) * int(w[1]) * kernel
                else:  # W: [C, M/group, k...]; every input element scatters into M/group × k outputs
                    macs = int(np.prod(x, dtype=np.int64)) * int(w[1]) * kernel
        elif op == "Gemm":
            a = _per_sample(shapes.get(node.input[0]))
            y = _per_sample(shapes.get(node.output[0]))
            if a is not None and y is not None and len(a) == 2:
                k = a[0] if int(_attr(node, "transA", 0)) else a[1]
                macs = int(y[0]) * int(y[1]) * int(k)
        else:  # MatMul
            a = _per_sample(shapes.get(node.input[0]))
            y = _per_sample(shapes.get(node.output[0]))
            if a is not None and y is not None:
                macs = int(np.prod(y, dtype=np.int64)) * int(a[-1])
        if macs is None:
            unknown = True
            continue
        by_op[op] = by_op.get(op, 0) + macs
    return GraphCost(None if unknown else sum(by_op.values()), params, by_op)
