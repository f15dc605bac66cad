"""``python -m sdedge.native``: print the flags of the installed native core, as ``pybind11 --includes`` does.

    cc robot.c $(python -m sdedge.native --cflags --libs) -o robot
    cmake -DCMAKE_PREFIX_PATH="$(python -m sdedge.native --cmake-dir)" ...
"""
from __future__ import annotations

import argparse
import json
import sys

from sdedge import native


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m sdedge.native",
        description="Print the compiler/linker flags and paths of the installed sdedge native core "
                    "(libsdedge.so, sdedge.h). Several options print their values on one line, in order.")
    p.add_argument("--cflags", action="append_const", dest="what", const="cflags",
                   help="compiler flags (-I<include dir>)")
    p.add_argument("--libs", action="append_const", dest="what", const="libs",
                   help="linker flags (-L<lib> -Wl,-rpath,<lib> -lsdedge)")
    p.add_argument("--includes", action="append_const", dest="what", const="cflags",
                   help="same as --cflags (pybind11's spelling)")
    p.add_argument("--include-dir", action="append_const", dest="what", const="include_dir",
                   help="the folder holding sdedge/sdedge.h")
    p.add_argument("--library", action="append_const", dest="what", const="library",
                   help="the full path of libsdedge.so")
    p.add_argument("--cmake-dir", "--cmakedir", action="append_const", dest="what", const="cmake_dir",
                   help="the folder holding sdedgeConfig.cmake (sdedge_DIR, or CMAKE_PREFIX_PATH)")
    p.add_argument("--pkgconfig-dir", action="append_const", dest="what", const="pkgconfig_dir",
                   help="the folder holding sdedge.pc (PKG_CONFIG_PATH)")
    p.add_argument("--prefix", action="append_const", dest="what", const="prefix",
                   help="the installation prefix (include/ and lib/)")
    p.add_argument("--status", action="store_true", help="say whether the core is installed, and why not")
    args = p.parse_args(argv)

    if args.status or not args.what:
        status = native.build_status()
        status["installed"] = native.is_installed()
        if status["installed"]:
            status["library"] = str(native.library_path())
        print(json.dumps(status, indent=2))
        return 0 if status["installed"] else 1

    try:
        values = {
            "cflags": native.cflags,
            "libs": native.libs,
            "include_dir": lambda: str(native.include_dir()),
            "library": lambda: str(native.library_path()),
            "cmake_dir": lambda: str(native.cmake_dir()),
            "pkgconfig_dir": lambda: str(native.pkgconfig_dir()),
            "prefix": lambda: str(native.prefix()),
        }
        if not native.is_installed():
            native.cflags()  # raises NativeCoreMissing with the reason
        print(" ".join(values[w]() for w in args.what))
    except native.NativeCoreMissing as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
