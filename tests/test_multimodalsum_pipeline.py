"""MultimodalSum as a catalogued model (models/multimodalsum/): leave-one-out batching, the tokenizer's corpus, each
step's trainable set, resume = uninterrupted, bad-input errors, the flow into a temporary MLflow, the pyfunc.
Every test runs the tiny preset (models/multimodalsum/tiny.py) or smaller; the whole file takes about a minute."""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from data.config import ConfigError, load_section, updated
from data.review_schema import ReviewDataError, write_tables
from models.multimodalsum import recipe
from models.multimodalsum.config import MultimodalSumConfig
from models.multimodalsum.data import (Batcher, Entity, ReviewCorpus, epoch_loo, loo_picks, poisson_probs,
                                       text_infill)
from models.multimodalsum.tiny import tiny, tiny_data
from models.multimodalsum.tokenizer import EOS, PAD, ReviewTokenizer
from tests.conftest import REPO


@pytest.fixture(scope="module")
def tiny_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("mms_tiny")
    tiny_data(root)
    return root


def _cfg(root: Path, **overrides) -> MultimodalSumConfig:
    cfg = MultimodalSumConfig.model_validate(tiny(root))
    return updated(cfg, overrides) if overrides else cfg


@pytest.fixture(scope="module")
def trained(tiny_root):
    """All five stages of the tiny preset, once for the module: (cfg, {stage: result})."""
    cfg = _cfg(tiny_root)
    return cfg, recipe.train_all(cfg, progress=False)


# --------------------------------------------------------------------------------------------- leave-one-out
def _entity(n: int, ratings=True, eid="e") -> Entity:
    # review j has j + 2 words, so its token count identifies it
    reviews = [" ".join(["good"] * (j + 2)) + "." for j in range(n)]
    return Entity(entity_id=eid, source="synthetic", split="train", dataset="d", row=None, reviews=reviews,
                  ratings=[float(1 + j % 5) for j in range(n)] if ratings else None, table=None)


def test_leave_one_out_target_never_an_input_and_delta(tiny_root):
    cfg = _cfg(tiny_root, **{"modalities.images": False, "modalities.table": False})
    tok = ReviewTokenizer.train(["good good good bad"] * 20, vocab_size=280)
    ents = [_entity(5, eid="a"), _entity(5, ratings=False, eid="b")]
    picks = [[4, 0, 2, 1, 3], [1, 3, 0, 2, 4]]
    batch = Batcher(cfg, tok, None, train=True).loo(ents, picks)
    lengths = batch.review_mask.sum(-1)  # [B, R]: distinct per review
    model = recipe.build_model(cfg, tok).eval()
    calls = []
    original = model.forward

    def spy(*args, memory=None, labels=None, delta=None, **kw):
        calls.append((memory.text.mask.sum(-1).clone(), labels.clone(), torch.as_tensor(delta).clone()))
        return original(*args, memory=memory, labels=labels, delta=delta, **kw)

    model.forward = spy
    loss = model.leave_one_out_loss(batch.review_ids, batch.review_mask, batch.ratings)
    assert torch.isfinite(loss) and len(calls) == 5
    for i, (input_lengths, labels, delta) in enumerate(calls):
        assert torch.equal(labels, batch.review_ids[:, i])  # review i is the target ...
        for b in range(2):
            others = sorted(lengths[b, [j for j in range(5) if j != i]].tolist())
            assert sorted(input_lengths[b].tolist()) == others  # ... and exactly the other reviews are the inputs
            assert lengths[b, i].item() not in input_lengths[b].tolist()
        r = torch.tensor([ents[0].ratings[p] for p in picks[0]])
        expected = r[i] - r[[j for j in range(5) if j != i]].mean()
        assert delta[0].item() == pytest.approx(expected.item())
        assert delta[1].item() == 0.0  # an entity without ratings: delta = 0


def test_sampling_is_seeded_distinct_and_validation_matches_pandas():
    ents = [_entity(12, eid=f"e{i}") for i in range(5)]
    a, b = epoch_loo(ents, 9, seed=0, epoch=3), epoch_loo(ents, 9, seed=0, epoch=3)
    assert [(e.entity_id, p) for e, p in a] == [(e.entity_id, p) for e, p in b]
    assert [p for _, p in epoch_loo(ents, 9, 0, 4)] != [p for _, p in a]  # another epoch, another draw
    assert all(len(set(p)) == 9 for _, p in a)
    pd = pytest.importorskip("pandas")
    val = loo_picks(ents, 9, None, val_seed=7)
    expected = list(pd.DataFrame({"i": range(12)}).sample(9, random_state=7)["i"])
    assert val[0] == expected and val[0] == val[3]  # official groupby().sample(9, random_state=7)


