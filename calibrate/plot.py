"""Draw anytime curves as a PNG, and write their tables (CSV + JSON) beside it.

matplotlib is imported lazily (``pip install 'sdedge[plot]'``) with the non-interactive Agg backend,
so plotting works on a headless board. :func:`save_curves` writes ``<stem>.png``, ``<stem>.csv`` and
``<stem>.json`` atomically; the series names are those of :mod:`sdedge.calibrate.curves`.
"""
from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Any

from sdedge.common.atomic import write_bytes_atomic, write_text_atomic
from sdedge.common.jsonio import write_json_atomic
from sdedge.common.errors import SdedgeError

from .curves import CurveSet

_STYLE = {
    "confidence": dict(color="tab:blue", marker=".", linestyle="-", label="confidence policy (shared threshold, replayed)"),
    "confidence_live": dict(color="tab:blue", marker="o", linestyle="--", label="confidence policy (live)", mfc="none"),
    "deadline": dict(color="tab:orange", marker=None, linestyle="-", drawstyle="steps-post",
                     label="deadline policy (budget sweep, simulated from profile)"),
    "deadline_live": dict(color="tab:orange", marker="s", linestyle="--", label="deadline policy (live)", mfc="none"),
    "calibrated": dict(color="tab:red", marker="*", linestyle="none", markersize=14, label="calibrated thresholds"),
    "fixed_exit": dict(color="black", marker="D", linestyle="none", label="fixed exit"),
}


class PlotError(SdedgeError):
    """Plotting is unavailable (matplotlib missing) or the figure could not be written."""


def _pyplot() -> Any:
    try:
        import matplotlib

        matplotlib.use("Agg", force=True)
        import matplotlib.pyplot as plt
    except ImportError as e:
        raise PlotError(f"plotting needs matplotlib ({e}); install it with `pip install 'sdedge[plot]'`") from None
    return plt


def render_png(cs: CurveSet, title: str = "") -> bytes:
    """The anytime-curve figure as PNG bytes."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7.5, 5.0), dpi=120)
    try:
        unit = "ms" if cs.cost_unit == "ms" else "share of full MACs"
        for name in ("confidence", "deadline", "confidence_live", "deadline_live", "calibrated", "fixed_exit"):
            pts = cs.series.get(name)
            if not pts:
                continue
            style = dict(_STYLE[name])
            if name == "deadline":  # accuracy against the budget itself, a step per exit
                xs = [p["value"] for p in pts]
                style["label"] = "deadline policy: accuracy vs per-call budget (simulated)"
            else:
                xs = [p["mean_latency_ms"] for p in pts]
            ys = [100 * p["accuracy"] for p in pts]
            ax.plot(xs, ys, **style)
            if name == "fixed_exit":
                for p, x, y in zip(pts, xs, ys):
                    ax.annotate(f"exit {p['value']}", (x, y), textcoords="offset points", xytext=(6, -12), fontsize=8)
        if cs.full_latency_ms:
            ax.axvline(cs.full_latency_ms, color="grey", linewidth=0.8, linestyle=":")
        ax.set_xlabel(f"mean latency per image ({unit}); deadline: budget per call")
        ax.set_ylabel("accuracy (%)")
        ax.set_title(title or "anytime curve", fontsize=10)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7, loc="best", framealpha=0.8)
        fig.tight_layout()
        buf = io.BytesIO()
        fig.savefig(buf, format="png")
        return buf.getvalue()
    finally:
        plt.close(fig)


def save_curves(cs: CurveSet, path: str | os.PathLike, title: str = "", png: bool = True) -> dict[str, str]:
    """Write ``<stem>.png`` (when ``png``), ``<stem>.csv`` and ``<stem>.json``; return the paths written."""
    p = Path(path)
    stem = p.with_suffix("") if p.suffix.lower() in (".png", ".csv", ".json") else p
    if not stem.parent.exists():
        raise PlotError(f"cannot write the plot: folder {stem.parent} does not exist")
    out: dict[str, str] = {}
    if png:
        data = render_png(cs, title)
        target = stem.with_suffix(".png")
        write_bytes_atomic(target, data)
        out["png"] = str(target)
    write_text_atomic(stem.with_suffix(".csv"), cs.to_csv())
    out["csv"] = str(stem.with_suffix(".csv"))
    write_json_atomic(stem.with_suffix(".json"), cs.to_json())
    out["json"] = str(stem.with_suffix(".json"))
    return out
