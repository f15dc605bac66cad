"""sdedge.export: checkpoint -> bundle (per-section ONNX, parity check, INT8 QDQ, TensorRT engines).

Public API::

    from sdedge.export import ExportConfig, export_bundle, build_engines
    result = export_bundle(ExportConfig(checkpoint="runs/x/best.pt", output="bundle/", int8=True))
    print(result.parity_table())
    build_engines("bundle/", precision="fp16")     # on the target, with TensorRT installed

Importing this package is cheap: torch, onnx and onnxruntime load inside the functions that need them.
"""
from __future__ import annotations

from .api import ExportConfig, ExportResult, export_bundle
from .tensorrt_build import EngineBuildResult, build_engines

__all__ = ["EngineBuildResult", "ExportConfig", "ExportResult", "build_engines", "export_bundle"]
