"""The DVC remote of a team (S3-compatible) and a check of the local DVC cache.

    python -m services.dvc_remote configure       # .dvc/config.local: remote `storage` (default) from the environment
    python -m services.dvc_remote push            # or make push: dvc push of what the cache holds
    dvc pull && dvc repro                         # on a fresh clone: the results arrive, no stage runs
    python -m services.dvc_remote verify --repair # re-hash the cache; a corrupted object is fetched again

``configure`` reads ``DVC_REMOTE_URL`` (default ``s3://paperflows/dvc``, the bucket of ``services.stack``) and the
endpoint from ``AWS_ENDPOINT_URL_S3`` or ``MLFLOW_S3_ENDPOINT_URL`` (none: AWS itself); credentials stay in the
usual ``AWS_*`` variables or profiles and are never written. The remote goes to ``.dvc/config.local`` (not committed),
so a clone without it, CI included, has no remote and ``dvc pull`` is skipped by the flows (``tasks.data``).

Why ``verify``: DVC trusts a cache object that is read-only (as DVC leaves them) without hashing it again, so a
corrupted object is checked out as it is, and ``dvc status`` still reports the workspace up to date (its state
database keys on inode, size and mtime). ``verify`` hashes every object against its name (the md5 of its bytes);
``--repair`` deletes the bad objects and the workspace files checked out from them (found through the dvc.lock
files and the directory listings), then runs ``dvc pull``, which fetches both again from the remote.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

REMOTE = "storage"
DEFAULT_URL = "s3://paperflows/dvc"


class RemoteError(RuntimeError):
    pass


def _dvc(repo: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    exe = Path(sys.executable).parent / "dvc"
    proc = subprocess.run([str(exe) if exe.exists() else "dvc", *args], cwd=repo, capture_output=True, text=True)
    if check and proc.returncode != 0:
        raise RemoteError(f"`dvc {' '.join(args)}` in {repo} failed ({proc.returncode}):\n{proc.stdout}{proc.stderr}")
    return proc


def endpoint_from_env(env: dict | None = None) -> str | None:
    env = os.environ if env is None else env
    return env.get("AWS_ENDPOINT_URL_S3") or env.get("MLFLOW_S3_ENDPOINT_URL") or None


def configure(repo: Path, url: str | None = None, endpoint: str | None = None) -> dict:
    """Make ``storage`` the default remote of ``repo`` in ``.dvc/config.local``; returns what was set."""
    url = url or os.environ.get("DVC_REMOTE_URL") or DEFAULT_URL
    if not url.startswith("s3://") or len(url) <= len("s3://"):
        raise RemoteError(f"DVC_REMOTE_URL: expected s3://<bucket>/<prefix>, got {url!r}")
    endpoint = endpoint or endpoint_from_env()
    _dvc(repo, "remote", "add", "--local", "--force", "--default", REMOTE, url)
    if endpoint:
        _dvc(repo, "remote", "modify", "--local", REMOTE, "endpointurl", endpoint)
    return {"remote": REMOTE, "url": url, "endpointurl": endpoint}


def push(repo: Path, targets: list[str] | None = None) -> str:
    """``dvc push`` to the default remote (what the cache holds of ``targets``, or of every stage)."""
    if not _dvc(repo, "remote", "list").stdout.strip():
        raise RemoteError(f"{repo.resolve()}: no DVC remote (make remote, or python -m services.dvc_remote configure)")
    proc = _dvc(repo, "push", *(targets or []), check=False)
    if proc.returncode != 0:
        raise RemoteError(f"dvc push failed ({proc.returncode}):\n{proc.stdout[-3000:]}{proc.stderr[-3000:]}")
    return (proc.stdout.strip().splitlines() or ["nothing to push"])[-1]


def cache_dir(repo: Path) -> Path:
    got = _dvc(repo, "cache", "dir", check=False).stdout.strip()
    return Path(got) if got else repo / ".dvc" / "cache"


def _md5(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "md5").hexdigest()


def bad_objects(cache: Path) -> dict[str, Path]:
    """{md5 the object is named by: its path} for every object whose bytes do not hash to its name."""
    root = cache / "files" / "md5"
    bad = {}
    if not root.is_dir():
        return bad
    for sub in sorted(root.iterdir()):
        if not sub.is_dir() or len(sub.name) != 2:
            continue
        for obj in sorted(sub.iterdir()):
            if not obj.is_file() or obj.name.endswith((".tmp", ".lock")):
                continue
            name = sub.name + obj.name.removesuffix(".dir")
            if _md5(obj) != name:
                bad[name + (".dir" if obj.name.endswith(".dir") else "")] = obj
    return bad


def _lock_outs(repo: Path) -> list[tuple[Path, str]]:
    """(workspace path, md5) of every output recorded in a dvc.lock of the repository; a lock's paths are relative to
    its stage's ``wdir`` (declared in the dvc.yaml beside it; a matrix stage ``name@item`` shares ``name``'s)."""
    import yaml

    outs = []
    for lock in sorted(repo.resolve().rglob("dvc.lock")):
        if any(part in (".venv", ".dvc", "node_modules") for part in lock.relative_to(repo.resolve()).parts):
            continue
        spec = lock.with_name("dvc.yaml")
        declared = (yaml.safe_load(spec.read_text()) or {}).get("stages", {}) if spec.is_file() else {}
        for name, stage in ((yaml.safe_load(lock.read_text()) or {}).get("stages", {}) or {}).items():
            wdir = lock.parent / (declared.get(name.split("@")[0], {}) or {}).get("wdir", ".")
            for out in stage.get("outs", []):
                if out.get("md5"):
                    outs.append(((wdir / out["path"]).resolve(), out["md5"]))
    return outs


def affected_files(repo: Path, cache: Path, bad: set[str]) -> list[tuple[Path, Path]]:
    """(workspace file or whole output folder, the output it belongs to) for everything checked out from a bad
    object."""
    hit = []
    for path, md5 in _lock_outs(repo):
        if md5 in bad:
            hit.append((path, path))
        elif md5.endswith(".dir"):
            listing = cache / "files" / "md5" / md5[:2] / md5[2:]
            if not listing.is_file():
                continue
            for entry in json.loads(listing.read_text()):
                if entry.get("md5") in bad:
                    hit.append((path / entry["relpath"], path))
    return hit


def verify(repo: Path, repair: bool = False) -> dict:
    """Re-hash the cache (see the module doc); with ``repair``, fetch the bad objects and their files again (a
    ``dvc pull`` of the outputs they belong to only: the remote need not hold every stage)."""
    import shutil

    cache = cache_dir(repo)
    bad = bad_objects(cache)
    report = {"cache": str(cache), "bad_objects": sorted(bad), "removed_files": [], "pulled": None}
    if not (bad and repair):
        return report
    hits = affected_files(repo, cache, set(bad))
    for obj in bad.values():
        obj.chmod(0o644)
        obj.unlink()
    for f, _ in hits:
        if f.is_dir() and not f.is_symlink():
            shutil.rmtree(f)
        elif f.exists() or f.is_symlink():
            f.unlink()
        report["removed_files"].append(str(f))
    outs = sorted({str(o.relative_to(repo.resolve())) for _, o in hits})
    if outs:
        report["pulled"] = _dvc(repo, "pull", *outs).stdout.strip().splitlines()[-1:]
    left = bad_objects(cache)
    if left:
        raise RemoteError(f"{cache}: still corrupted after dvc pull: {sorted(left)}")
    return report


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m services.dvc_remote", description=__doc__.split("\n\n")[0])
    ap.add_argument("command", choices=["configure", "push", "verify"])
    ap.add_argument("targets", nargs="*", help="push: stages or outputs (default: everything in the cache)")
    ap.add_argument("--repo", type=Path, default=Path("."))
    ap.add_argument("--url", help=f"the remote's URL (default $DVC_REMOTE_URL or {DEFAULT_URL})")
    ap.add_argument("--endpoint", help="the S3 endpoint (default $AWS_ENDPOINT_URL_S3 or $MLFLOW_S3_ENDPOINT_URL)")
    ap.add_argument("--repair", action="store_true", help="verify: remove bad objects and their files, then dvc pull")
    a = ap.parse_args(argv)
    try:
        if a.command == "configure":
            got = configure(a.repo, a.url, a.endpoint)
            print(f"remote {got['remote']} = {got['url']} (endpoint {got['endpointurl'] or 'AWS default'}) "
                  "in .dvc/config.local")
        elif a.command == "push":
            print(push(a.repo, a.targets))
        else:
            got = verify(a.repo, a.repair)
            print(json.dumps(got, indent=2))
            if got["bad_objects"] and not a.repair:
                return 1
    except RemoteError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
