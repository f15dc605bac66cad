"""The native core as a C/C++ user meets it: the copy that ``pip install`` put into ``sdedge.native``.

* ``python -m sdedge.native --cflags --libs`` compiles and links a C program; pkg-config's ``sdedge.pc`` too;
* ``find_package(sdedge)`` builds ``native/examples/consumer`` against the installed copy, which then
  answers a real exported bundle;
* the library exports the C API of ``sdedge.h`` and nothing else;
* ``sdedge.native`` imports nothing heavy; the install-time build honours ``SDEDGE_BUILD_NATIVE``.

Tests that need the installed core skip where it was not built (``SDEDGE_BUILD_NATIVE=0`` or a failed
``auto`` build); CI builds it (``SDEDGE_BUILD_NATIVE=1``), so there they run.
"""
from __future__ import annotations

import glob
import importlib.util
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from sdedge import native

REPO = Path(__file__).resolve().parents[1]
HEADER = REPO / "native" / "include" / "sdedge" / "sdedge.h"
ABI = int(re.search(r"#define SDEDGE_ABI_VERSION (\d+)", HEADER.read_text(encoding="utf-8")).group(1))

needs_core = pytest.mark.skipif(not native.is_installed(),
                                reason=f"the native core is not installed ({native.build_status().get('status')})")


def _tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.skip(f"{name} is not installed")
    return path


def _run(cmd, **kw) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, **kw)
    assert proc.returncode == 0, f"{cmd} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
    return proc


def _flags(*opts: str) -> str:
    return _run([sys.executable, "-m", "sdedge.native", *opts]).stdout.strip()


def _ort_env() -> dict:
    """The environment a C program needs to load ONNX Runtime: the onnxruntime wheel's library."""
    env = dict(os.environ)
    if not env.get("SDEDGE_ORT_LIBRARY"):
        ort = pytest.importorskip("onnxruntime")
        libs = sorted(glob.glob(os.path.join(os.path.dirname(ort.__file__), "capi", "libonnxruntime.so*")))
        if not libs:
            pytest.skip("the onnxruntime package has no capi/libonnxruntime.so")
        env["SDEDGE_ORT_LIBRARY"] = libs[-1]
    return env


def _api_functions() -> list[str]:
    return re.findall(r"SDEDGE_API\s+[^;(]*?\b(sdedge_\w+)\s*\(", HEADER.read_text(encoding="utf-8"))


C_PROGRAM = r"""
#include <math.h>
#include <stdio.h>
#include <sdedge/sdedge.h>
int main(void) {
  sdedge_infer_options io;
  sdedge_session_options so;
  sdedge_session *s = (sdedge_session *)1;
  sdedge_infer_options_init(&io);
  sdedge_session_options_init(&so);
  if (io.struct_size != sizeof io || so.struct_size != sizeof so) return 2;
  if (!isnan(io.threshold) || !isnan(io.budget_ms) || io.deadline_ns != 0) return 3;
  /* misuse is an error status with a message, never a crash */
  if (sdedge_session_create(NULL, &so, &s) == SDEDGE_OK || s != NULL) return 4;
  if (sdedge_last_error()[0] == '\0') return 5;
  sdedge_session_free(NULL);
  printf("abi %u now %d\n", sdedge_abi_version(), sdedge_now_ns() > 0);
  return sdedge_abi_version() == SDEDGE_ABI_VERSION ? 0 : 1;
}
"""


# -- the package and the install-time build (no core needed) ----------------------------------------------

def test_sdedge_native_imports_nothing_heavy():
    code = ("import sys, sdedge.native, sdedge.native.__main__; "
            "heavy = sorted(m for m in ('numpy', 'torch', 'onnxruntime') if m in sys.modules); "
            "assert not heavy, heavy")
    _run([sys.executable, "-c", code])


