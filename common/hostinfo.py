"""Names of the machine a backend runs on, for device names and latency profile file names (no deps)."""
from __future__ import annotations

import glob
import os
import platform
import re


def slug(text: str, max_len: int = 48) -> str:
    """Lower-case filesystem-safe form: runs of anything but ``[a-z0-9.]`` become one ``-``."""
    s = re.sub(r"\((r|tm|c)\)", "", text.lower())
    s = re.sub(r"[^a-z0-9.]+", "-", s).strip("-.")
    return (s[:max_len].rstrip("-.") or "unknown")


def cpu_model() -> str:
    """The CPU's marketing name (``/proc/cpuinfo``), the board's model on ARM boards, or the arch."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip().lower() in ("model name", "hardware", "cpu model") and value.strip():
                    return value.strip()
    except OSError:
        pass
    return board_model() or platform.processor() or platform.machine() or "unknown"


# SIMD features ONNX Runtime's (MLAS's) float and integer kernels use: whether INT8 beats FP32 depends on them
SIMD_FLAGS = ("avx2", "avx512f", "avx512bw", "avx512vl", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_int8",
              "amx_tile", "asimddp", "i8mm")


def cpu_flags(cpuinfo: str = "/proc/cpuinfo") -> dict[str, bool]:
    """Which of :data:`SIMD_FLAGS` the CPU reports (``cpuinfo``; ``{}`` where it cannot be read)."""
    try:
        with open(cpuinfo, encoding="utf-8", errors="replace") as f:
            text = f.read()
    except OSError:
        return {}
    flags: set[str] = set()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip().lower() in ("flags", "features"):
            flags.update(value.split())
            break
    return {f: f in flags for f in SIMD_FLAGS}


def board_model() -> str | None:
    """The board's name from the device tree (Jetson, Raspberry Pi), or None elsewhere."""
    for path in ("/proc/device-tree/model", "/sys/firmware/devicetree/base/model"):
        try:
            with open(path, "rb") as f:
                text = f.read().rstrip(b"\x00").decode("utf-8", "replace").strip()
            if text:
                return text
        except OSError:
            pass
    return None


def available_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def nvidia_gpus() -> list[str]:
    """Names of the NVIDIA GPUs the driver exposes (empty where there is none or no driver)."""
    names = []
    for info in sorted(glob.glob("/proc/driver/nvidia/gpus/*/information")):
        try:
            with open(info, encoding="utf-8", errors="replace") as f:
                for line in f:
                    if line.lower().startswith("model:"):
                        names.append(line.split(":", 1)[1].strip())
                        break
        except OSError:
            pass
    if not names and os.path.exists("/dev/nvidia0"):
        names.append("nvidia-gpu")
    if not names and os.path.exists("/etc/nv_tegra_release"):  # Jetson: integrated GPU, no /proc entry
        names.append(board_model() or "nvidia-jetson")
    return names


def gpu_name(index: int = 0) -> str:
    gpus = nvidia_gpus()
    return gpus[index] if index < len(gpus) else f"gpu{index}"
