"""sdedge: self-distilled multi-exit CNNs for anytime inference on edge devices.

This top-level package stays import-light on purpose: ``sdedge.runtime`` and ``sdedge.calibrate``
live under it and must import on a device that has no PyTorch, so nothing here imports torch.
"""
__version__ = "0.1.0"
