"""Atomic outputs: build a file or directory beside its destination, rename it into place.

``tempfile`` creates files 0600 and folders 0700; what is renamed into place gets the modes the user's umask
gives a plain ``open``/``mkdir`` (:func:`umask_mode`), so outputs are shared like any other file.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator


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
