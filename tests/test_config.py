"""params.yaml <-> typed configs; dvc.yaml params exist; prefect.yaml entrypoints import."""

from __future__ import annotations

import importlib
import re
from pathlib import Path

import pytest
import yaml

from data.config import ConfigError, load_section
from models.melu.config import MeluConfig
from tests.conftest import REPO


def test_params_yaml_validates():
    cfg = load_section(MeluConfig, "melu", REPO / "params.yaml")
    assert cfg.train.local_lr == 5e-6 and cfg.train.global_lr == 5e-5  # spec §2.5
    assert cfg.model.hidden == [64, 64] and cfg.train.meta_batch_size == 32


def test_unknown_key_is_named(tmp_path):
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    raw["melu"]["train"]["learning_rate"] = 0.1
    p = tmp_path / "params.yaml"
    p.write_text(yaml.safe_dump(raw))
    with pytest.raises(ConfigError, match=r"melu\.train\.learning_rate: unknown key"):
        load_section(MeluConfig, "melu", p)


def test_wrong_type_is_named(tmp_path):
    with pytest.raises(ConfigError, match=r"melu\.train\.epochs: .*integer.*'ten'"):
        load_section(MeluConfig, "melu", REPO / "params.yaml", {"train.epochs": "ten"})
    with pytest.raises(ConfigError, match=r"melu\.train\.meta_order"):
        load_section(MeluConfig, "melu", REPO / "params.yaml", {"train.meta_order": "third"})


def test_every_params_key_is_commented_with_a_type():
    for n, line in enumerate((REPO / "params.yaml").read_text().splitlines(), 1):
        if re.match(r"^\s+\w+:\s*[^#\s]", line) and not line.strip().startswith("#"):
            assert re.search(r"#\s*\((int|float|str|bool|dict|list\[\w+\])(\|null)?\)", line), f"params.yaml:{n} lacks a '# (type) meaning' comment"


def _dvc_stages():
    """Every stage of every dvc.yaml of the repository, resolved by DVC itself (foreach / matrix expanded)."""
    from dvc.repo import Repo

    with Repo(str(REPO)) as repo:
        return list(repo.index.stages)


def test_dvc_params_exist_and_deps_exist():
    from dvc.dependency.param import ParamsDependency

    params = yaml.safe_load((REPO / "params.yaml").read_text())
    stages = _dvc_stages()
    produced = {o.fs_path for st in stages for o in st.outs}  # a dep on another stage's output need not exist in git
    assert {st.path for st in stages} == {str(REPO / "dvc.yaml"), *(str(p) for p in REPO.glob("models/*/dvc.yaml"))}
    for st in stages:
        assert st.wdir == str(REPO), f"{st.addressing}: paths must be relative to the repository root (wdir: ../..)"
        for dep in st.deps:
            if isinstance(dep, ParamsDependency):
                assert Path(dep.fs_path) == REPO / "params.yaml", f"{st.addressing}: params from {dep.fs_path}"
                for key in dep.params:
                    node = params
                    for part in key.split("."):
                        assert isinstance(node, dict) and part in node, f"{st.addressing}: param {key} not in params.yaml"
                        node = node[part]
            elif dep.fs_path not in produced:
                assert Path(dep.fs_path).exists(), f"{st.addressing}: dep {dep.def_path} does not exist"


def test_prefect_entrypoints_import_and_use_the_gpu_pool():
    spec = yaml.safe_load((REPO / "prefect.yaml").read_text())
    assert spec["deployments"]
    for dep in spec["deployments"]:
        path, fn = dep["entrypoint"].split(":")
        module = importlib.import_module(path.removesuffix(".py").replace("/", "."))
        assert callable(getattr(module, fn))
        assert dep["work_pool"]["name"] == "gpu"
        assert dep["schedules"] and "cron" in dep["schedules"][0]


