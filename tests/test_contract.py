"""The model contract, for every model of the catalog: its params section (and each variant) validates, a DVC stage
runs it through the generic flow, a Prefect deployment schedules it, its tiny preset trains, resumes from its
checkpoints to the same weights, evaluates, and its pyfunc round-trips the logged input example. Plus what a new
model needs outside its folder, shown with a model that exists only here (tests/contract_example.py)."""

from __future__ import annotations

import hashlib
import math
import re
from pathlib import Path

import mlflow
import pytest
import yaml

from models import catalog
from models.common import tracking
from tests.conftest import REPO

NAMES = catalog.names()


def _dvc_cmds() -> list[str]:
    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    return [" ".join(str((s.get("do") or s).get("cmd", "")).split()) for s in stages.values()]


def _deployments() -> list[dict]:
    return yaml.safe_load((REPO / "prefect.yaml").read_text())["deployments"]


def test_the_catalog_is_explicit_and_complete():
    assert NAMES == ["melu", "seqrec", "dissan", "egtr"]
    folders = sorted(p.parent.name for p in (REPO / "models").glob("*/pipeline.py"))
    assert folders == sorted(NAMES)  # every declared model is catalogued, and nothing else
    with pytest.raises(KeyError, match="not in the catalog"):
        catalog.get("nonexistent")


@pytest.mark.parametrize("name", NAMES)
def test_params_dvc_stage_and_deployment(name):
    spec = catalog.get(name)
    cfg = spec.load_config(REPO / "params.yaml")
    for variant, overrides in spec.variants.items():
        spec.load_config(REPO / "params.yaml", overrides)  # every named variant is a valid config
    ident = spec.identity(cfg)
    assert ident.gate_mode in ("max", "min") and ident.gate_metric and ident.experiment
    assert any(c.startswith(f"python -m flows.model {name} ") for c in _dvc_cmds()), f"no DVC stage runs {name}"
    deps = [d for d in _deployments() if d["parameters"].get("model") == name]
    assert deps and all(d["entrypoint"] == "flows/model.py:model_flow" for d in deps)
    for d in deps:  # a deployment's overrides are a valid config too
        spec.load_config(REPO / "params.yaml", d["parameters"].get("overrides") or {})


def _sha(path: str) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _train_all(spec, cfg, run_id) -> dict:
    done: dict = {}
    for stage in spec.stages:
        done[stage.name] = stage.train(cfg, run_id, done)
        assert Path(done[stage.name]["weights"]).is_file()
    return done


@pytest.mark.slow
@pytest.mark.parametrize("name", NAMES)
def test_tiny_trains_resumes_evaluates_and_serves(name, mlflow_store, tmp_path, monkeypatch, capfd):
    monkeypatch.chdir(tmp_path)
    spec = catalog.get(name)
    cfg = spec.config.model_validate(spec.tiny(tmp_path / "tiny"))
    run_id = tracking.start_run(f"contract-{name}", name, {})
    done = _train_all(spec, cfg, run_id)
    last = spec.stage_names()[-1]
    first = _sha(done[last]["weights"])
    capfd.readouterr()
    # a second start of the same config resumes from the checkpoints it left and trains nothing new: same weights
    again = _train_all(spec, cfg, tracking.start_run(f"contract-{name}", f"{name}-again", {}))
    assert "resuming from" in capfd.readouterr().err
    assert _sha(again[last]["weights"]) == first
    ev = spec.evaluate(cfg, run_id, done)
    assert isinstance(ev.gate_value, float) and math.isfinite(ev.gate_value)
    assert "run_id" in ev.result
    uri = spec.log_model(cfg, run_id, done)
    local = Path(mlflow.artifacts.download_artifacts(uri, dst_path=str(tmp_path / "logged")))
    code = [p for p in (local / "code").rglob("*") if p.is_file()]
    assert code and all(p.suffix == ".py" for p in code if "data" in p.relative_to(local / "code").parts[:1])  # no datasets
    model = mlflow.pyfunc.load_model(uri)
    example = model.input_example
    out = model.predict(example)  # through the logged signature's enforcement
    assert len(example) >= 1 and len(out) >= len(example)  # one row per request (MeLU: per candidate item)


def test_a_new_model_is_its_folder_and_one_catalog_line(prefect_harness, mlflow_store, tmp_path, monkeypatch):
    """The example model (tests/contract_example.py, standing for models/line/) runs through the generic flow once its
    catalog line exists; nothing in flows/ or tasks/ names it. Outside its folder, a model of the pipeline also needs
    its params.yaml section, its DVC stage and its deployment (checked above for every catalogued model)."""
    from flows.model import model_flow
    from tests import contract_example

    monkeypatch.setitem(catalog.CATALOG, "line", "tests.contract_example")  # the one line
    monkeypatch.chdir(tmp_path)
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({"line": contract_example.tiny(tmp_path / "tiny")}))
    res = model_flow("line", str(params))
    assert res["mse"] < 0.05 and res["registry"]["promoted"]
    assert mlflow.MlflowClient().get_model_version_by_alias("line", "champion").run_id == res["run_id"]
    assert res["bundle"]["card"]["stage"] == "train_line"
    for folder in ("flows", "tasks"):  # no model-specific import or name in the flow's code
        for f in (REPO / folder).rglob("*.py"):
            text = f.read_text()
            assert not re.search(r"(from|import) models\.(melu|seqrec|dissan|egtr)\b", text), f"{f} imports a model"
            assert not re.search(r"[\"'](melu|seqrec|dissan|egtr)[\"']", text), f"{f} names a model"


def test_data_code_never_imports_model_code():
    """data/ is the lower layer (downloads, data stages, data contracts, config, atomic writes): models import it."""
    offenders = [str(f.relative_to(REPO)) for f in (REPO / "data").rglob("*.py")
                 if re.search(r"^\s*(from|import) models\b", f.read_text(), flags=re.M)]
    assert offenders == []
