"""Build the native core with CMake during ``pip install`` (imported by setup.py; standard library only).

``SDEDGE_BUILD_NATIVE`` picks the mode:

* ``auto`` (default): try; on failure print a warning and install without the core (the pure-Python
  runtime is the fallback); ``python -m sdedge.native --status`` says why afterwards.
* ``1``: required: a failed build fails the install.
* ``0``: skip.

CMake configures ``native/`` into ``build/native-py`` (kept between installs, so a reinstall only
rebuilds what changed) and installs into the ``sdedge.native`` package folder: the source tree's
``sdedge/native`` for an editable install, the wheel's build folder otherwise. Other knobs:
``SDEDGE_ORT_ROOT`` (ONNX Runtime headers), ``SDEDGE_DEPS_DIR`` (where native/fetch-deps.sh unpacks),
``CMAKE_BUILD_PARALLEL_LEVEL`` (default 2 jobs), ``SDEDGE_NATIVE_BUILD_DIR``, ``SDEDGE_CMAKE_ARGS``
(extra ``-D...`` arguments, space-separated).
"""
from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
NATIVE = ROOT / "native"
MODES = {"auto": "auto", "": "auto", "1": "required", "on": "required", "yes": "required", "true": "required",
         "required": "required", "0": "skip", "off": "skip", "no": "skip", "false": "skip", "skip": "skip"}


class NativeBuildError(RuntimeError):
    pass


def build_mode() -> str:
    raw = os.environ.get("SDEDGE_BUILD_NATIVE", "auto").strip().lower()
    if raw not in MODES:
        raise NativeBuildError(f"SDEDGE_BUILD_NATIVE={raw!r}: expected auto, 1 or 0")
    return MODES[raw]


def _say(msg: str) -> None:
    print(f"sdedge native: {msg}", file=sys.stderr, flush=True)


def _run(step: str, cmd: list[str]) -> None:
    _say("$ " + " ".join(shlex.quote(c) for c in cmd))
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    sys.stderr.write(proc.stdout)
    sys.stderr.flush()
    if proc.returncode != 0:
        tail = "\n".join(proc.stdout.strip().splitlines()[-15:])
        raise NativeBuildError(f"cmake {step} failed (exit {proc.returncode}):\n{tail}")


def _stale_cache(build_dir: Path) -> bool:
    """A CMake cache made for another source folder (a moved or copied tree) cannot be reused."""
    cache = build_dir / "CMakeCache.txt"
    if not cache.is_file():
        return False
    for line in cache.read_text(encoding="utf-8", errors="replace").splitlines():
        if line.startswith("CMAKE_HOME_DIRECTORY:"):
            return Path(line.split("=", 1)[1]).resolve() != NATIVE.resolve()
    return True


def _clear_installed(target: Path) -> None:
    for sub in ("include", "lib"):
        shutil.rmtree(target / sub, ignore_errors=True)


def build_native(target: Path) -> bool:
    """Configure, build and install the core into ``target`` (the ``sdedge/native`` package folder).

    Returns True when the core is installed, False when skipped or (mode auto) failed.
    """
    target = Path(target)
    target.mkdir(parents=True, exist_ok=True)
    status_file = target / "_build_status.json"
    try:
        mode = build_mode()
    except NativeBuildError as exc:
        raise SystemExit(f"error: {exc}") from None

    def record(status: str, reason: str = "") -> None:
        status_file.write_text(json.dumps({"status": status, "reason": reason, "mode": mode}) + "\n",
                               encoding="utf-8")

    if mode == "skip":
        _say("SDEDGE_BUILD_NATIVE=0: not building the native core (the pure-Python runtime will run)")
        _clear_installed(target)
        record("skipped", "SDEDGE_BUILD_NATIVE=0")
        return False

    try:
        if not (NATIVE / "CMakeLists.txt").is_file():
            raise NativeBuildError(f"{NATIVE / 'CMakeLists.txt'} is missing (an incomplete source tree)")
        cmake = shutil.which("cmake")
        if cmake is None:
            raise NativeBuildError("cmake is not on PATH (install it: apt-get install cmake g++, "
                                   "or pip install cmake)")
        build_dir = Path(os.environ.get("SDEDGE_NATIVE_BUILD_DIR") or ROOT / "build" / "native-py")
        if _stale_cache(build_dir):
            shutil.rmtree(build_dir)
        jobs = os.environ.get("CMAKE_BUILD_PARALLEL_LEVEL") or "2"
        configure = [cmake, "-S", str(NATIVE), "-B", str(build_dir),
                     "-DCMAKE_BUILD_TYPE=Release", "-DCMAKE_INSTALL_LIBDIR=lib", "-DCMAKE_INSTALL_INCLUDEDIR=include",
                     "-DSDEDGE_BUILD_TESTS=OFF", "-DSDEDGE_BUILD_EXAMPLES=OFF", "-DSDEDGE_SANITIZE=OFF"]
        configure += shlex.split(os.environ.get("SDEDGE_CMAKE_ARGS", ""))
        _run("configure", configure)
        _run("build", [cmake, "--build", str(build_dir), "-j", jobs])
        _clear_installed(target)
        _run("install", [cmake, "--install", str(build_dir), "--prefix", str(target)])
        if not (target / "lib" / "libsdedge.so").is_file():
            raise NativeBuildError(f"cmake --install put no lib/libsdedge.so under {target}")
    except (NativeBuildError, OSError) as exc:
        _clear_installed(target)
        record("failed", str(exc))
        if mode == "required":
            raise SystemExit(f"error: SDEDGE_BUILD_NATIVE=1 and the native core failed to build: {exc}") from None
        bar = "=" * 78
        _say(f"\n{bar}\nWARNING: the sdedge native core (libsdedge.so) was NOT built; installing without it.\n"
             f"The pure-Python runtime will run instead. Reason:\n{exc}\n"
             "Set SDEDGE_BUILD_NATIVE=1 to make this an error, 0 to skip the attempt; "
             "`python -m sdedge.native --status` repeats this.\n" + bar)
        return False
    record("built")
    _say(f"installed the native core into {target}")
    return True
