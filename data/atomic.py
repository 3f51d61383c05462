"""Atomic outputs: build a file or directory beside its destination, rename it into place. The one home of
atomic writes: files (:func:`atomic_file`, text / JSON helpers), folders (:func:`atomic_directory`); the training
code's checkpoints and figures use :func:`atomic_file` too.

``tempfile`` creates files 0600 and folders 0700; what is renamed into place gets the modes the user's umask
gives a plain ``open``/``mkdir`` (:func:`umask_mode`), so outputs are shared like any other file.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any, Iterator


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_UMASK = _umask()


def umask_mode(path: str | Path, directory: bool = False) -> Path:
    """Give ``path`` the mode a plain create would (0666 or 0777 minus the umask) and return it."""
    os.chmod(path, (0o777 if directory else 0o666) & ~_UMASK)
    return Path(path)


@contextmanager
def atomic_directory(out: str | Path) -> Iterator[Path]:
    """Yield a temporary directory next to ``out``; on success it replaces ``out``, on error it is removed."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        yield tmp
        umask_mode(tmp, directory=True)
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)


@contextmanager
def atomic_file(path: str | Path, mode: str = "w") -> Iterator[IO]:
    """Yield a file object on a temporary file beside ``path``; on success it is renamed to ``path`` (with the
    umask's mode), on error it is removed and ``path`` is untouched."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, mode) as f:
            yield f
        umask_mode(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def atomic_write_text(path: str | Path, text: str) -> Path:
    with atomic_file(path) as f:
        f.write(text)
    return Path(path)


def atomic_write_json(path: str | Path, obj: Any) -> Path:
    """``obj`` as indented JSON with sorted keys: the same object always gives the same bytes."""
    return atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")
