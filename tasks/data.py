"""Prefect task around DVC: bring data up to date before a scheduled run.

A flow started by a DVC stage must not call ``dvc repro`` (DVC holds the repository lock), so
:func:`ensure_data` only runs when the flow's ``sync_data`` parameter is on (deployments), never from
``dvc repro``.
"""

from __future__ import annotations

import subprocess

from prefect import task



def _dvc(*args: str) -> str:
    proc = subprocess.run(["dvc", *args], capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"`dvc {' '.join(args)}` failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc.stdout


@task(retries=3, retry_delay_seconds=[2, 8, 30])
def ensure_data(targets: list[str], pull: bool = True) -> str:
    """``dvc pull`` (when a remote is configured) then ``dvc repro <targets>``; serial, errors are fatal."""
    remotes = _dvc("remote", "list").strip()
    if pull and remotes:
        _dvc("pull", *targets)
    return _dvc("repro", *targets)
