"""Atomic file writes: nothing a user relies on is ever left half-written.

Every writer goes to a temporary file in the destination folder and is renamed over
the target only once complete (``os.replace`` is atomic on POSIX within one filesystem).
"""
from __future__ import annotations

import contextlib
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any, Iterator


@contextlib.contextmanager
def atomic_path(target: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``target``; on success rename it onto ``target``.

    Use for writers that want a file name (``torch.save``, ``safetensors``, ``savefig``).
    On any exception the temporary file is removed and ``target`` is untouched.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp" + target.suffix,
                               dir=target.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    # mkstemp creates 0600 files; give the result the permissions a plain open() would.
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp_path, 0o666 & ~umask)
    try:
        yield tmp_path
        os.replace(tmp_path, target)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def atomic_write_text(target: str | os.PathLike, text: str) -> None:
    with atomic_path(target) as tmp:
        tmp.write_text(text, encoding="utf-8")


def atomic_write_bytes(target: str | os.PathLike, data: bytes) -> None:
    with atomic_path(target) as tmp:
        tmp.write_bytes(data)


def atomic_write_json(target: str | os.PathLike, obj: Any, indent: int = 2) -> None:
    atomic_write_text(target, json.dumps(obj, indent=indent, sort_keys=False) + "\n")


def move_aside(path: str | os.PathLike) -> Path:
    """Rename ``path`` (a file or folder) to ``<name>.replaced-<time>`` beside it: what
    ``--overwrite`` does, so a replaced result is never lost."""
    path = Path(path)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    aside = path.with_name(f"{path.name}.replaced-{stamp}")
    n = 1
    while aside.exists():
        n += 1
        aside = path.with_name(f"{path.name}.replaced-{stamp}-{n}")
    path.rename(aside)
    return aside


def refuse_or_move_aside(paths: list[Path], overwrite: bool, tool: str, *, move: bool = True) -> None:
    """Existing ``paths`` stop ``tool`` (naming them and the flag) unless ``overwrite``, when each is
    moved aside (``move=False``: only the check, e.g. for a dry run) and the move is printed."""
    existing = [Path(p) for p in paths if Path(p).exists()]
    if existing and not overwrite:
        names = ", ".join(str(p) for p in existing)
        raise SystemExit(f"{tool}: {names} already exist(s); pass --overwrite to replace (the old one is moved "
                         "aside, not deleted), or choose another output")
    for path in existing if move else []:
        print(f"--overwrite: moved {path} to {move_aside(path)}")


def check_writable(folder: str | os.PathLike, tool: str) -> None:
    """Fail early, in one line, when ``folder`` cannot be created or written."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".write-test.", dir=folder)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise SystemExit(f"{tool}: cannot write to {folder}: {exc.strerror or exc}") from None
