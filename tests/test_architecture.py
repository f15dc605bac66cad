"""The layering of DESIGN.md §1, checked on the source: what each part may import.

* ``common/`` (``sdedge.common``) imports nothing else of the project, and no torch;
* ``runtime/`` and ``calibrate/`` import neither torch nor the training core nor export (a Jetson image
  often has no PyTorch);
* ``export/`` never imports calibrate or the server.

Imports are read with :mod:`ast` (module level and inside functions alike), relative imports resolved
against the package each folder maps to in ``setup.py``.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGES = {"sdedge": "sdedge", "export": "sdedge.export", "runtime": "sdedge.runtime",
            "calibrate": "sdedge.calibrate", "common": "sdedge.common"}
TORCH = ("torch", "torchvision")
CORE = ("sdedge.models", "sdedge.losses", "sdedge.train", "sdedge.data", "sdedge.checkpoint", "sdedge.quickstart",
        "sdedge.commands", "sdedge.cli")
PROJECT = ("sdedge",)


def _module_of(path: Path) -> str:
    rel = path.relative_to(REPO)
    parts = list(rel.with_suffix("").parts)
    pkg = PACKAGES[parts[0]]
    rest = parts[1:]
    if rest and rest[-1] == "__init__":
        rest = rest[:-1]
    return ".".join([pkg] + rest)


def imports_in(source: str, package: str) -> list[tuple[int, str]]:
    """Every module name ``source`` imports (absolute, relative ones resolved in ``package``), with line numbers."""
    out = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            name = node.module or ""
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                name = ".".join(base + ([node.module] if node.module else []))
                if not node.module:  # `from . import x`: x is a module of that package
                    out += [(node.lineno, f"{name}.{a.name}") for a in node.names]
                    continue
            out.append((node.lineno, name))
    return out


def imports_of(path: Path) -> list[tuple[int, str]]:
    mod = _module_of(path)
    package = mod if path.name == "__init__.py" else mod.rpartition(".")[0]
    return imports_in(path.read_text("utf-8"), package)


def _offenders(folder: str, forbidden: tuple[str, ...], allowed: tuple[str, ...] = ()) -> list[str]:
    files = sorted((REPO / folder).rglob("*.py"))
    assert files, folder
    bad = []
    for f in files:
        for line, name in imports_of(f):
            if any(name == a or name.startswith(a + ".") for a in allowed):
                continue
            if any(name == m or name.startswith(m + ".") for m in forbidden):
                bad.append(f"{f.relative_to(REPO)}:{line} imports {name}")
    return bad


def test_common_imports_nothing_else_of_the_project() -> None:
    assert not _offenders("common", PROJECT + TORCH, allowed=("sdedge.common",))


@pytest.mark.parametrize("folder", ["runtime", "calibrate"])
def test_device_side_imports_no_torch_core_or_export(folder: str) -> None:
    assert not _offenders(folder, TORCH + CORE + ("sdedge.export",))


def test_export_imports_no_calibration_or_server() -> None:
    assert not _offenders("export", ("sdedge.calibrate", "sdedge.runtime.server"))


def test_the_checker_resolves_relative_imports() -> None:
    """The scanner itself: relative imports that climb out of a package are seen under their real names."""
    src = "import numpy\nfrom ...models import registry\nfrom .. import train\nfrom .worker import W\n"
    got = [n for _, n in imports_in(src, "sdedge.runtime.server")]
    assert got == ["numpy", "sdedge.models", "sdedge.runtime.train", "sdedge.runtime.server.worker"]
    assert _module_of(REPO / "runtime" / "server" / "app.py") == "sdedge.runtime.server.app"
    assert _module_of(REPO / "common" / "__init__.py") == "sdedge.common"
