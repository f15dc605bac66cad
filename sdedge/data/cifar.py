"""CIFAR with ``--download``: the one dataset step that needs torchvision (and a network).

Reading the official python-version folders is torch-free and lives in
:mod:`sdedge.common.dataset_files`; this only adds the download path: with ``download=True`` and no
folder, the data go to ``~/.cache/sdedge``, fetched by torchvision's own downloader when absent.
"""
from __future__ import annotations

import os
from pathlib import Path

from ..common.dataset_files import CIFAR, find_cifar, locate_cifar, named_data_dir


def find_folder(name: str, data_dir: str | os.PathLike | None, download: bool = False) -> Path:
    """The ``name`` (``cifar100`` / ``cifar10``) folder; with ``download``, fetched when it is not there."""
    if not download:
        return find_cifar(name, data_dir, alternative="use --download")
    root = Path(named_data_dir(data_dir) or Path.home() / ".cache" / "sdedge")
    found = locate_cifar(name, root)
    if found is not None:
        return found
    from torchvision import datasets  # lazily: only users with a network take this path

    cls = datasets.CIFAR100 if name == "cifar100" else datasets.CIFAR10
    cls(str(root), train=True, download=True)
    cls(str(root), train=False, download=True)
    return root / CIFAR[name].folder
