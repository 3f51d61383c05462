"""End-to-end: both EGTR flows on a tiny SYNTHETIC scene set (tiny random model), the registry, the pyfunc and
the inference command; plus the synthetic generator's geometry and the checkpoint-kind check."""

from __future__ import annotations

import base64
import json
import os
from pathlib import Path

import mlflow
import pandas as pd
import pytest
import yaml
from mlflow import MlflowClient

from data.synthetic_scenes import PREDICATES, generate, predicate
from tests.conftest import REPO

from models.egtr.tiny import TINY_EGTR  # noqa: E402  (the tiny preset of models/egtr/tiny.py)


def test_synthetic_predicates_follow_geometry():
    assert predicate((0, 0, 10, 10), (20, 0, 30, 10)) == "left of"
    assert predicate((20, 0, 30, 10), (0, 0, 10, 10)) == "right of"
    assert predicate((0, 0, 10, 10), (0, 30, 10, 40)) == "above"
    assert predicate((0, 30, 10, 40), (0, 0, 10, 10)) == "below"
    assert predicate((5, 5, 8, 8), (0, 0, 20, 20)) == "inside"
    assert predicate((0, 0, 20, 20), (5, 5, 8, 8)) == "contains"
    assert predicate((0, 0, 10, 10), (11, 0, 20, 10)) == "touching"


def test_synthetic_generator_is_seeded_and_labelled(tmp_path):
    from data.sgg_schema import dataset_stats, load_split, validate_dataset

    a = generate(tmp_path / "a", train=6, val=2, test=2, size=64, max_size=24, seed=3)
    b = generate(tmp_path / "b", train=6, val=2, test=2, size=64, max_size=24, seed=3)
    validate_dataset(a)
    assert (a / "train.json").read_text() == (b / "train.json").read_text()
    assert json.loads((a / "meta.json").read_text())["synthetic"] is True
    stats = dataset_stats(a)
    assert stats["train"]["images"] == 6 and stats["num_predicates"] == len(PREDICATES)
    sg = load_split(a, "train")
    for iid in sg.image_ids:  # every ordered pair has exactly one predicate, equal to the geometry rule
        t = sg.targets(iid)
        m = len(t["labels"])
        assert len(t["rels"]) == m * (m - 1)
        xyxy = [(x, y, x + w, y + h) for x, y, w, h in t["boxes_xywh"].tolist()]
        for s, o, p in t["rels"].tolist():
            assert PREDICATES[p] == predicate(xyxy[s], xyxy[o])
        assert sg.image_path(iid).is_file()


@pytest.fixture
def tiny_synthetic(tmp_path):
    data = generate(tmp_path / "sgg", train=12, val=4, test=4, size=64, max_objects=3, min_size=12, max_size=24, seed=0)
    params = {"egtr": {**TINY_EGTR, "data_dir": str(data), "out_dir": str(tmp_path / "out"),
                       "outputs": {"metrics_dir": str(tmp_path / "metrics"), "plots_dir": str(tmp_path / "plots")}}}
    from models.egtr.config import EgtrConfig

    p = tmp_path / "params.yaml"  # every subsection written out, as params.yaml has them (a missing one is an error)
    p.write_text(yaml.safe_dump({"egtr": EgtrConfig.model_validate(params["egtr"]).model_dump(mode="json")}))
    return str(p), data


