"""Korean-English translation tasks of the harness (news and JHE sets, both directions): data, prompts, metrics.

lm-eval has no Korean-English task; the prompts follow its WMT translation format and the metrics are its sacreBLEU
aggregations, so the metric check runs lm-eval's own ``bleu`` / ``chrf`` / ``ter`` aggregation functions on the same
(reference, prediction) items, and the end-to-end check runs ``lm_eval.simple_evaluate`` on a local task YAML that
``include``s the wheel's ``translation/wmt_common_yaml`` with the same template.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from tests.conftest import mirror_dir

pytestmark = pytest.mark.mirror


def _root() -> Path:
    return mirror_dir("mt_koen").parent


def test_mt_docs_and_prompts():
    from eval_harness.tasks import GROUPS, TASKS, build_examples

    root = _root()
    sizes = {n: len(TASKS[n].docs(root)) for n in GROUPS["mt_koen"]}
    assert sizes == {"mt_koen_news_ko2en": 2000, "mt_koen_news_en2ko": 2000, "mt_koen_jhe_ko2en": 720,
                     "mt_koen_jhe_en2ko": 720}
    assert len(TASKS["mt_koen_news_ko2en"].docs(root, "dev")) == 1000
    t = TASKS["mt_koen_jhe_ko2en"]
    ex = build_examples(t, root, limit=2)
    doc = t.docs(root)[0]
    assert ex[0].context.endswith(f"\n\nKorean phrase: {doc['ko']}\nEnglish phrase:")
    assert ex[0].context.count("\n\n") == 5 and ex[0].context.count("English phrase:  ") == 5  # lm-eval's 2 spaces
    assert ex[0].gold == " " + doc["en"] and ex[0].context != ex[1].context
    z = build_examples(TASKS["mt_koen_news_en2ko"], root, num_fewshot=0, limit=1)[0]
    d = TASKS["mt_koen_news_en2ko"].docs(root)[0]
    assert z.context == f"English phrase: {d['en']}\nKorean phrase:" and z.gold == " " + d["ko"]


def test_translation_metrics_equal_lm_evals_aggregations():
    lm_metrics = pytest.importorskip("lm_eval.api.metrics")
    from eval_harness.metrics import translation_metrics
    from eval_harness.tasks import TASKS

    docs = TASKS["mt_koen_jhe_ko2en"].docs(_root())[:200]
    refs = [" " + d["en"] for d in docs]
    preds = [" " + " ".join(d["en"].split()[: 1 + i % 7]) if i % 3 else " " + docs[(i + 1) % len(docs)]["en"]
             for i, d in enumerate(docs)]
    ours = translation_metrics(preds, refs, "en")
    items = list(zip(refs, preds))
    assert ours["bleu"] == pytest.approx(lm_metrics.bleu(items), abs=1e-9)
    assert ours["chrf"] == pytest.approx(lm_metrics.chrf(items), abs=1e-9)
    assert ours["ter"] == pytest.approx(lm_metrics.ter(items), abs=1e-9)
    assert 0 < ours["bleu"] < 100 and 0 < ours["chrf"] < 100
    assert ours["bleu_signature"].startswith("nrefs:1|case:mixed|eff:no|tok:13a|smooth:exp|version:2.6.0")
    assert ours["chrf_signature"].startswith("nrefs:1|case:mixed|eff:yes|nc:6|nw:0")
    perfect = translation_metrics(refs, refs, "en")
    assert perfect["bleu"] == pytest.approx(100.0) and perfect["chrf"] == pytest.approx(100.0) and perfect["ter"] == 0


def test_bad_translation_files(tmp_path):
    from eval_harness.data import TaskDataError
    from eval_harness.tasks import TASKS, build_examples

    d = tmp_path / "mt_koen" / "korean-english-jhe"
    d.mkdir(parents=True)
    (d / "jhe-koen-eval.ko").write_text("하나\n둘\n", encoding="utf-8")
    (d / "jhe-koen-eval.en").write_text("one\n", encoding="utf-8")
    with pytest.raises(TaskDataError, match=r"mt_koen_jhe_ko2en: .*jhe-koen-eval.ko has 2 lines but .*eval.en has 1"):
        build_examples(TASKS["mt_koen_jhe_ko2en"], tmp_path, num_fewshot=0)
    (d / "jhe-koen-eval.en").write_text("one\n\n", encoding="utf-8")
    with pytest.raises(TaskDataError, match=r"jhe-koen-eval.en: line 2 is empty"):
        build_examples(TASKS["mt_koen_jhe_ko2en"], tmp_path, num_fewshot=0)
    (d / "jhe-koen-eval.en").write_text("one\ntwo\n", encoding="utf-8")
    with pytest.raises(TaskDataError, match=r"jhe-koen-dev.ko: file not found"):
        build_examples(TASKS["mt_koen_jhe_ko2en"], tmp_path)  # 5 shots need the dev split


def test_translation_agrees_with_lm_eval(tmp_path):
    """Tiny random model, 3 docs of ko->en and en->ko (JHE), 2-shot from dev: identical prompts, generations and
    corpus BLEU / chrF / TER (lm-eval through its own wmt_common_yaml with this task's template)."""
    import torch

    lm_eval = pytest.importorskip("lm_eval")
    from lm_eval.tasks import TaskManager

    from eval_harness.evaluate import evaluate
    from eval_harness.tasks import TASKS
    from eval_harness.tiny import build_tiny_lm

    torch.set_num_threads(1)
    root = _root()
    texts = [d["ko"] + " " + d["en"] for d in TASKS["mt_koen_jhe_ko2en"].docs(root, "dev")]
    model_dir = build_tiny_lm(tmp_path / "model", texts, vocab_size=500, max_position_embeddings=512)
    tdir = Path(lm_eval.__file__).parent / "tasks" / "translation"
    ydir = tmp_path / "tasks"
    ydir.mkdir()
    files = {}
    for split, name in (("validation", "dev"), ("test", "eval")):
        p = tmp_path / "data" / f"{name}.jsonl"
        p.parent.mkdir(exist_ok=True)
        p.write_text("".join(json.dumps(d, ensure_ascii=False) + "\n"
                             for d in TASKS["mt_koen_jhe_ko2en"].docs(root, name)), encoding="utf-8")
        files[split] = str(p)
    for src, tgt, s_name, t_name in (("ko", "en", "Korean", "English"), ("en", "ko", "English", "Korean")):
        (ydir / f"jhe_{src}2{tgt}.yaml").write_text(json.dumps({
            "include": str(tdir / "wmt_common_yaml"), "task": f"mt_koen_jhe_{src}2{tgt}_local", "dataset_path": "json",
            "dataset_name": None, "training_split": None,
            "dataset_kwargs": {"data_files": files, "cache_dir": str(tmp_path / "hf")},
            "doc_to_text": f"{s_name} phrase: {{{{{src}}}}}\n{t_name} phrase:", "doc_to_target": f" {{{{{tgt}}}}}"}),
            encoding="utf-8")
    os.environ["HF_DATASETS_OFFLINE"] = "1"
    tasks = ["mt_koen_jhe_ko2en", "mt_koen_jhe_en2ko"]
    theirs = lm_eval.simple_evaluate(
        model="hf", model_args={"pretrained": str(model_dir), "dtype": "float32"}, device="cpu", batch_size=1,
        tasks=[f"{t}_local" for t in tasks], limit=3, num_fewshot=2, log_samples=True,
        task_manager=TaskManager(include_path=str(ydir)), bootstrap_iters=0)
    ours = evaluate(model_dir, tasks, data_root=root, limit=3, num_fewshot=2, batch_size=3)
    for t in tasks:
        ts = sorted(theirs["samples"][f"{t}_local"], key=lambda s: s["doc_id"])
        os_ = ours["samples"][t]
        assert [s["arguments"][0][0] for s in ts] == [o["prompt"] for o in os_]
        assert [s["resps"][0][0] for s in ts] == [o["generation"] for o in os_]
        assert [s["target"] for s in ts] == [o["gold"] for o in os_]
        res = theirs["results"][f"{t}_local"]
        if t.endswith("2en"):  # lm-eval's BLEU always uses 13a; ours too for English targets
            assert ours["results"][t]["bleu"] == pytest.approx(res["bleu,none"], abs=1e-9)
        assert ours["results"][t]["chrf"] == pytest.approx(res["chrf,none"], abs=1e-9)
        assert ours["results"][t]["ter"] == pytest.approx(res["ter,none"], abs=1e-9)


def test_generation_budget_longer_than_the_window_fails_before_scoring(tmp_path):
    from eval_harness.evaluate import evaluate
    from eval_harness.tiny import build_tiny_lm

    model_dir = build_tiny_lm(tmp_path / "model", ["가나다 abc"] * 20, vocab_size=300, max_position_embeddings=256)
    with pytest.raises(ValueError, match=r"mt_koen_jhe_ko2en: max_gen_toks 256 must be less than the model's "
                                         r"max_length 256"):
        evaluate(model_dir, ["mt_koen_jhe_ko2en"], data_root=_root(), limit=1, num_fewshot=0)
