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


def _dvc_stages(name: str) -> dict[str, dict]:
    """The stages of ``models/<name>/dvc.yaml`` (unresolved: matrix/foreach bodies)."""
    path = REPO / "models" / name / "dvc.yaml"
    assert path.is_file(), f"model {name}: no {path.relative_to(REPO)} (a model's DVC stages live in its folder)"
    return yaml.safe_load(path.read_text())["stages"]


def _deployments() -> list[dict]:
    return yaml.safe_load((REPO / "prefect.yaml").read_text())["deployments"]


def test_the_catalog_is_explicit_and_complete():
    assert NAMES == ["melu", "seqrec", "dissan", "egtr", "multimodalsum", "bilingual_lm"]
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
    assert (REPO / "models" / name / "README.md").is_file(), f"model {name}: no models/{name}/README.md (its notes)"
    stages = _dvc_stages(name)
    cmds = [" ".join(str((st.get("do") or st).get("cmd", "")).split()) for st in stages.values()]
    assert any(c.startswith(f"python -m flows.model {name} ") for c in cmds), f"no stage of models/{name}/dvc.yaml runs {name}"
    assert ident.dvc_stage.split(":")[0] == f"models/{name}/dvc.yaml" and ident.dvc_stage.split(":")[1].split("@")[0] in stages
    code = sorted(f"models/{name}/{p.name}" for p in (REPO / "models" / name).glob("*.py"))
    for stage_name, st in stages.items():
        body = st.get("do") or st
        if "flows.model" not in str(body.get("cmd", "")):
            continue
        deps = body.get("deps", [])
        # the model's code file by file (its folder would include its own dvc.lock): every .py file, no stale entry
        assert sorted(d for d in deps if d.startswith(f"models/{name}/")) == code, f"{stage_name}: deps != {code}"
        for shared in ("models/common", "models/catalog.py", "flows", "tasks", "data/config.py", "data/atomic.py"):
            assert shared in deps, f"{stage_name}: {shared} is not a dependency"
    deps = [d for d in _deployments() if d["parameters"].get("model") == name]
    assert deps and all(d["entrypoint"] == "flows/model.py:model_flow" for d in deps)
    for d in deps:  # a deployment's overrides are a valid config too
        p = d["parameters"]
        spec.load_config(REPO / "params.yaml", {**spec.variant(p.get("variant")), **(p.get("overrides") or {})})


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
    assert code and all(p.suffix == ".py" for p in code)  # no datasets, no DVC files (DVC would collect them)
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
            assert not re.search(r"(from|import) models\.(melu|seqrec|dissan|egtr|multimodalsum|bilingual_lm)\b", text), f"{f} imports a model"
            assert not re.search(r"[\"'](melu|seqrec|dissan|egtr|multimodalsum|bilingual_lm)[\"']", text), f"{f} names a model"


def test_data_code_never_imports_model_code():
    """data/ is the lower layer (downloads, data stages, data contracts, config, atomic writes): models import it."""
    offenders = [str(f.relative_to(REPO)) for f in (REPO / "data").rglob("*.py")
                 if re.search(r"^\s*(from|import) models\b", f.read_text(), flags=re.M)]
    assert offenders == []