@pytest.mark.slow
def test_egtr_flows_chain_register_serve_and_infer(prefect_harness, mlflow_store, tiny_synthetic, tmp_path, monkeypatch):
    from flows.model import model_flow
    from models.egtr.infer import main as infer_main
    from models.egtr.recipe import CheckpointKindError, load_model

    params, data = tiny_synthetic
    monkeypatch.chdir(tmp_path)
    res = model_flow("egtr", params_path=params)
    det = res["detector"]
    assert det["source"] == "stage pretrain" and det["epochs_run"] == 2 and Path(det["weights"]).is_file()
    assert 0.0 <= det["pretrain_val_AP50"] <= 1.0
    assert res["synthetic"] is True and res["sgg_epochs_run"] == 1
    t = res["test"]
    for k in ("R_at_20", "R_at_50", "R_at_100", "mR_at_50", "ngc_R_at_50", "AP50"):
        assert 0.0 <= t[k] <= 1.0, k
    # (no-graph-constraint recall is not >= graph-constrained recall at equal K in general: K counts triplets)
    assert t["R_at_20"] <= t["R_at_50"] <= t["R_at_100"] and t["ngc_R_at_20"] <= t["ngc_R_at_50"] <= t["ngc_R_at_100"]
    assert t["params_relation_head"] > 0 and t["images_per_s"] > 0
    assert set(res["gates"]) == {"val_rel_gate_0", "val_rel_gate_1", "val_rel_gate_2"}
    written = json.loads((tmp_path / "metrics" / "synthetic.json").read_text())
    assert written["val_R_at_50"] == res["val_R_at_50"]
    assert json.loads((tmp_path / "metrics" / "synthetic-pretrain.json").read_text())["epochs_run"] == 2
    assert res["registry"]["promoted"] and res["registry"]["champion_alias"] == "champion_synthetic"
    c = MlflowClient()
    run = c.get_run(res["run_id"])
    assert run.data.tags["synthetic"] == "true" and run.data.tags["reproducible"] == "true"
    assert run.data.tags["pretrain.stopped_by"] == det["stopped_by"] and "pretrain_val_AP50" in run.data.metrics
    assert "test_untrained_head_R_at_50" in run.data.metrics and "test_freq_only_R_at_50" in run.data.metrics
    assert "figures/test_predicate_recall.png" in {a.path for a in c.list_artifacts(res["run_id"], "figures")}

    # the pyfunc: base64 image in, scene graph with the training label names out
    model = mlflow.pyfunc.load_model("models:/egtr@champion_synthetic")
    img = sorted((data / "images").glob("test_*.png"))[0]
    out = model.predict(pd.DataFrame([{"image": base64.b64encode(img.read_bytes()).decode()}]))
    objects, relations = json.loads(out.objects[0]), json.loads(out.relations[0])
    assert relations and {r["predicate"] for r in relations} <= set(PREDICATES)
    assert {o["label"] for o in objects} <= {"circle", "square", "triangle", "diamond", "ring", "bar"}
    with pytest.raises(Exception, match="image"):
        model.predict(pd.DataFrame([{"image": "not an image"}]))

    # a second run reuses the finished detector (same fingerprint -> resumed at its last epoch, no new epochs)
    res2 = model_flow("egtr", params_path=params, register_model=False)
    assert res2["detector"]["weights"] == det["weights"] and res2["detector"]["epochs_run"] == 2

    # inference command on one image, from the registry
    out_dir = tmp_path / "sg"
    assert infer_main(["--model", "models:/egtr@champion_synthetic", "--images", str(img), "--out", str(out_dir), "--top-k", "5"]) == 0
    graph = json.loads((out_dir / f"{img.stem}.json").read_text())
    assert len(graph["relations"]) == 5 and graph["width"] == 64
    assert all(r["text"].split(" ")[0] in {"circle", "square", "triangle", "diamond", "ring", "bar"} for r in graph["relations"])
    assert (out_dir / f"{img.stem}.png").stat().st_size > 1000
    # a detector checkpoint is refused with a message that says what it is
    with pytest.raises(CheckpointKindError, match="stage-0 detector"):
        load_model(det["weights"], "egtr")
    assert infer_main(["--model", det["weights"], "--images", str(img), "--out", str(out_dir)]) == 2
    # a folder with unreadable files: each is skipped with a one-line error naming it, the rest are written, exit 1
    folder = tmp_path / "mixed"
    folder.mkdir()
    good = folder / "b_good.png"
    good.write_bytes(img.read_bytes())
    (folder / "a_empty.jpg").write_bytes(b"")
    (folder / "c_text.jpg").write_text("this is not an image")
    (folder / "d_truncated.png").write_bytes(img.read_bytes()[: len(img.read_bytes()) // 2])
    (folder / "e_header.jpg").write_bytes(b"\xff\xd8\xff\xe0" + b"\x00" * 64)
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-m", "models.egtr.infer", "--model", "models:/egtr@champion_synthetic", "--images",
                           str(folder), "--out", str(tmp_path / "sg2")], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": str(REPO)})
    assert proc.returncode == 1, proc.stderr[-3000:]
    err = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    named = [line for line in err if line.startswith("error: ") and "not a readable image" in line]
    assert sorted(line.split(":")[1].strip().rsplit("/", 1)[1] for line in named) == [
        "a_empty.jpg", "c_text.jpg", "d_truncated.png", "e_header.jpg"]
    assert any("(empty file)" in line for line in named if "a_empty" in line)
    assert err[-1] == f"error: 4 of 5 images could not be read (see above); the other 1 were written to {tmp_path / 'sg2'}"
    assert sorted(p.name for p in (tmp_path / "sg2").iterdir()) == ["b_good.json", "b_good.png"]


def test_stage_fingerprints_name_what_each_stage_depends_on():
    """The relation settings do not touch stage 0 (the detector is reused when only they change); they and the
    detector's own recipe identify stage 1."""
    from models.egtr.config import EgtrConfig
    from models.egtr.recipe import fingerprint

    base = EgtrConfig.model_validate({**TINY_EGTR, "data_dir": "d"})
    rel = EgtrConfig.model_validate({**TINY_EGTR, "data_dir": "d", "relation": {"init": "official"}})
    rel2 = EgtrConfig.model_validate({**TINY_EGTR, "data_dir": "d", "relation": {"init": "pytorch"}})
    det = EgtrConfig.model_validate({**TINY_EGTR, "data_dir": "d", "pretrain": {**TINY_EGTR["pretrain"], "epochs": 2}})
    assert fingerprint(rel, "pretrain") == fingerprint(rel2, "pretrain") == fingerprint(base, "pretrain")
    assert fingerprint(rel, "sgg") != fingerprint(rel2, "sgg")
    assert fingerprint(det, "pretrain") != fingerprint(base, "pretrain")
    assert fingerprint(det, "sgg") != fingerprint(base, "sgg")


def test_interrupted_stage_resumes_to_the_same_weights(tmp_path):
    """Kill after epoch 1 of 2 (drop the newest checkpoint): the rerun resumes and ends where an uninterrupted run ends."""
    import torch

    from models.egtr.config import EgtrConfig
    from models.egtr.recipe import stage_dir, train_stage

    data = generate(tmp_path / "sgg", train=8, val=4, test=4, size=64, max_objects=3, min_size=12, max_size=24, seed=1)
    raw = {**TINY_EGTR, "data_dir": str(data), "pretrain": {**TINY_EGTR["pretrain"], "epochs": 2, "finetune_epochs": 0}}
    full = train_stage(EgtrConfig.model_validate({**raw, "out_dir": str(tmp_path / "a")}), "pretrain", progress=False)
    cfg_b = EgtrConfig.model_validate({**raw, "out_dir": str(tmp_path / "b")})
    train_stage(cfg_b, "pretrain", progress=False)
    ckpts = sorted((stage_dir(cfg_b, "pretrain") / "checkpoints").glob("epoch-*.pt"))
    assert [p.name for p in ckpts] == ["epoch-0001.pt", "epoch-0002.pt"]
    ckpts[-1].unlink()  # as if killed during epoch 2
    resumed = train_stage(cfg_b, "pretrain", progress=False)
    assert resumed["epochs_run"] == 2
    assert [h["train_loss"] for h in resumed["history"]] == pytest.approx([h["train_loss"] for h in full["history"]], rel=1e-5)
    a = torch.load(stage_dir(EgtrConfig.model_validate({**raw, "out_dir": str(tmp_path / "a")}), "pretrain") / "checkpoints" / "epoch-0002.pt",
                   weights_only=True)["model"]
    b = torch.load(stage_dir(cfg_b, "pretrain") / "checkpoints" / "epoch-0002.pt", weights_only=True)["model"]
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=1e-5, rtol=1e-4)


