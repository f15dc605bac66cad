"""The deploy files stay in step with the package: the image copies every folder setup.py maps onto the
``sdedge`` namespace (and the native build helper setup.py loads), and the build context lets them in.

No Docker engine here, so the image is never built in CI; this catches the way it broke before (a new
top-level folder, ``common/``, missing from the image).
"""
from __future__ import annotations

import ast
import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def package_folders() -> set[str]:
    tree = ast.parse((REPO / "setup.py").read_text(encoding="utf-8"))
    for node in ast.walk(tree):
        if isinstance(node, ast.keyword) and node.arg == "package_dir":
            return {v.value.split("/")[0] for v in node.value.values}  # type: ignore[attr-defined]
    raise AssertionError("setup.py has no package_dir")


def test_the_image_copies_every_package_folder_and_the_native_helper():
    docker = (REPO / "deploy" / "Dockerfile").read_text(encoding="utf-8")
    copied = set(re.findall(r"^COPY (\S+) \./", docker, flags=re.M))
    ignore = (REPO / "deploy" / "Dockerfile.dockerignore").read_text(encoding="utf-8")
    needed = package_folders() | {"native"}  # setup.py's build_py loads native/setup_build.py
    assert needed <= copied, f"deploy/Dockerfile does not COPY {sorted(needed - copied)}"
    for folder in needed:
        assert f"!{folder}/**" in ignore, f"Dockerfile.dockerignore keeps {folder}/ out of the build context"


def test_the_image_serves_both_protocols():
    docker = (REPO / "deploy" / "Dockerfile").read_text(encoding="utf-8")
    entry = re.search(r"^ENTRYPOINT (\[.*\])", docker, flags=re.M).group(1)
    args = ast.literal_eval(entry)
    assert args[:2] == ["sdedge", "serve"] and "--grpc-port" in args and "--port" in args
    for port in (args[args.index("--port") + 1], args[args.index("--grpc-port") + 1]):
        assert re.search(rf"^EXPOSE .*\b{port}\b", docker, flags=re.M), port
