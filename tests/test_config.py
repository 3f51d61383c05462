"""params.yaml <-> typed configs; dvc.yaml params exist; prefect.yaml entrypoints import."""

from __future__ import annotations

import importlib
import re

import pytest
import yaml

from models.common.config import ConfigError, load_section
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
            assert re.search(r"#\s*\((int|float|str|bool|list\[\w+\])\)", line), f"params.yaml:{n} lacks a '# (type) meaning' comment"


def test_dvc_params_exist_and_deps_exist():
    dvc = yaml.safe_load((REPO / "dvc.yaml").read_text())
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    produced = []  # outputs of stages (templated names as regexes): a dep on them need not exist in git
    for stage in dvc["stages"].values():
        body = stage.get("do", stage)
        for kind in ("outs", "metrics", "plots"):
            for out in body.get(kind, []):
                path = next(iter(out)) if isinstance(out, dict) else out
                produced.append(re.compile(re.sub(r"\\\$\\\{[^}]+\\\}", "[^/]+", re.escape(path))))
    for name, stage in dvc["stages"].items():
        body = stage.get("do", stage)
        for key in body.get("params", []):
            node = params
            for part in key.split("."):
                assert part in node, f"dvc.yaml stage {name}: param {key} not in params.yaml"
                node = node[part]
        for dep in body.get("deps", []):
            if "${" not in dep and not any(p.fullmatch(dep) for p in produced):
                assert (REPO / dep).exists(), f"dvc.yaml stage {name}: dep {dep} does not exist"


def test_prefect_entrypoints_import_and_use_the_gpu_pool():
    spec = yaml.safe_load((REPO / "prefect.yaml").read_text())
    assert spec["deployments"]
    for dep in spec["deployments"]:
        path, fn = dep["entrypoint"].split(":")
        module = importlib.import_module(path.removesuffix(".py").replace("/", "."))
        assert callable(getattr(module, fn))
        assert dep["work_pool"]["name"] == "gpu"
        assert dep["schedules"] and "cron" in dep["schedules"][0]
