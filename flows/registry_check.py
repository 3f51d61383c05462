"""After ``dvc repro``: is every model that the pipeline's train stages register in this MLflow registry?

``make run`` ends with ``python -m flows.registry_check --repair``. DVC decides staleness from files, not from the
registry: a stage can be skipped (its outputs up to date) or restored from DVC's run cache or a remote while the
tracking store in use has never seen its model (a fresh ``mlflow.db``, a ``make clean``, another machine's
outputs). So a committed or cached result is never taken as proof. For each train stage, its model bundle
(``<out>/model.json``, written by ``flows.common.write_model_bundle``) names the registered model, the champion
alias and the sha256 of its weights; the registry must hold a version tagged with that sha256, and the alias must
exist. With ``--repair`` each stage that fails is re-run with ``dvc repro --force --single-item <stage>`` (it
resumes or reuses its checkpoint when there is one, and registers), then everything is checked again.

    python -m flows.registry_check            # report; exit 1 if something is missing
    python -m flows.registry_check --repair   # re-run the stages whose model is missing, then report
    python -m flows.registry_check train_melu # one stage (its name, or models/melu/dvc.yaml:train_melu)
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

BUNDLE_NAME = "model"  # a train stage's output folder ends in /model (dvc.yaml)


def train_stage_bundles(repo: str | Path = ".", stages: list[str] | None = None) -> list[tuple[str, Path]]:
    """(stage address, bundle folder) for every stage of every dvc.yaml with an output folder named ``model`` (or the
    named ones)."""
    from dvc.repo import Repo

    found = []
    with Repo(str(repo)) as r:
        for stage in r.index.stages:
            for out in stage.outs:
                if Path(out.def_path).name == BUNDLE_NAME:
                    found.append((stage.addressing, Path(repo) / out.def_path))
    if stages:  # a full address (models/melu/dvc.yaml:train_melu) or the stage's name alone (train_melu)
        named = lambda address: {address, address.rpartition(":")[2]}  # noqa: E731
        unknown = sorted(set(stages) - set().union(*(named(a) for a, _ in found)))
        if unknown:
            raise SystemExit(f"registry_check: not train stages of the pipeline: {', '.join(unknown)}")
        found = [f for f in found if named(f[0]) & set(stages)]
    return found


def check(repo: str | Path = ".", stages: list[str] | None = None) -> list[dict]:
    """One row per train stage: stage, model, alias, version, status ('ok' or why not)."""
    from mlflow.exceptions import MlflowException

    from models.common.tracking import client
    from tasks.registry import registered_version

    rows = []
    c = client()
    for stage, bundle in train_stage_bundles(repo, stages):
        card_path = bundle / "model.json"
        row = {"stage": stage, "model": None, "alias": None, "version": None, "status": "ok"}
        if not card_path.is_file():
            row["status"] = f"not run here: {card_path} is missing"
            rows.append(row)
            continue
        card = json.loads(card_path.read_text())
        row["model"], row["alias"] = card.get("registered_model"), card.get("champion_alias")
        if not row["model"]:
            row["status"] = "ok (tracked, not registered)"
            rows.append(row)
            continue
        row["version"] = registered_version(row["model"], card["weights_sha256"])
        if row["version"] is None:
            row["status"] = f"missing: no version of {row['model']!r} holds these weights (sha256 {card['weights_sha256'][:12]})"
        else:
            try:
                champ = c.get_model_version_by_alias(row["model"], row["alias"])
                if str(champ.version) != row["version"]:
                    row["status"] = f"ok ({row['alias']} is v{champ.version}, which beat this version's gate)"
            except MlflowException:
                row["status"] = f"missing: alias {row['alias']!r} is not set"
        rows.append(row)
    return rows


def failing(rows: list[dict]) -> list[dict]:
    return [r for r in rows if not r["status"].startswith("ok")]


def table(rows: list[dict]) -> str:
    lines = [f"{'stage':44s} {'model':10s} {'alias':28s} {'version':8s} status"]
    for r in rows:
        lines.append(f"{r['stage']:44s} {r['model'] or '-':10s} {r['alias'] or '-':28s} {r['version'] or '-':8s} {r['status']}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    from flows.common import configure_environment

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repair", action="store_true", help="re-run (dvc repro --force --single-item) each stage whose model is missing")
    ap.add_argument("--repo", default=".")
    ap.add_argument("stages", nargs="*", help="train stages to check, by name or DVC address (default: every train stage)")
    args = ap.parse_args(argv)
    from models.common.tracking import TrackingStoreError

    try:
        configure_environment()
    except TrackingStoreError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    rows = check(args.repo, args.stages)
    if args.repair and failing(rows):
        for r in failing(rows):
            print(f"registry_check: {r['stage']}: {r['status']} -> dvc repro --force --single-item {r['stage']}", flush=True)
            proc = subprocess.run(["dvc", "repro", "--force", "--single-item", r["stage"]], cwd=args.repo)
            if proc.returncode != 0:
                print(f"registry_check: dvc repro of {r['stage']} failed ({proc.returncode})", file=sys.stderr)
                return proc.returncode
        rows = check(args.repo, args.stages)
    print(table(rows))
    bad = failing(rows)
    if bad:
        print(f"registry_check: {len(bad)} stage(s) without their model in the registry; "
              "run `python -m flows.registry_check --repair` (or `dvc repro --force <stage>`)", file=sys.stderr)
        return 1
    print(f"registry_check: all {sum(1 for r in rows if r['model'])} registered models of {len(rows)} train stages are in the registry")
    return 0


if __name__ == "__main__":
    sys.exit(main())
