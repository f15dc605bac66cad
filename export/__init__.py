"""sdedge.export: checkpoint -> bundle (per-section ONNX, parity check, INT8, TensorRT engines)."""