def test_names_sizes_and_lists_are_checked_against_what_exists():
    bad = {"registry.gate_metric": "cold_mae_meen", "model.hidden": [], "eval.ndcg_k": [0], "eval.states": ["hot_state"]}
    expect = {"registry.gate_metric": r"melu\.registry\.gate_metric: 'cold_mae_meen' is not a metric of this run; expected one of \[.*'cold_mae_mean'\]",
              "model.hidden": r"melu\.model\.hidden: List should have at least 1 item", "eval.ndcg_k": r"melu\.eval\.ndcg_k\.0: .*greater than or equal to 1",
              "eval.states": r"melu\.eval\.states\.0: Input should be 'warm_state'"}
    for key, value in bad.items():
        with pytest.raises(ConfigError, match=rf"^--set {re.escape(key)}={re.escape(repr(value))}: {expect[key]}"):
            load_section(MeluConfig, "melu", REPO / "params.yaml", {key: value})
    with pytest.raises(ConfigError, match=r"melu\.model\.hidden\.0: Input should be greater than or equal to 1 \(got -4\)"):
        load_section(MeluConfig, "melu", REPO / "params.yaml", {"model.hidden": [-4]})
    from models.dissan.config import DissanConfig
    from models.egtr.config import EgtrConfig

    with pytest.raises(ConfigError, match=r"dissan\.eval\.length_buckets: expected strictly increasing"):
        load_section(DissanConfig, "dissan", REPO / "params.yaml", {"eval.length_buckets": [10, 8]})
    with pytest.raises(ConfigError, match=r"egtr\.dataset: String should match pattern"):
        load_section(EgtrConfig, "egtr", REPO / "params.yaml", {"dataset": "vg 150"})


def test_a_missing_subsection_is_an_error_not_the_code_defaults(tmp_path):
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    del raw["melu"]["train"]
    p = tmp_path / "params.yaml"
    p.write_text(yaml.safe_dump(raw))
    with pytest.raises(ConfigError, match=rf"^{re.escape(str(p))}: melu\.train: subsection missing"):
        load_section(MeluConfig, "melu", p)
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    del raw["seqrec"]["model"]["fanc"]
    p.write_text(yaml.safe_dump(raw))
    from models.seqrec.config import SeqRecConfig

    with pytest.raises(ConfigError, match=r"seqrec\.model\.fanc: subsection missing"):
        load_section(SeqRecConfig, "seqrec", p)


def test_a_file_error_names_the_file_and_an_override_error_names_the_override(tmp_path):
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    raw["melu"]["train"]["epochs"] = 0
    p = tmp_path / "params.yaml"
    p.write_text(yaml.safe_dump(raw))
    with pytest.raises(ConfigError, match=rf"^{re.escape(str(p))}: melu\.train\.epochs: .*greater than or equal to 1 \(got 0\)$"):
        load_section(MeluConfig, "melu", p, {"train.local_steps": 1})
    with pytest.raises(ConfigError, match=r"^--set train\.local_steps=0: melu\.train\.local_steps"):
        load_section(MeluConfig, "melu", REPO / "params.yaml", {"train.local_steps": 0})


