"""The installed copy of sdedge's native runtime core (``libsdedge.so`` and ``sdedge.h``).

``pip install`` builds the C++ core with CMake (``SDEDGE_BUILD_NATIVE``: ``auto`` by default, ``1`` to
require it, ``0`` to skip) and installs it inside this package::

    sdedge/native/include/sdedge/sdedge.h
    sdedge/native/lib/libsdedge.so
    sdedge/native/lib/cmake/sdedge/sdedgeConfig.cmake     find_package(sdedge) -> sdedge::sdedge
    sdedge/native/lib/pkgconfig/sdedge.pc

C and C++ builds find it with ``python -m sdedge.native --cflags --libs`` or ``--cmake-dir`` (as
``pybind11 --includes`` does). This module imports nothing but the standard library.
"""
from __future__ import annotations

import json
from pathlib import Path

__all__ = ["prefix", "include_dir", "library_path", "cmake_dir", "pkgconfig_dir", "is_installed",
           "build_status", "cflags", "libs", "NativeCoreMissing"]

_HERE = Path(__file__).resolve().parent
LIBRARY_NAME = "libsdedge.so"


class NativeCoreMissing(RuntimeError):
    """The native core was not built into this installation."""


def prefix() -> Path:
    """The installation prefix of the core (holds ``include/`` and ``lib/``)."""
    return _HERE


def include_dir() -> Path:
    """The folder to put on the include path (it holds ``sdedge/sdedge.h``)."""
    return _HERE / "include"


def library_path() -> Path:
    """The full path of ``libsdedge.so``."""
    return _HERE / "lib" / LIBRARY_NAME


def cmake_dir() -> Path:
    """The folder holding ``sdedgeConfig.cmake``: pass it as ``sdedge_DIR`` or ``CMAKE_PREFIX_PATH``."""
    return _HERE / "lib" / "cmake" / "sdedge"


def pkgconfig_dir() -> Path:
    """The folder holding ``sdedge.pc``: put it on ``PKG_CONFIG_PATH``."""
    return _HERE / "lib" / "pkgconfig"


def is_installed() -> bool:
    """True when the library and the header are both present."""
    return library_path().is_file() and (include_dir() / "sdedge" / "sdedge.h").is_file()


def build_status() -> dict:
    """What the install-time build did: ``{"status": "built" | "failed" | "skipped", "reason": ...}``.

    ``{"status": "unknown"}`` when no build ran here (e.g. a source checkout never installed).
    """
    path = _HERE / "_build_status.json"
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {"status": "built" if is_installed() else "unknown"}


def _require() -> None:
    if not is_installed():
        status = build_status()
        why = status.get("reason") or "no build ran"
        raise NativeCoreMissing(
            f"the sdedge native core is not installed in {_HERE} ({status.get('status')}: {why}). "
            "Rebuild it with: SDEDGE_BUILD_NATIVE=1 pip install -e . (needs cmake and a C++17 compiler)")


def cflags() -> str:
    """Compiler flags for a C/C++ user of ``sdedge/sdedge.h``."""
    _require()
    return f"-I{include_dir()}"


def libs() -> str:
    """Linker flags for ``libsdedge.so`` (with an rpath: the library lives inside the Python package)."""
    _require()
    lib = library_path().parent
    return f"-L{lib} -Wl,-rpath,{lib} -lsdedge"