def test_stripped_reviews_follow_the_official_130_to_128_rule():
    tok = ReviewTokenizer.train(["word " * 10] * 5, vocab_size=270)
    short, long = tok.stripped("word word", 130), tok.stripped("word " * 200, 10)
    assert short[-1] == EOS and 0 not in short  # </s> kept, <s> stripped
    assert len(long) == 8 and EOS not in long  # truncated: the </s> falls off, as in the official [1:-1]


def test_text_infilling_masks_spans_and_keeps_the_last_token():
    rng = np.random.RandomState(0)
    toks = list(range(10, 60))
    out = text_infill(toks, 0.3, poisson_probs(3.0), mask_id=4, rng=rng, max_len=64)
    assert out[-1] == toks[-1] and 4 in out and len(out) <= len(toks) + 15
    assert [t for t in out if t != 4] == [t for t in toks if t in set(out)]  # order kept, only deletions + masks
    assert text_infill(toks, 0.0, poisson_probs(3.0), 4, rng, 64) == toks


# --------------------------------------------------------------------------------------------------- tokenizer
def _write_marked(folder: Path) -> Path:
    """train / dev / test entities; the words 'zqxjv' (references) and 'wyvkp' (dev/test reviews) occur nowhere in
    the training reviews."""
    ents, revs, refs = [], [], []
    for split, n in (("train", 3), ("dev", 1), ("test", 1)):
        for k in range(n):
            eid = f"{split}{k}"
            ents.append({"entity_id": eid, "source": "yelp", "split": split, "has_table": False})
            for j in range(9):
                text = f"the food was good and the staff friendly {j}" if split == "train" else "wyvkp wyvkp wyvkp fine"
                revs.append({"entity_id": eid, "review_id": f"{eid}_{j}", "position": j, "split": split, "rating": 4.0,
                             "text": text})
            refs.append({"entity_id": eid, "ref_index": 0, "split": split, "text": "zqxjv " * 30})
    meta = {"dataset": folder.name, "synthetic": True, "image_root": None, "notes": "test", "extra": {}}
    return write_tables(folder, ents, revs, refs, [], meta)


def test_tokenizer_sees_only_training_reviews(tmp_path):
    folder = _write_marked(tmp_path / "marked")
    cfg = _cfg(tmp_path, **{"data.folders": [str(folder)], "data.val_fraction": 0.34, "modalities.images": False,
                            "modalities.table": False})
    corpus = ReviewCorpus(cfg.data, cfg.modalities)
    texts = corpus.tokenizer_texts()
    assert texts and all("wyvkp" not in t and "zqxjv" not in t for t in texts)
    assert len(texts) == 9 * len(corpus.train) and not {e.entity_id for e in corpus.train} & {e.entity_id for e in corpus.val}
    tok = ReviewTokenizer.train(texts, vocab_size=400)
    vocab = tok.backend.get_vocab()
    assert not any(("zqx" in p) or ("wyv" in p) for p in vocab)  # no merge learnt from a reference or a test review
    assert [vocab[s] for s in ("<s>", "<pad>", "</s>", "<unk>")] == [0, 1, 2, 3]
    assert ReviewTokenizer.train(texts, vocab_size=400).to_str() == tok.to_str()  # deterministic
    assert tok.decode(tok.pieces("the food was good")) == "the food was good"


# --------------------------------------------------------------------------------------------- trainable sets
def test_each_step_trains_only_its_set(trained):
    from models.common.seed import set_seed

    cfg, done = trained

    def params(stage):
        return torch.load(done[stage]["weights"], map_location="cpu", weights_only=True)["model"]

    model, _, tok, _ = recipe.load_model(done["denoise"]["weights"])
    names = {n for n, _ in model.named_parameters()}
    expected = {"denoise": {n for n in names if n.startswith("bart.")}}
    for stage in ("text", "image", "table", "multimodal"):
        expected[stage] = {n for n, _ in model.trainable_parameters(recipe.STEP_CODES[stage])}
    set_seed(cfg.denoise.init_seed)  # the initial model of step 0, rebuilt
    initial = {k: v.detach() for k, v in recipe.build_model(cfg, tok).state_dict().items()}
    # step 3 starts from step 1 (BART, rating vector, gates) with the encoders of 2a / 2b
    upstream = {"denoise": initial, "text": params("denoise"), "image": params("text"), "table": params("text"),
                "multimodal": {**params("text"), **{k: v for k, v in params("image").items() if k.startswith("image_encoder.")},
                               **{k: v for k, v in params("table").items() if k.startswith("table_encoder.")}}}
    for stage, before in upstream.items():
        after = params(stage)
        changed = {n for n in names if not torch.equal(before[n], after[n])}
        assert changed, stage
        assert changed <= expected[stage], f"{stage} changed {sorted(changed - expected[stage])[:3]}"
    assert "rating_embedding" not in expected["denoise"] and "rating_embedding" in expected["text"]
    assert not any(n.startswith("gates.") for n in expected["text"]) and "gates.0.alpha_proj.weight" in expected["multimodal"]
    frozen_cnn = ("image_encoder.stage1.", "image_encoder.stage2.")
    assert expected["image"] == {n for n in names if n.startswith("image_encoder.") and not n.startswith(frozen_cnn)}
    assert expected["table"] == {n for n in names if n.startswith("table_encoder.")}
    assert not any(n.startswith(frozen_cnn) for n in expected["multimodal"])
    assert {n for n in expected["multimodal"] if n.startswith("bart.")} == expected["denoise"]