@pytest.mark.parametrize("model", ["melu", "seqrec", "dissan", "egtr"])
def test_cli_config_errors_come_first_in_one_line(tmp_path, model):
    """Before any Prefect server starts or any data loads: exit 2, one line naming source, key and expectation."""
    import subprocess
    import sys

    env = {k: v for k, v in __import__("os").environ.items() if k != "PREFECT_API_URL"}
    proc = subprocess.run([sys.executable, "-m", "flows.model", model, "--params", str(REPO / "params.yaml"), "--set", "nonsense_key=1"],
                          cwd=tmp_path, env={**env, "PYTHONPATH": str(REPO)}, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert lines == [f"error: --set nonsense_key=1: {model}.nonsense_key: unknown key"], proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr and "temporary server" not in proc.stdout + proc.stderr
    assert list(tmp_path.iterdir()) == []  # nothing written: no metrics, no mlflow.db, no outputs


def test_updated_copies_are_validated():
    from data.config import updated

    cfg = load_section(MeluConfig, "melu", REPO / "params.yaml")
    assert updated(cfg, {"train.local_steps": 1}).train.local_steps == 1 and cfg.train.local_steps == 5
    with pytest.raises(ConfigError, match=r"melu|train\.local_steps"):
        updated(cfg, {"train.local_steps": 0})  # what model_copy(update=...) would have let through


@pytest.mark.parametrize("name", ["melu", "seqrec", "dissan", "egtr"])
def test_every_model_has_the_shared_shape_and_one_fingerprint_rule(name):
    """outputs + registry sections of the shared types; the checkpoint key ignores paths, device, outputs and registry
    and changes with anything that changes the weights."""
    from importlib import import_module

    from models.catalog import get
    from models.common.config import OutputsConfig, RegistryConfig

    spec = get(name)
    cfg = spec.load_config(REPO / "params.yaml")
    assert isinstance(cfg.outputs, OutputsConfig) and isinstance(cfg.registry, RegistryConfig)
    recipe = import_module(f"models.{name}.recipe")
    fp = (lambda c: recipe.fingerprint(c, "sgg")) if name == "egtr" else recipe.fingerprint
    same = {"outputs.metrics_dir": "elsewhere", "registry.experiment": "other", "registry.model_name": None}
    same |= {"device": "cpu", "out_dir": "x"} if name == "egtr" else {"train.device": "cpu", "train.checkpoint_dir": "x", "train.resume": False}
    if name == "seqrec":
        same.pop("registry.model_name")  # seqrec: null is allowed, but fanc != model.name is not (tested below)
    changed = {"sgg.lr": 1e-3} if name == "egtr" else {"train.lr" if name != "melu" else "train.global_lr": 1e-2}
    assert fp(spec.load_config(REPO / "params.yaml", same)) == fp(cfg)
    assert fp(spec.load_config(REPO / "params.yaml", changed)) != fp(cfg)


def test_registry_settings_are_checked():
    from models.catalog import get

    for name, bad, expect in (
        ("seqrec", {"registry.gate_metric": "valid_ndcg_at_7"}, r"seqrec\.registry\.gate_metric: 'valid_ndcg_at_7' is not a validation metric.*K in eval\.ks \[5, 10, 20\]"),
        ("seqrec", {"eval.ks": [1, 5], "registry.gate_metric": "valid_hr_at_20"}, r"'valid_hr_at_20' is not a validation metric.*K in eval\.ks \[1, 5, 10\]"),
        ("egtr", {"registry.gate_metric": "val_R_at_7"}, r"egtr\.registry\.gate_metric: 'val_R_at_7'"),
        ("dissan", {"registry.gate_metric": "test_accuracy"}, r"dissan\.registry\.gate_metric: 'test_accuracy': the gate compares dev_accuracy"),
        ("seqrec", {"model.name": "sasrec"}, r"seqrec\.registry\.model_name: 'fanc' would register a sasrec model under another model's name"),
        ("melu", {"registry.gate_mode": "lowest"}, r"melu\.registry\.gate_mode: Input should be 'min' or 'max'"),
    ):
        with pytest.raises(ConfigError, match=expect):
            get(name).load_config(REPO / "params.yaml", bad)
    with pytest.raises(ValueError, match=r"variant: 'gru' is not a variant of seqrec; expected one of \['fanc'"):
        get("seqrec").variant("gru")
    assert get("seqrec").load_config(REPO / "params.yaml", get("seqrec").variant("fanc_no_gate")).registry.model_name is None


def test_seqrec_fingerprint_skips_the_sub_sections_of_other_models():
    """A SASRec option is not part of FaNC's checkpoint key (a new one must not invalidate FaNC's runs) and is part
    of SASRec's; FaNC's options likewise."""
    from models.catalog import get
    from models.seqrec.recipe import fingerprint

    spec = get("seqrec")
    fanc = spec.load_config(REPO / "params.yaml", spec.variant("fanc"))
    sasrec = spec.load_config(REPO / "params.yaml", spec.variant("sasrec"))
    assert fingerprint(fanc.model_copy(update={"model": fanc.model.model_copy(update={"sasrec": fanc.model.sasrec.model_copy(update={"heads": 4})})})) == fingerprint(fanc)
    assert fingerprint(spec.load_config(REPO / "params.yaml", spec.variant("fanc") | {"model.sasrec.pos_init": "torch"})) == fingerprint(fanc)
    assert fingerprint(spec.load_config(REPO / "params.yaml", spec.variant("sasrec") | {"model.sasrec.pos_init": "torch"})) != fingerprint(sasrec)
    assert fingerprint(spec.load_config(REPO / "params.yaml", spec.variant("sasrec") | {"model.fanc.damping": 0.5})) == fingerprint(sasrec)
    assert fingerprint(spec.load_config(REPO / "params.yaml", spec.variant("fanc") | {"model.fanc.damping": 0.5})) != fingerprint(fanc)
    assert fingerprint(spec.load_config(REPO / "params.yaml", spec.variant("fanc") | {"train.adam_beta2": 0.98})) != fingerprint(fanc)
