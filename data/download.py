"""One download mechanism for every dataset of the project.

For each catalog file: read ``$DATA_MIRROR/<dataset>/<path>`` first (a read-only local mirror of the
official files), otherwise the official URL. A dataset is fetched into a temporary folder beside its
destination, every file's size and sha256 is verified there, and only when all of them verify is the folder
renamed into place (``data.atomic.atomic_directory``): an interrupted, corrupt or incomplete download never
leaves a half-filled dataset folder behind. Files already present with the right hash are reused, not fetched
again. Files get the modes the user's umask gives.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
import urllib.error
import urllib.request
from pathlib import Path

from data.atomic import atomic_directory, umask_mode
from data.catalog import CatalogFile, dataset

CHUNK = 1 << 20
MIRROR_ENV = "DATA_MIRROR"


class DownloadError(RuntimeError):
    """Neither the mirror nor the official URL could provide a file."""


class ChecksumError(RuntimeError):
    """A file's bytes do not match the catalog's sha256 (or size)."""


def mirror_from_env(environ: dict[str, str] | None = None, cwd: str | Path | None = None) -> Path | None:
    """``$DATA_MIRROR`` as an absolute folder, or None when it is unset or empty.

    A relative value is resolved once, here, against the working directory of the process that read the
    environment (``DATA_MIRROR=../shared/data make run`` from the repository root means the ``shared/data``
    beside the checkout), so a stage started from elsewhere or a copied repository sees the same folder. A
    value that does not name a folder stops with both the value and what it resolved to.
    """
    value = (os.environ if environ is None else environ).get(MIRROR_ENV, "").strip()
    if not value:
        return None
    path = Path(value).expanduser()
    if not path.is_absolute():
        path = Path(cwd or os.getcwd()) / path
    path = Path(os.path.normpath(path))
    if not path.is_dir():
        raise DownloadError(f"{MIRROR_ENV}={value!r} resolves to {path}, which is not a folder "
                            f"(unset {MIRROR_ENV} to download from the official URLs)")
    return path


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(CHUNK), b""):
            h.update(chunk)
    return h.hexdigest()


def _copy_stream(src, dst_path: Path) -> None:
    with open(dst_path, "wb") as out:
        shutil.copyfileobj(src, out, CHUNK)


def verified(path: Path, entry: CatalogFile) -> bool:
    return path.is_file() and entry.size in (None, path.stat().st_size) and entry.sha256 in (None, sha256_file(path))


def fetch_file(ds_name: str, entry: CatalogFile, dest_dir: Path, mirror: str | None, timeout: float = 60.0) -> str:
    """Fetch one catalog file into ``dest_dir``; return 'present', 'mirror' or 'url'."""
    dest = dest_dir / entry.path
    if verified(dest, entry):
        return "present"
    dest.parent.mkdir(parents=True, exist_ok=True)
    tried: list[str] = []
    fd, tmp_name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        origin = None
        if mirror and not (Path(mirror) / ds_name).is_dir():
            tried.append(f"mirror folder {Path(mirror) / ds_name} does not exist")
        elif mirror:
            src = Path(mirror) / ds_name / entry.path
            if src.is_file():
                with open(src, "rb") as f:
                    _copy_stream(f, tmp)
                origin = f"mirror {src}"
            else:
                tried.append(f"mirror {src}: not found")
        else:
            tried.append("mirror: DATA_MIRROR is not set")
        if origin is None and entry.url is None:
            tried.append(f"no official URL serves these bytes ({entry.note})")
        elif origin is None:
            try:
                with urllib.request.urlopen(entry.url, timeout=timeout) as resp:
                    _copy_stream(resp, tmp)
                origin = f"url {entry.url}"
            except (urllib.error.URLError, OSError, ValueError) as err:
                tried.append(f"url {entry.url}: {err}")
        if origin is None:
            raise DownloadError(
                f"cannot fetch {ds_name}/{entry.path}; tried " + "; ".join(tried)
            )
        size = tmp.stat().st_size
        actual = sha256_file(tmp)
        if entry.sha256 not in (None, actual) or entry.size not in (None, size):
            raise ChecksumError(
                f"checksum mismatch for {ds_name}/{entry.path} from {origin}: "
                f"expected sha256 {entry.sha256} ({entry.size} bytes), got sha256 {actual} ({size} bytes)"
            )
        umask_mode(tmp)
        os.replace(tmp, dest)
        return origin.split(" ", 1)[0]
    finally:
        if tmp.exists():
            tmp.unlink()


def fetch_dataset(name: str, dest_dir: str | Path, mirror: str | None = None, progress: bool = True) -> dict[str, str]:
    """Fetch every file of catalog dataset ``name`` into the folder ``dest_dir``; return {path: origin}.

    The folder appears (or is replaced) only when every file verifies; on any error it is left as it was.
    """
    from tqdm import tqdm

    ds = dataset(name)
    dest_dir = Path(dest_dir)
    if dest_dir.is_dir() and all(verified(dest_dir / e.path, e) for e in ds.files):
        return {e.path: "present" for e in ds.files}
    if mirror and not (Path(mirror) / name).is_dir() and all(e.url is None for e in ds.files):
        raise DownloadError(f"cannot fetch {name}: mirror folder {Path(mirror) / name} does not exist "
                            f"and no official URL serves its files ({ds.files[0].note})")
    origins = {}
    with atomic_directory(dest_dir) as tmp:
        for entry in tqdm(ds.files, desc=f"download {name}", unit="file", disable=not progress):
            old = dest_dir / entry.path
            if verified(old, entry):  # keep what an earlier run verified
                (tmp / entry.path).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(old, tmp / entry.path)
                origins[entry.path] = "present"
            else:
                origins[entry.path] = fetch_file(name, entry, tmp, mirror)
    return origins