def test_header_declares_the_design_api():
    names = set(_api_functions())
    assert names == {
        "sdedge_abi_version", "sdedge_last_error", "sdedge_now_ns", "sdedge_session_options_init",
        "sdedge_infer_options_init", "sdedge_session_create", "sdedge_session_free", "sdedge_session_info",
        "sdedge_session_infer_f32", "sdedge_session_infer_u8", "sdedge_session_infer_all_exits",
        # ABI version 2: added functions (the §5b ones are unchanged; struct fields were appended)
        "sdedge_session_describe", "sdedge_session_infer_f32_ex", "sdedge_session_infer_u8_ex",
        # ABI version 3: the policy's cost figures (the infer options gained per-row fields and on_rows)
        "sdedge_session_section_cost_ms"}
    text = HEADER.read_text(encoding="utf-8")
    assert "#define SDEDGE_ABI_VERSION 4" in text
    assert 'extern "C"' in text


def test_cmake_versions_match_the_package_and_header():
    import sdedge

    cmake = (REPO / "native" / "CMakeLists.txt").read_text(encoding="utf-8")
    assert re.search(r"project\(sdedge VERSION (\S+)", cmake).group(1) == sdedge.__version__
    abi = re.search(r"set\(SDEDGE_ABI_VERSION (\d+)\)", cmake).group(1)
    assert f"#define SDEDGE_ABI_VERSION {abi}" in HEADER.read_text(encoding="utf-8")


def _setup_build():
    spec = importlib.util.spec_from_file_location("_sdedge_setup_build_test", REPO / "native" / "setup_build.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_build_native_skip_mode(tmp_path, monkeypatch):
    monkeypatch.setenv("SDEDGE_BUILD_NATIVE", "0")
    (tmp_path / "lib").mkdir()
    (tmp_path / "lib" / "libsdedge.so").write_bytes(b"stale")
    assert _setup_build().build_native(tmp_path) is False
    assert not (tmp_path / "lib").exists()  # no stale copy survives a skipped build
    assert '"skipped"' in (tmp_path / "_build_status.json").read_text()


def test_build_native_auto_falls_back_with_a_warning(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("SDEDGE_BUILD_NATIVE", "auto")
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))  # no cmake
    assert _setup_build().build_native(tmp_path) is False
    err = capsys.readouterr().err
    assert "WARNING" in err and "cmake is not on PATH" in err
    assert '"failed"' in (tmp_path / "_build_status.json").read_text()


def test_build_native_required_mode_fails_the_install(tmp_path, monkeypatch):
    monkeypatch.setenv("SDEDGE_BUILD_NATIVE", "1")
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    with pytest.raises(SystemExit, match="SDEDGE_BUILD_NATIVE=1 and the native core failed to build"):
        _setup_build().build_native(tmp_path)


def test_build_native_rejects_an_unknown_mode(tmp_path, monkeypatch):
    monkeypatch.setenv("SDEDGE_BUILD_NATIVE", "maybe")
    with pytest.raises(SystemExit, match="SDEDGE_BUILD_NATIVE='maybe'"):
        _setup_build().build_native(tmp_path)


# -- the installed copy --------------------------------------------------------------------------------------

@needs_core
def test_flags_point_at_the_installed_copy():
    cflags, libs = _flags("--cflags"), _flags("--libs")
    assert cflags == f"-I{native.include_dir()}"
    assert (native.include_dir() / "sdedge" / "sdedge.h").is_file()
    assert f"-L{native.library_path().parent}" in libs and "-lsdedge" in libs
    assert _flags("--library") == str(native.library_path())
    assert (Path(_flags("--cmake-dir")) / "sdedgeConfig.cmake").is_file()
    assert (Path(_flags("--pkgconfig-dir")) / "sdedge.pc").is_file()
    assert _flags("--cflags", "--libs") == f"{cflags} {libs}"