def test_keys_chain_upstream(tiny_root):
    cfg = _cfg(tiny_root)
    fp = recipe.fingerprints(cfg)
    other = recipe.fingerprints(updated(cfg, {"image.lr": 5.0e-4}))
    assert other["text"] == fp["text"] and other["table"] == fp["table"]  # untouched upstream / sibling
    assert other["image"] != fp["image"] and other["multimodal"] != fp["multimodal"]  # the step and its downstream
    changed = recipe.fingerprints(updated(cfg, {"denoise.epochs": 2}))
    assert all(changed[s] != fp[s] for s in recipe.STAGES)
    assert recipe.fingerprints(updated(cfg, {"eval.num_beams": [3]})) == fp  # evaluation is not training


# ------------------------------------------------------------------------------------------------------- resume
class _Stop(Exception):
    pass


def test_resume_gives_the_uninterrupted_result(trained, tmp_path):
    cfg, done = trained
    base = updated(cfg, {"text.epochs": 2, "text.patience": 5})
    a = updated(base, {"text.checkpoint_dir": str(tmp_path / "a")})
    b = updated(base, {"text.checkpoint_dir": str(tmp_path / "b")})
    full = recipe.train_text(a, done["denoise"], progress=False)

    def stop_after_first(epoch, metrics):
        if epoch == 0:
            raise _Stop

    with pytest.raises(_Stop):
        recipe.train_text(b, done["denoise"], progress=False, on_epoch_end=[stop_after_first])
    resumed = recipe.train_text(b, done["denoise"], progress=False)
    assert full["epochs_run"] == resumed["epochs_run"] == 2
    strip = lambda h: [{k: v for k, v in e.items() if k != "epoch_seconds"} for e in h]  # noqa: E731
    assert strip(full["history"]) == strip(resumed["history"])
    wa = torch.load(full["weights"], weights_only=True)["model"]
    wb = torch.load(resumed["weights"], weights_only=True)["model"]
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_lr_schedule_is_the_official_linear_warmup():
    assert recipe.lr_factor(0, 100, 0.1) == 0.0 and recipe.lr_factor(5, 100, 0.1) == 0.5
    assert recipe.lr_factor(10, 100, 0.1) == 1.0 and recipe.lr_factor(55, 100, 0.1) == pytest.approx(0.5)
    assert recipe.lr_factor(0, 100, 0.0) == 1.0


# ---------------------------------------------------------------------------------------------------- bad input
def _write_variant(folder: Path, *, partial_rating=False, bad_photo=False, few_reviews=False, amazon=False) -> Path:
    ents, revs, imgs = [], [], []
    blobs = {}
    for split in ("train", "dev", "test"):
        for k in range(3 if split == "train" else 1):
            eid = f"{split}{k}"
            ent = {"entity_id": eid, "source": "amazon" if amazon else "yelp", "split": split, "has_table": True,
                   "name": f"Place {k}", "avg_rating": 4.0}
            ents.append(ent)
            n = 5 if few_reviews else 9
            for j in range(n):
                rating = None if (partial_rating and eid == "train1" and j == 3) else 4.0
                revs.append({"entity_id": eid, "review_id": f"{eid}_{j}", "position": j, "split": split, "rating": rating,
                             "text": f"nice place number {j}"})
            data = b"not a jpeg at all" if (bad_photo and eid == "train2") else _jpeg()
            blobs[f"images/{eid}.jpg"] = data
            imgs.append({"entity_id": eid, "photo_id": eid, "path": f"images/{eid}.jpg",
                         "sha256": hashlib.sha256(data).hexdigest()})
    refs = [{"entity_id": e["entity_id"], "ref_index": 0, "split": e["split"], "text": "a summary"}
            for e in ents if e["split"] != "train"]
    meta = {"dataset": folder.name, "synthetic": True, "image_root": ".", "notes": "test", "extra": {}}

    def extra(tmp: Path) -> None:
        (tmp / "images").mkdir()
        for rel, data in blobs.items():
            (tmp / rel).write_bytes(data)

    return write_tables(folder, ents, revs, refs, imgs, meta, extra_files=extra)


def _jpeg() -> bytes:
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (16, 16), (200, 10, 10)).save(buf, format="JPEG")
    return buf.getvalue()