def test_finetuning_always_runs_from_the_main_fits_best_weights(tmp_path):
    """Official two fits: the main fit ends (here by its share of a tiny time budget), fine-tuning still runs, at 0.1x,
    with a fresh optimizer, starting from best_main.pt; its best weights are the stage's result. Resuming an
    interrupted fine-tuning epoch ends where the uninterrupted run ends."""
    import torch

    from models.egtr.config import EgtrConfig
    from models.egtr.recipe import stage_dir, train_stage

    data = generate(tmp_path / "sgg", train=8, val=4, test=4, size=64, max_objects=3, min_size=12, max_size=24, seed=1)
    raw = {**TINY_EGTR, "data_dir": str(data), "pretrain": {**TINY_EGTR["pretrain"], "epochs": 3, "finetune_epochs": 2,
                                                             "time_budget_s": 1e-9}}
    cfg = EgtrConfig.model_validate({**raw, "out_dir": str(tmp_path / "a")})
    res = train_stage(cfg, "pretrain", progress=False)
    assert res["stopped_by"] == "main: time_budget; finetune: time_budget"
    assert [h["lr_factor"] for h in res["history"]] == [1.0, 0.1]
    d = stage_dir(cfg, "pretrain")
    main = torch.load(d / "best_main.pt", weights_only=True)
    best = torch.load(d / "best.pt", weights_only=True)
    assert (main["phase"], main["epoch"], best["phase"], best["epoch"]) == ("main", 1, "finetune", 2)
    ft = torch.load(d / "finetune_checkpoints" / "epoch-0001.pt", weights_only=True)
    lrs = sorted(g["lr"] for g in ft["optimizer"]["param_groups"])  # 0.1 x (backbone rate, detector rate)
    assert lrs == pytest.approx(sorted([0.1 * cfg.pretrain.lr_backbone, 0.1 * cfg.pretrain.lr]))
    assert all(s["step"] == 2 for s in ft["optimizer"]["state"].values())  # a fresh AdamW: 2 steps (8 images / 4)

    # no time budget: 3 + 2 epochs; drop the newest fine-tuning checkpoint and resume
    raw["pretrain"] = {**raw["pretrain"], "time_budget_s": 0.0, "patience": 100}
    full = train_stage(EgtrConfig.model_validate({**raw, "out_dir": str(tmp_path / "b")}), "pretrain", progress=False)
    assert [h["lr_factor"] for h in full["history"]] == [1.0, 1.0, 1.0, 0.1, 0.1]
    assert full["stopped_by"] == "main: max_epochs; finetune: max_epochs"
    cfg_c = EgtrConfig.model_validate({**raw, "out_dir": str(tmp_path / "c")})
    train_stage(cfg_c, "pretrain", progress=False)
    (stage_dir(cfg_c, "pretrain") / "finetune_checkpoints" / "epoch-0002.pt").unlink()
    resumed = train_stage(cfg_c, "pretrain", progress=False)
    assert [h["val_loss"] for h in resumed["history"]] == pytest.approx([h["val_loss"] for h in full["history"]], rel=1e-5)
    assert resumed["stopped_by"] == full["stopped_by"]  # the reason is read from the history, also after a resume


def test_evaluate_with_the_open_images_protocol(tmp_path):
    """eval.protocol = oi adds R@50 / wmAP_rel / wmAP_phr / score_wtd to the VG metrics (random tiny model)."""
    import torch

    from models.egtr.config import EgtrConfig
    from models.egtr.evaluate import evaluate
    from models.egtr.modeling import EGTR

    data = generate(tmp_path / "sgg", train=4, val=2, test=3, size=64, max_objects=3, min_size=12, max_size=24, seed=2)
    cfg = EgtrConfig.model_validate({**TINY_EGTR, "data_dir": str(data), "eval": {"protocol": "oi"}})
    torch.manual_seed(0)
    model = EGTR(cfg.detector, 6, len(PREDICATES))
    res = evaluate(model, cfg, "test", progress=False)
    for k in ("oi_R_at_50", "oi_wmAP_rel", "oi_wmAP_phr", "oi_score_wtd", "R_at_50", "AP50"):
        assert 0.0 <= res[k] <= 1.0, k
    assert res["oi_score_wtd"] == pytest.approx(0.2 * res["oi_R_at_50"] + 0.4 * res["oi_wmAP_rel"] + 0.4 * res["oi_wmAP_phr"])
    assert res["images"] == 3