@needs_core
def test_library_exports_the_c_api_and_nothing_else():
    nm = _tool("nm")
    out = _run([nm, "-D", "--defined-only", str(native.library_path())]).stdout
    exported = {line.split()[-1] for line in out.splitlines() if line.strip()}
    exported = {name.split("@")[0] for name in exported}
    assert exported == set(_api_functions())


@needs_core
def test_c_program_builds_with_python_m_sdedge_native_flags(tmp_path):
    cc = _tool("cc")
    src = tmp_path / "use_sdedge.c"
    src.write_text(C_PROGRAM)
    exe = tmp_path / "use_sdedge"
    # exactly what a user types: cc prog.c $(python -m sdedge.native --cflags --libs)
    flags = _flags("--cflags", "--libs").split()
    _run([cc, "-std=c99", "-Wall", "-Werror", str(src), *flags, "-lm", "-o", str(exe)])
    assert _run([str(exe)]).stdout.startswith(f"abi {ABI} now 1")


@needs_core
def test_c_program_builds_with_pkg_config(tmp_path):
    cc, pkg_config = _tool("cc"), _tool("pkg-config")
    src = tmp_path / "use_sdedge.c"
    src.write_text(C_PROGRAM)
    exe = tmp_path / "use_sdedge"
    env = dict(os.environ, PKG_CONFIG_PATH=str(native.pkgconfig_dir()))
    flags = _run([pkg_config, "--cflags", "--libs", "sdedge"], env=env).stdout.split()
    _run([cc, str(src), *flags, "-lm", "-o", str(exe)])
    assert _run([str(exe)]).stdout.startswith(f"abi {ABI}")


@pytest.fixture(scope="module")
def consumer(tmp_path_factory) -> Path:
    """native/examples/consumer built with find_package(sdedge) against the installed copy."""
    if not native.is_installed():
        pytest.skip("the native core is not installed")
    cmake = _tool("cmake")
    _tool("c++")
    build = tmp_path_factory.mktemp("consumer")
    env = dict(os.environ)
    env.pop("CMAKE_PREFIX_PATH", None)
    _run([cmake, "-S", str(REPO / "native" / "examples" / "consumer"), "-B", str(build),
          f"-DCMAKE_PREFIX_PATH={_flags('--cmake-dir')}"], env=env)
    _run([cmake, "--build", str(build)], env=env)
    exe = build / "sdedge_consumer"
    assert exe.is_file()
    return exe


def test_cmake_consumer_links_sdedge_target(consumer):
    assert _run([str(consumer)]).stdout.startswith(f"sdedge ABI {ABI}")


def test_cmake_consumer_answers_a_real_bundle(consumer, tiny_bundle):
    out = _run([str(consumer), str(tiny_bundle), "3"], env=_ort_env()).stdout
    frames = [line for line in out.splitlines() if line.startswith("frame ")]
    assert len(frames) == 3, out
    assert all(re.search(r"exit [1-3]/3", line) for line in frames), out


def test_non_editable_install_carries_the_core():
    """CI's torch-free environment was installed from a wheel (pip install ".[runtime,serve,plot]")."""
    py = os.environ.get("SDEDGE_NOTORCH_PYTHON")
    if not py:
        pytest.skip("SDEDGE_NOTORCH_PYTHON not set (.ci/run sets it)")
    proc = subprocess.run([py, "-m", "sdedge.native", "--library"], capture_output=True, text=True, cwd="/")
    if os.environ.get("SDEDGE_BUILD_NATIVE") not in ("1", "on", "true", "yes", "required"):
        if proc.returncode != 0:
            pytest.skip("the torch-free environment was installed without the core")
    assert proc.returncode == 0, proc.stderr
    lib = Path(proc.stdout.strip())
    assert lib.is_file()
    # the wheel's own copy inside site-packages, not the source tree's (an editable install's)
    assert "site-packages" in lib.parts
    assert lib.resolve() != (REPO / "sdedge" / "native" / "lib" / "libsdedge.so").resolve()