@pytest.mark.parametrize("kind, match", [
    ("partial_rating", r"reviews\.parquet: entity 'train1' \(review at position 3\): rating: null while other reviews"),
    ("bad_photo", r"images\.parquet: entity 'train2': path: .*train2\.jpg does not decode as an image"),
    ("few_reviews", r"no train entity with at least data\.train_reviews = 9 reviews"),
    ("amazon", r"entities\.parquet: entity 'train0' \(row 0\): source: 'amazon' does not fit model\.table_schema 'yelp'"),
])
def test_bad_input_is_refused_before_training(tmp_path, kind, match):
    folder = _write_variant(tmp_path / kind, **{kind: True})
    cfg = _cfg(tmp_path, **{"data.folders": [str(folder)], "data.val_fraction": 0.34})
    with pytest.raises(ReviewDataError, match=match):
        recipe.train_denoise(cfg, progress=False)
    assert not (Path(cfg.denoise.checkpoint_dir)).exists()  # nothing written


def test_config_refuses_test_entities_in_training():
    with pytest.raises(ConfigError, match=r"multimodalsum\.data\.train_splits: the test split 'test' may never be trained"):
        load_section(MultimodalSumConfig, "multimodalsum", REPO / "params.yaml", {"data.train_splits": ["train", "test"]})
    with pytest.raises(ConfigError, match=r"multimodalsum\.registry\.gate_metric"):
        load_section(MultimodalSumConfig, "multimodalsum", REPO / "params.yaml", {"registry.gate_metric": "rouge"})


# ------------------------------------------------------------------------------------------ flow, registry, pyfunc
@pytest.mark.slow
def test_flow_registers_and_the_pyfunc_round_trips(prefect_harness, mlflow_store, tmp_path, monkeypatch):
    import mlflow
    from mlflow.exceptions import MlflowException

    from flows.model import model_flow

    monkeypatch.chdir(tmp_path)
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({"multimodalsum": tiny(tmp_path / "tiny")}))
    res = model_flow("multimodalsum", str(params))
    assert res["registry"]["promoted"] and res["registry"]["champion_alias"] == "champion_tiny"
    version = mlflow.MlflowClient().get_model_version_by_alias("multimodalsum", "champion_tiny")
    assert version.run_id == res["run_id"]
    metrics = json.loads((tmp_path / "tiny" / "metrics" / "tiny.json").read_text())
    assert "run_id" not in metrics and metrics["pad_in_loss"] == "fixed" and not metrics["text_only"]
    ds = metrics["datasets"]["synthetic"]
    assert set(ds) == {"model", "text_only_ablation", "text_step", "extractive"}
    assert set(ds["extractive"]) == {"random", "clustroid", "lexrank", "oracle"}
    assert ds["model"]["dev"]["chosen"] == {"num_beams": 2, "length_penalty": 1.0, "max_length": 12, "min_length": 0}
    assert ds["model"]["test"]["gates"]["alpha_with_table"] > 0 and ds["model"]["test"]["gates"]["beta_with_photos"] > 0
    assert math.isclose(metrics["dev_rouge_mean"], ds["model"]["dev"]["rouge"]["mean"])
    assert set(metrics["steps"]) == set(recipe.STAGES) and all(st["epochs_run"] == 1 for st in metrics["steps"].values())
    assert (tmp_path / "tiny" / "plots" / "tiny" / "multimodal_curve.csv").is_file()

    model = mlflow.pyfunc.load_model("models:/multimodalsum@champion_tiny")
    example = model.input_example
    out = model.predict(example)
    assert list(out.columns) == ["summary"] and len(out) == 1 and isinstance(out["summary"][0], str)
    good = example.iloc[0].to_dict()
    bad = [({**good, "reviews": []}, r"request 0: field 'reviews': empty list"),
           ({**good, "reviews": ["fine", " "]}, r"request 0: field 'reviews\[1\]'"),
           ({**good, "photos": [str(tmp_path / "missing.jpg")]}, r"request 0: field 'photos\[0\]': .* not a readable file"),
           ({**good, "metadata": json.dumps({"avg_rating": "five"})}, r"field 'metadata.avg_rating': value 'five'; expected a finite number"),
           ({**good, "metadata": json.dumps({"wifi_speed": 3})}, r"field 'metadata.wifi_speed': not a yelp table field")]
    import pandas as pd

    for row, match in bad:
        with pytest.raises(MlflowException, match=match):
            model.unwrap_python_model().predict(None, pd.DataFrame([row]))
    # photos, metadata and source are optional in the served signature: a request with reviews alone passes the
    # schema enforcement of the loaded model and is summarised (text path only)
    only_reviews = model.predict(pd.DataFrame([{"reviews": good["reviews"]}]))
    assert len(only_reviews) == 1 and isinstance(only_reviews["summary"][0], str)
