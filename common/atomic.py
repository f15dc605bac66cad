"""Atomic file and folder writes, so an interrupted export or calibration never leaves a broken bundle.

Files: write to ``<name>.tmp-<random>`` in the same folder, fsync, ``os.replace``.
Folders: build in ``<out>.tmp-<random>`` beside the target, fsync every file, then either rename into
place (target absent) or swap atomically with the existing folder using Linux ``renameat2``
(``RENAME_EXCHANGE``) and delete the old copy. Where ``renameat2`` is unavailable (non-Linux) the
swap falls back to two renames, with a window of a few microseconds where the target is missing;
the old copy is kept as ``<out>.old-<random>`` until the new one is in place.

A staging folder carries an owner marker (host and pid) until the swap, so the next writer of the same
target can remove folders left by a process that was killed (:func:`clean_stale_staging`).
"""
from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import os
import secrets
import shutil
import socket
from pathlib import Path
from typing import Iterator

OWNER_MARKER = ".sdedge-staging-owner"
_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(str(path), os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` so that readers see the old or the new content, never a mix."""
    path = Path(path)
    tmp = path.with_name(f"{path.name}.tmp-{secrets.token_hex(4)}")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    _fsync_dir(path.parent)


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    write_bytes_atomic(path, text.encode("utf-8"))


def fsync_tree(root: Path) -> None:
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            with open(os.path.join(dirpath, name), "rb") as f:
                os.fsync(f.fileno())
        _fsync_dir(Path(dirpath))


def _exchange(a: Path, b: Path) -> bool:
    """Atomically swap two paths with renameat2(RENAME_EXCHANGE); False if unsupported."""
    libc_name = ctypes.util.find_library("c")
    if not libc_name:
        return False
    try:
        libc = ctypes.CDLL(libc_name, use_errno=True)
        fn = libc.renameat2
    except (OSError, AttributeError):
        return False
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    rc = fn(_AT_FDCWD, os.fsencode(str(a)), _AT_FDCWD, os.fsencode(str(b)), _RENAME_EXCHANGE)
    if rc == 0:
        return True
    err = ctypes.get_errno()
    if err in (22, 38, 95):  # EINVAL, ENOSYS, EOPNOTSUPP: filesystem or kernel lacks it
        return False
    raise OSError(err, os.strerror(err), str(a))


def replace_dir(src: Path, dst: Path) -> None:
    """Move the finished folder ``src`` to ``dst``, replacing ``dst`` atomically if it exists."""
    src, dst = Path(src), Path(dst)
    fsync_tree(src)
    if not dst.exists():
        os.rename(src, dst)
    elif _exchange(src, dst):
        shutil.rmtree(src, ignore_errors=True)  # src now holds the old copy
    else:
        old = dst.with_name(f"{dst.name}.old-{secrets.token_hex(4)}")
        os.rename(dst, old)
        os.rename(src, dst)
        shutil.rmtree(old, ignore_errors=True)
    _fsync_dir(dst.parent)


@contextlib.contextmanager
def staging_dir(dst: str | os.PathLike, copy_existing: bool = False) -> Iterator[Path]:
    """Yield a temporary folder beside ``dst``; on success it replaces ``dst`` atomically.

    With ``copy_existing`` the temporary folder starts as a copy of ``dst`` (files hard-linked where
    the filesystem allows: callers must replace files, never modify them in place). On any exception
    the temporary folder is removed and ``dst`` is untouched.
    """
    dst = Path(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(f"{dst.name}.tmp-{secrets.token_hex(4)}")
    try:
        if copy_existing and dst.exists():
            shutil.copytree(dst, tmp, copy_function=_link_or_copy)
        else:
            tmp.mkdir()
        (tmp / OWNER_MARKER).write_text(f"{socket.gethostname()} {os.getpid()}\n", "utf-8")
        yield tmp
        (tmp / OWNER_MARKER).unlink()
        replace_dir(tmp, dst)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def clean_stale_staging(dst: str | os.PathLike) -> list[Path]:
    """Remove ``<dst>.tmp-*`` folders left by killed writers on this host (their marker names a dead pid)."""
    dst = Path(dst)
    removed = []
    for cand in dst.parent.glob(f"{dst.name}.tmp-*"):
        try:
            host, pid = (cand / OWNER_MARKER).read_text("utf-8").split()
            if host == socket.gethostname() and not _pid_alive(int(pid)):
                shutil.rmtree(cand, ignore_errors=True)
                removed.append(cand)
        except (OSError, ValueError):
            continue  # not ours, or another writer is using it right now
    return removed


def _link_or_copy(src: str, dst: str) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)
