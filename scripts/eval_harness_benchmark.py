"""The evaluation harness (``eval_harness``) against lm-eval 0.4.13 itself: wall time at equal numbers (CPU).

Same model, same documents, same threads. For every task group (the full KoBEST suite: the test splits of
``kobest_boolq``, ``kobest_copa``, ``kobest_hellaswag``, ``kobest_sentineg``, ``kobest_wic``; WikiText-2: every
article of the mirror's test file) and every thread count, each system runs in a fresh subprocess of its own (so
neither warms the other's caches, allocator or page-mapped weights), and the per-example results of both are
compared:

* **harness**: ``LMScorer.from_pretrained(model, batch_size=--harness-batch-size)`` (timed as *load*), then
  ``eval_harness.evaluate(model, tasks, data_root=mirror, scorer=...)`` (timed as *eval*: reading the mirror files,
  building the prompts, scoring, metrics).
* **lm-eval**: ``lm_eval.models.huggingface.HFLM(pretrained=model, dtype="float32", device="cpu",
  batch_size=b)`` (timed as *load*; ``b`` = ``--lm-eval-batch-size``, lm-eval's default 1, and by default also 32,
  the harness's batch size), ``TaskManager(include_path=...)`` (timed apart as *task index*: lm-eval scans its
  thousands of task YAMLs), then ``lm_eval.simple_evaluate(model=lm, tasks=..., log_samples=True,
  task_manager=tm)`` with lm-eval's defaults otherwise (bootstrap_iters 100000: no task here has a bootstrapped
  metric, so it costs nothing) (timed as *eval*, less the reporting that ``simple_evaluate`` does after the
  evaluation: ``add_env_info`` (torch's ``collect_env``, which runs subprocesses), ``add_tokenizer_info``,
  ``get_git_commit_hash``: about a second, recorded as ``reporting_s``, and less the metric look-ups of the task
  building, ``metric_lookup_s``: KoBEST's f1 is marked ``hf_evaluate: true``, so lm-eval imports HF ``evaluate``
  and tries ``evaluate.load("f1")`` for each task, which fails offline after ~1.5 s each; ``simple_evaluate_s``
  keeps both). Leaving them out favours lm-eval: the speed-ups are conservative. The tasks are lm-eval's own YAMLs, ``include``-d by local YAMLs
  that only swap the dataset for JSONL files exported from the very documents the harness reads (``dataset_path:
  json`` + ``data_files``, as ``tests/test_eval_agreement.py`` does); the ``datasets`` cache of those files is built
  before any timing, so lm-eval's eval time does not include the JSON -> Arrow conversion of a first load.

Both workers: ``torch.set_num_threads(t)`` and ``OMP_NUM_THREADS`` / ``MKL_NUM_THREADS`` = t, ``RAYON_NUM_THREADS``
= t for the Rust tokenizer (and ``TOKENIZERS_PARALLELISM=false`` at t = 1), float32 on CPU, ``HF_*_OFFLINE``. Also
recorded per run: the time inside the model calls (``loglikelihood`` / ``loglikelihood_rolling``), the process's
CPU seconds during eval and its core share (CPU / wall: a share far below t means the machine was busy), peak RSS
(``VmHWM``) and the 1-minute load average before and after.

Equality (checked, not assumed): every task's aggregate metrics (acc, acc_norm, f1, word_perplexity,
byte_perplexity, bits_per_byte) within 1e-6 relative; per example, every choice's log-likelihood (and each
article's rolling log-likelihood) within 1e-5 absolute or 2 float32 ulps of the value (the tolerance of
``tests/test_eval_agreement.py``: batching moves float32 sums in their last bits), and the predictions (argmax,
lm-eval's f1 item), acc, acc_norm (where lm-eval reports it) and is_greedy exactly, as well as the prompt and
continuation strings.

The default model has the project's bilingual LM shape: ``models/bilingual_lm/modeling.build_model("10m")``
(transformers' ``HyperCLOVAXForCausalLM``: d 256, 8 layers, 8 / 4 heads, FFN 688, context 512, tied embeddings;
random weights, seed 0) with the project's *plain* byte-level BPE (``models/bilingual_lm/tokenizer.train_tokenizer(
morpheme_aware=False)``, params.yaml ``bilingual_lm.tokenizer``: vocab 16,384, min_frequency 2) trained here on
mirror Korean + English training text (``data/lm_sources``: korean_text, koconovel, NSMC reviews / Gutenberg,
addresses, tinyshakespeare; no evaluation text), written to a temporary folder. ``--model DIR`` takes any local
Hugging Face causal LM directory with its tokenizer instead. What was used (config, parameter count, vocabulary,
tokenizer sha256) is written into the JSON.

    .venv/bin/python scripts/eval_harness_benchmark.py --limit 20 --threads 1 --out /tmp/eval_bench_smoke.json
    .venv/bin/python scripts/eval_harness_benchmark.py --threads 1 --out /tmp/eval_bench_full.json
    .venv/bin/python scripts/eval_harness_benchmark.py                      # threads 1 2 -> docs/eval_harness_benchmark.json

Exit status 0 when every compared run's numbers are equal, 1 when some differ, 2 when a worker failed.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

KOBEST = ["kobest_boolq", "kobest_copa", "kobest_hellaswag", "kobest_sentineg", "kobest_wic"]
GROUPS = {"kobest": KOBEST, "wikitext": ["wikitext"]}
AGG_METRICS = ("acc", "acc_norm", "f1", "word_perplexity", "byte_perplexity", "bits_per_byte")
AGG_RTOL = 1e-6
LL_ATOL, LL_RTOL = 1e-5, 2e-7  # tests/test_eval_agreement.py's close()


# ----------------------------------------------------------------------------------------------------- helpers
def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def proc_status_kb(field: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return None


def sha256_file(path: Path) -> str | None:
    return hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else None


def write_jsonl(path: Path, docs: list[dict]) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        for d in docs:
            f.write(json.dumps(d, ensure_ascii=False) + "\n")
    return str(path)


def atomic_write_json(path: Path, obj) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(json.dumps(obj, indent=2, ensure_ascii=False) + "\n")
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def rel_equal(a: float, b: float, rtol: float = AGG_RTOL) -> bool:
    if a == b:
        return True
    if a is None or b is None or (isinstance(a, float) and math.isnan(a)) or (isinstance(b, float) and math.isnan(b)):
        return False
    return abs(a - b) <= rtol * max(abs(a), abs(b))


def ll_close(a: float, b: float) -> bool:
    """1e-5 absolute, or 2 float32 ulps of ``b`` (2e-7 relative is a little less than that at the bottom of a
    binade: 2 ulps of 146.7 are 2.08e-7 relative)."""
    import numpy as np

    return abs(a - b) <= max(LL_ATOL, LL_RTOL * abs(b), 2 * float(np.spacing(np.float32(abs(b)))))


def f32_ulps(a: float, b: float) -> float:
    """|a - b| in float32 ulps of b (the scores are float32 sums: 2e-7 relative is ~2 ulps, a bit less near the
    bottom of a binade, e.g. 2 ulps of 146.7 are 2.08e-7 relative)."""
    import numpy as np

    return abs(a - b) / float(np.spacing(np.float32(abs(b)))) if b else 0.0


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


# ------------------------------------------------------------------------------------------------------ workers
def _thread_setup(threads: int):
    import torch

    torch.set_num_threads(threads)
    return torch


class _Timed:
    """Wraps a bound method, adding its wall time to ``seconds``."""

    def __init__(self, fn):
        self.fn, self.seconds, self.calls = fn, 0.0, 0

    def __call__(self, *a, **kw):
        t = time.perf_counter()
        try:
            return self.fn(*a, **kw)
        finally:
            self.seconds += time.perf_counter() - t
            self.calls += 1


def worker_harness(spec: dict) -> dict:
    t_start = time.perf_counter()
    torch = _thread_setup(spec["threads"])
    from eval_harness.engine import LMScorer
    from eval_harness.evaluate import evaluate

    t_import = time.perf_counter()
    load1_before = os.getloadavg()[0]
    scorer = LMScorer.from_pretrained(spec["model"], batch_size=spec["batch_size"])
    t_load = time.perf_counter()
    ll, roll = _Timed(scorer.loglikelihood), _Timed(scorer.loglikelihood_rolling)
    scorer.loglikelihood, scorer.loglikelihood_rolling = ll, roll
    log(f"harness: model loaded in {t_load - t_import:.1f} s; evaluating {', '.join(spec['tasks'])}")
    cpu0 = time.process_time()
    out = evaluate(spec["model"], spec["tasks"], data_root=spec["data_root"], limit=spec["limit"],
                   batch_size=spec["batch_size"], scorer=scorer)
    t_eval = time.perf_counter()
    cpu_eval = time.process_time() - cpu0
    seen, n_params = set(), 0
    for p in scorer.model.parameters():
        if id(p) not in seen:
            seen.add(id(p))
            n_params += p.numel()
    metrics, samples = {}, {}
    for t in spec["tasks"]:
        metrics[t] = {k: v for k, v in out["results"][t].items() if k in AGG_METRICS or k == "n"}
        if t == "wikitext":
            samples[t] = [{"doc_id": r["doc_id"], "ll": r["loglikelihood"], "words": r["words"], "bytes": r["bytes"]}
                          for r in out["samples"][t]]
        else:
            samples[t] = [{"doc_id": r["doc_id"], "lls": r["loglikelihoods"], "greedy": r["is_greedy"],
                           "pred": r["prediction"], "acc": r["acc"], "acc_norm": r["acc_norm"],
                           "prompt_sha": hashlib.sha256(r["prompt"].encode()).hexdigest(),
                           "continuations": r["continuations"]}
                          for r in out["samples"][t]]
    eval_s = t_eval - t_load
    return {"system": "harness", "import_s": t_import - t_start, "load_s": t_load - t_import, "eval_s": eval_s,
            "score_s": ll.seconds + roll.seconds, "eval_cpu_s": cpu_eval, "core_share": cpu_eval / eval_s,
            "total_s": t_eval - t_start, "rss_peak_mb": (proc_status_kb("VmHWM") or 0) / 1024,
            "load1_before": load1_before, "load1_after": os.getloadavg()[0], "torch_threads": torch.get_num_threads(),
            "n_params": n_params, "max_length": scorer.max_length, "engine_stats": dict(scorer.stats),
            "harness_config": {k: v for k, v in out["config"].items() if k in ("max_length", "batch_size", "dtype",
                                                                                 "prompt_hash", "tokenizer_sha256")},
            "metrics": metrics, "samples": samples}


def worker_lm_eval(spec: dict) -> dict:
    t_start = time.perf_counter()
    os.environ["HF_DATASETS_OFFLINE"] = "1"
    torch = _thread_setup(spec["threads"])
    import lm_eval
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    t_import = time.perf_counter()
    load1_before = os.getloadavg()[0]
    lm = HFLM(pretrained=spec["model"], dtype="float32", device="cpu", batch_size=spec["batch_size"])
    t_load = time.perf_counter()
    tm = TaskManager(include_path=spec["yaml_dir"])
    t_index = time.perf_counter()
    ll, roll = _Timed(lm.loglikelihood), _Timed(lm.loglikelihood_rolling)
    lm.loglikelihood, lm.loglikelihood_rolling = ll, roll
    # simple_evaluate's reporting after the evaluation (torch's collect_env, which runs subprocesses; the git hash;
    # tokenizer info) is timed apart and left out of eval_s; its evaluator.evaluate call is timed as core_s
    import lm_eval.evaluator as E

    meta = {name: _Timed(getattr(E, name)) for name in ("add_env_info", "add_tokenizer_info", "get_git_commit_hash")}
    core = _Timed(E.evaluate)
    for name, fn in meta.items():
        setattr(E, name, fn)
    E.evaluate = core
    # KoBEST's f1 is marked ``hf_evaluate: true``: building each task calls get_metric("f1", True), which imports
    # HF ``evaluate`` and tries ``evaluate.load("f1")``; offline that fails after ~1.5 s a task (and lm-eval then
    # uses the task's own f1 aggregation). Timed apart and left out of eval_s too.
    import lm_eval.api.task as T

    lookup = _Timed(T.get_metric)
    T.get_metric = lookup
    log(f"lm-eval: model loaded in {t_load - t_import:.1f} s, task index in {t_index - t_load:.1f} s; "
        f"evaluating {', '.join(spec['lm_tasks'])}")
    cpu0 = time.process_time()
    kw = {} if spec["bootstrap_iters"] is None else {"bootstrap_iters": spec["bootstrap_iters"]}
    res = lm_eval.simple_evaluate(model=lm, tasks=spec["lm_tasks"], limit=spec["limit"], log_samples=True,
                                  task_manager=tm, **kw)
    t_eval = time.perf_counter()
    cpu_eval = time.process_time() - cpu0
    metrics, samples = {}, {}
    for t, lt in zip(spec["tasks"], spec["lm_tasks"]):
        r = res["results"][lt]
        m = {k.split(",")[0]: v for k, v in r.items() if k.endswith(",none") and k.split(",")[0] in AGG_METRICS}
        ss = sorted(res["samples"][lt], key=lambda s: s["doc_id"])
        m["n"] = len(ss)
        metrics[t] = m
        if t == "wikitext":
            samples[t] = [{"doc_id": s["doc_id"], "ll": float(s["word_perplexity"][0]),
                           "words": int(s["word_perplexity"][1]), "bytes": int(s["byte_perplexity"][1])} for s in ss]
        else:
            rows = []
            for s in ss:
                lls = [float(x[0]) for x in s["filtered_resps"]]
                # lm-eval's own per-doc values: its f1 item is (gold, pred), acc / acc_norm as it scored them
                rows.append({"doc_id": s["doc_id"], "lls": lls, "greedy": [bool(x[1]) for x in s["filtered_resps"]],
                             "pred": int(s["f1"][1]) if "f1" in s else int(np.argmax(lls)),
                             "acc": float(s["acc"]), "acc_norm": float(s["acc_norm"]) if "acc_norm" in s else None,
                             "prompt_sha": hashlib.sha256(s["arguments"][0][0].encode()).hexdigest(),
                             "continuations": [a[1] for a in s["arguments"]]})
            samples[t] = rows
    metadata_s = sum(m.seconds for m in meta.values())
    eval_s = t_eval - t_index - metadata_s - lookup.seconds
    return {"system": "lm-eval", "import_s": t_import - t_start, "load_s": t_load - t_import,
            "task_index_s": t_index - t_load, "eval_s": eval_s, "simple_evaluate_s": t_eval - t_index,
            "reporting_s": metadata_s, "metric_lookup_s": lookup.seconds, "core_evaluate_s": core.seconds,
            "score_s": ll.seconds + roll.seconds,
            "eval_cpu_s": cpu_eval, "core_share": cpu_eval / eval_s, "total_s": t_eval - t_start,
            "rss_peak_mb": (proc_status_kb("VmHWM") or 0) / 1024, "load1_before": load1_before,
            "load1_after": os.getloadavg()[0], "torch_threads": torch.get_num_threads(), "max_length": lm.max_length,
            "lm_eval_config": {k: res["config"].get(k) for k in ("batch_size", "batch_sizes", "bootstrap_iters",
                                                                 "limit", "fewshot_seed")},
            "n_configs": {lt: res.get("n-shot", {}).get(lt) for lt in spec["lm_tasks"]},
            "metrics": metrics, "samples": samples}


def worker_main(spec_path: str, out_path: str) -> int:
    spec = json.loads(Path(spec_path).read_text(encoding="utf-8"))
    fn = worker_harness if spec["system"] == "harness" else worker_lm_eval
    out = fn(spec)
    Path(out_path).write_text(json.dumps(out, ensure_ascii=False), encoding="utf-8")
    return 0


# ----------------------------------------------------------------------------------------------- model building
def training_texts(root: Path, chars_per_lang: int) -> tuple[list[str], dict]:
    """Korean and English training documents of the mirror (``data.lm_sources``, the LM corpus's readers; no
    evaluation text), drawn round-robin from the sources of each language until ``chars_per_lang`` characters."""
    from data import lm_sources as S

    def draw(sources):
        its = {name: iter(fn()) for name, fn in sources}
        texts, used, n = [], {name: 0 for name, _ in sources}, 0
        while its and n < chars_per_lang:
            for name in list(its):
                try:
                    d = next(its[name])
                except StopIteration:
                    del its[name]
                    continue
                if not d.text:
                    continue
                texts.append(d.text)
                used[name] += len(d.text)
                n += len(d.text)
                if n >= chars_per_lang:
                    break
        return texts, used

    ko, ko_used = draw([("korean_text", lambda: S.korean_text(root)), ("koconovel", lambda: S.koconovel(root)),
                        ("nsmc_raw", lambda: S.nsmc_raw(root))])
    en, en_used = draw([("gutenberg", lambda: S.gutenberg(root)), ("addresses", lambda: S.addresses(root)),
                        ("tinyshakespeare", lambda: S.tinyshakespeare(root))])
    return ko + en, {"ko_chars": ko_used, "en_chars": en_used, "documents": len(ko) + len(en)}


def build_default_model(out_dir: Path, root: Path, args) -> dict:
    """The 10m preset of the bilingual LM (random weights, seed) + the project's plain BPE trained on mirror text."""
    import yaml

    from models.bilingual_lm.modeling import build_model, count_parameters
    from models.bilingual_lm.tokenizer import train_tokenizer

    params = yaml.safe_load((REPO / "params.yaml").read_text(encoding="utf-8"))["bilingual_lm"]
    tcfg, mcfg = params["tokenizer"], params["model"]
    t0 = time.perf_counter()
    texts, drawn = training_texts(root, args.tokenizer_chars_per_lang)
    log(f"training the plain byte-level BPE (vocab {tcfg['vocab_size']}, min_frequency {tcfg['min_frequency']}) "
        f"on {sum(len(t) for t in texts):,} characters")
    tok = train_tokenizer(texts, tcfg["vocab_size"], morpheme_aware=False, min_frequency=tcfg["min_frequency"])
    tok.save_pretrained(out_dir)
    log(f"tokenizer: {tok.vocab_size} tokens ({time.perf_counter() - t0:.1f} s); building the "
        f"{mcfg['preset']} model (seed {args.seed})")
    model = build_model(mcfg["preset"], norm=mcfg["norm"], tokenizer=tok, seed=args.seed,
                        rope_theta=float(mcfg["rope_theta"]))
    model.save_pretrained(str(out_dir))
    return {"built_by": "scripts/eval_harness_benchmark.py build_default_model",
            "model": f"models/bilingual_lm/modeling.build_model({mcfg['preset']!r}, norm={mcfg['norm']!r}, "
                     f"seed={args.seed}, rope_theta={mcfg['rope_theta']}): HyperCLOVAXForCausalLM, random weights",
            "preset": mcfg["preset"], "norm": mcfg["norm"], "seed": args.seed,
            "parameters": count_parameters(model),
            "tokenizer": {"kind": "plain byte-level BPE (models/bilingual_lm/tokenizer.train_tokenizer, "
                                  "morpheme_aware=False)", "requested_vocab_size": tcfg["vocab_size"],
                          "vocab_size": tok.vocab_size, "min_frequency": tcfg["min_frequency"],
                          "training_text": {"chars_per_lang": args.tokenizer_chars_per_lang, **drawn,
                                            "readers": "data/lm_sources.py (korean_text, koconovel, nsmc_raw / "
                                                       "gutenberg, addresses, tinyshakespeare), round-robin"}},
            "build_s": round(time.perf_counter() - t0, 1)}


def describe_model(model_dir: Path) -> dict:
    cfg = json.loads((model_dir / "config.json").read_text(encoding="utf-8"))
    vocab = None
    if (model_dir / "tokenizer.json").is_file():
        from tokenizers import Tokenizer

        vocab = Tokenizer.from_file(str(model_dir / "tokenizer.json")).get_vocab_size(with_added_tokens=True)
    return {"config": cfg, "tokenizer_vocab_size": vocab, "tokenizer_sha256": sha256_file(model_dir / "tokenizer.json"),
            "weights_sha256": {p.name: sha256_file(p) for p in sorted(model_dir.glob("*.safetensors"))}}


# --------------------------------------------------------------------------------------------- lm-eval task files
def write_lm_eval_tasks(base: Path, root: Path, tasks: list[str]) -> tuple[Path, dict]:
    """Local task YAMLs that include lm-eval's own, reading JSONL exports of the harness's documents; the datasets
    cache of each is built here (before any timing)."""
    import datasets
    import lm_eval

    from eval_harness.tasks import TASKS

    lm_tasks_dir = Path(lm_eval.__file__).parent / "tasks"
    ydir, cache = base / "tasks", str(base / "hf_cache")
    ydir.mkdir(parents=True, exist_ok=True)
    names = {}
    for t in tasks:
        if t == "wikitext":
            files = {"test": write_jsonl(base / "data" / t / "test.jsonl", TASKS[t].load(root, "test"))}
            spec = {"include": str(lm_tasks_dir / "wikitext" / "wikitext.yaml"), "task": "wikitext_local",
                    "dataset_path": "json", "dataset_name": None, "training_split": None, "validation_split": None,
                    "dataset_kwargs": {"data_files": files, "cache_dir": cache}}
        else:
            files = {s: write_jsonl(base / "data" / t / f"{s}.jsonl", TASKS[t].load(root, s))
                     for s in ("train", "validation", "test")}
            spec = {"include": str(lm_tasks_dir / TASKS[t].lm_eval_yaml), "task": f"{t}_local", "dataset_path": "json",
                    "dataset_name": None, "dataset_kwargs": {"data_files": files, "cache_dir": cache}}
        (ydir / f"{t}_local.yaml").write_text(json.dumps(spec), encoding="utf-8")
        names[t] = spec["task"]
        os.environ["HF_DATASETS_OFFLINE"] = "1"
        datasets.load_dataset("json", data_files=files, cache_dir=cache)  # what lm-eval's download() calls
    return ydir, names


# ---------------------------------------------------------------------------------------------------- comparing
def compare(h: dict, l: dict, tasks: list[str]) -> dict:
    """Aggregate metrics (1e-6 relative) and per-example log-likelihoods / predictions of two worker results."""
    out = {"tasks": {}}
    agg_ok = ex_ok = True
    for t in tasks:
        hm, lm = h["metrics"][t], l["metrics"][t]
        common = [m for m in AGG_METRICS if m in hm and m in lm]
        missing = [m for m in AGG_METRICS if (m in hm) != (m in lm)]
        diffs = {m: {"harness": hm[m], "lm_eval": lm[m], "rel_diff": (abs(hm[m] - lm[m]) / max(abs(hm[m]), abs(lm[m]))
                                                                      if hm[m] != lm[m] else 0.0)} for m in common}
        t_agg = bool(common) and not missing and all(rel_equal(hm[m], lm[m]) for m in common) and hm["n"] == lm["n"]
        hs, ls = h["samples"][t], l["samples"][t]
        info = {"n_harness": len(hs), "n_lm_eval": len(ls), "metrics": diffs, "metrics_missing_in_one": missing,
                "aggregates_equal": t_agg}
        bad = []
        max_abs = max_rel = max_ulp = 0.0
        if len(hs) != len(ls):
            bad.append("different number of examples")
        for a, b in zip(hs, ls):
            if a["doc_id"] != b["doc_id"]:
                bad.append(f"doc_id {a['doc_id']} != {b['doc_id']}")
                break
            pairs = [(a["ll"], b["ll"])] if t == "wikitext" else list(zip(a["lls"], b["lls"]))
            if t != "wikitext" and len(a["lls"]) != len(b["lls"]):
                bad.append(f"doc {a['doc_id']}: {len(a['lls'])} vs {len(b['lls'])} choices")
            for x, y in pairs:
                d = abs(x - y)
                max_abs, max_rel = max(max_abs, d), max(max_rel, d / abs(y) if y else 0.0)
                max_ulp = max(max_ulp, f32_ulps(x, y))
                if not ll_close(x, y):
                    bad.append(f"doc {a['doc_id']}: ll {x!r} vs {y!r} ({d / abs(y):.3g} relative, "
                               f"{f32_ulps(x, y):.2f} float32 ulps)")
            if t == "wikitext":
                if (a["words"], a["bytes"]) != (b["words"], b["bytes"]):
                    bad.append(f"doc {a['doc_id']}: words/bytes {a['words'], a['bytes']} vs {b['words'], b['bytes']}")
            else:
                if a["prompt_sha"] != b["prompt_sha"] or a["continuations"] != b["continuations"]:
                    bad.append(f"doc {a['doc_id']}: different prompt or continuations")
                for k in ("greedy", "pred", "acc"):
                    if a[k] != b[k]:
                        bad.append(f"doc {a['doc_id']}: {k} {a[k]} vs {b[k]}")
                if b["acc_norm"] is not None and a["acc_norm"] != b["acc_norm"]:
                    bad.append(f"doc {a['doc_id']}: acc_norm {a['acc_norm']} vs {b['acc_norm']}")
        info.update(per_example_equal=not bad, max_abs_ll_diff=max_abs, max_rel_ll_diff=max_rel,
                    max_f32_ulp_diff=max_ulp, n_lls=sum(1 if t == "wikitext" else len(a["lls"]) for a in hs),
                    mismatches=len(bad), first_mismatches=bad[:10])
        out["tasks"][t] = info
        agg_ok &= t_agg
        ex_ok &= not bad
    out["aggregates_equal"], out["per_example_equal"] = agg_ok, ex_ok
    out["max_abs_ll_diff"] = max(i["max_abs_ll_diff"] for i in out["tasks"].values())
    out["max_f32_ulp_diff"] = max(i["max_f32_ulp_diff"] for i in out["tasks"].values())
    out["mismatches"] = sum(i["mismatches"] for i in out["tasks"].values())
    out["n_lls"] = sum(i["n_lls"] for i in out["tasks"].values())
    return out


# --------------------------------------------------------------------------------------------------------- main
def run_worker(spec: dict, workdir: Path, tag: str, timeout: float | None) -> dict:
    spec_path, out_path = workdir / f"{tag}.spec.json", workdir / f"{tag}.result.json"
    spec_path.write_text(json.dumps(spec), encoding="utf-8")
    t = str(spec["threads"])
    env = dict(os.environ, OMP_NUM_THREADS=t, MKL_NUM_THREADS=t, OPENBLAS_NUM_THREADS=t, RAYON_NUM_THREADS=t,
               TOKENIZERS_PARALLELISM="false" if spec["threads"] == 1 else "true", HF_HUB_OFFLINE="1",
               HF_DATASETS_OFFLINE="1", TRANSFORMERS_OFFLINE="1", PYTHONPATH=str(REPO))
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--worker", str(spec_path), str(out_path)],
                          env=env, cwd=str(REPO), timeout=timeout)
    wall = time.perf_counter() - t0
    if proc.returncode != 0 or not out_path.is_file():
        raise RuntimeError(f"worker {tag} failed with exit status {proc.returncode}")
    res = json.loads(out_path.read_text(encoding="utf-8"))
    res["process_wall_s"] = wall
    return res


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", help="a local Hugging Face causal LM directory with its tokenizer (default: build the "
                                    "bilingual LM's 10m preset with random weights and the plain BPE)")
    ap.add_argument("--model-out", help="keep the built default model in this folder (default: a temporary one)")
    ap.add_argument("--tasks", nargs="+", default=["kobest", "wikitext"],
                    help="task groups (kobest, wikitext) or single KoBEST task names; each is timed on its own")
    ap.add_argument("--threads", nargs="+", type=int, default=[1, 2])
    ap.add_argument("--limit", type=int, default=None, help="first N eval docs per task (smoke runs)")
    ap.add_argument("--harness-batch-size", nargs="+", type=int, default=[32],
                    help="the harness's batch size(s) (rows per forward); one row per value")
    ap.add_argument("--lm-eval-batch-size", nargs="+", type=int, default=[1, 32],
                    help="lm-eval's batch size(s); one row per value (lm-eval's default is 1)")
    ap.add_argument("--lm-eval-bootstrap-iters", type=int, default=None,
                    help="simple_evaluate's bootstrap_iters (default: lm-eval's own default, 100000)")
    ap.add_argument("--data-root", default=os.environ.get("DATA_MIRROR") or str(REPO / "data" / "raw"),
                    help="the mirror root (kobest/, english_corpus/, korean_corpus/ ...); default $DATA_MIRROR")
    ap.add_argument("--seed", type=int, default=0, help="the default model's initialisation seed")
    ap.add_argument("--tokenizer-chars-per-lang", type=int, default=2_000_000,
                    help="training characters per language for the default model's tokenizer")
    ap.add_argument("--job-timeout", type=float, default=None, help="seconds per worker process")
    ap.add_argument("--out", default=str(REPO / "docs" / "eval_harness_benchmark.json"))
    ap.add_argument("--worker", nargs=2, metavar=("SPEC", "OUT"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        return worker_main(*args.worker)

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    root = Path(args.data_root).resolve()
    groups = {}
    for name in args.tasks:
        if name in GROUPS:
            groups[name] = GROUPS[name]
        elif name in KOBEST:
            groups[name] = [name]
        else:
            ap.error(f"--tasks: unknown {name!r} (choose from {', '.join([*GROUPS, *KOBEST])})")
    all_tasks = [t for ts in groups.values() for t in ts]
    started = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    t_all = time.perf_counter()
    base = Path(tempfile.mkdtemp(prefix="eval_bench_"))
    try:
        # ---- the model
        if args.model:
            model_dir = Path(args.model).resolve()
            built = None
        else:
            model_dir = Path(args.model_out).resolve() if args.model_out else base / "model"
            model_dir.mkdir(parents=True, exist_ok=True)
            log(f"building the default model in {model_dir}")
            built = build_default_model(model_dir, root, args)
        model_info = {"path": str(model_dir), "built": built, **describe_model(model_dir)}

        # ---- lm-eval's task files (JSONL exports of the same documents) and their datasets cache
        log(f"exporting {len(all_tasks)} tasks' documents for lm-eval and building the datasets cache")
        ydir, lm_names = write_lm_eval_tasks(base, root, all_tasks)

        # ---- the runs
        import lm_eval  # noqa: F401  (versions only)
        import torch
        import transformers
        from importlib.metadata import version

        jobs = []
        for g, ts in groups.items():
            for th in args.threads:
                for b in args.harness_batch_size:
                    jobs.append({"system": "harness", "group": g, "threads": th, "batch_size": b, "tasks": ts})
                for b in args.lm_eval_batch_size:
                    jobs.append({"system": "lm-eval", "group": g, "threads": th, "batch_size": b, "tasks": ts,
                                 "lm_tasks": [lm_names[t] for t in ts]})
        results = []
        for i, job in enumerate(jobs, 1):
            spec = {**job, "model": str(model_dir), "data_root": str(root), "limit": args.limit,
                    "yaml_dir": str(ydir), "bootstrap_iters": args.lm_eval_bootstrap_iters}
            tag = f"{i:02d}_{job['system']}_{job['group']}_t{job['threads']}_b{job['batch_size']}"
            log(f"[{i}/{len(jobs)}] {job['system']} {job['group']} threads {job['threads']} batch "
                f"{job['batch_size']} (load average {os.getloadavg()[0]:.2f})")
            res = run_worker(spec, base, tag, args.job_timeout)
            log(f"[{i}/{len(jobs)}] {job['system']} {job['group']}: eval {res['eval_s']:.1f} s (scoring "
                f"{res['score_s']:.1f} s, core share {res['core_share']:.2f}), load {res['load_s']:.1f} s")
            results.append({**job, **res})

        # ---- compare and tabulate
        rows = []
        for g in groups:
            for th in args.threads:
                for b, hb in [(b, hb) for b in args.lm_eval_batch_size for hb in args.harness_batch_size]:
                    h = next(r for r in results if r["system"] == "harness" and r["group"] == g
                             and r["threads"] == th and r["batch_size"] == hb)
                    lr = next(r for r in results if r["system"] == "lm-eval" and r["group"] == g
                              and r["threads"] == th and r["batch_size"] == b)
                    cmp_ = compare(h, lr, groups[g])
                    rows.append({
                        "group": g, "tasks": groups[g], "threads": th, "lm_eval_batch_size": b,
                        "harness_batch_size": h["batch_size"], "lm_eval_eval_s": lr["eval_s"],
                        "harness_eval_s": h["eval_s"], "speedup": lr["eval_s"] / h["eval_s"],
                        "lm_eval_score_s": lr["score_s"], "harness_score_s": h["score_s"],
                        "lm_eval_load_s": lr["load_s"], "harness_load_s": h["load_s"],
                        "lm_eval_task_index_s": lr["task_index_s"], "lm_eval_reporting_s": lr["reporting_s"],
                        "lm_eval_metric_lookup_s": lr["metric_lookup_s"],
                        "lm_eval_simple_evaluate_s": lr["simple_evaluate_s"],
                        "lm_eval_process_s": lr["process_wall_s"], "harness_process_s": h["process_wall_s"],
                        "end_to_end_speedup": lr["process_wall_s"] / h["process_wall_s"],
                        "numbers_equal": cmp_["aggregates_equal"], "per_example_equal": cmp_["per_example_equal"],
                        "max_abs_ll_diff": cmp_["max_abs_ll_diff"], "max_f32_ulp_diff": cmp_["max_f32_ulp_diff"],
                        "mismatches": cmp_["mismatches"], "n_lls": cmp_["n_lls"], "comparison": cmp_})
        for r in results:  # the JSON keeps metrics and timings; the per-example lists only live in the comparison
            r.pop("samples", None)

        n_params = next((r["n_params"] for r in results if r["system"] == "harness"), None)
        model_info["parameters_loaded"] = n_params
        mname = (f"bilingual_lm {built['preset']} (random weights, seed {built['seed']})" if built else str(model_dir))
        title = (f"eval_harness vs lm-eval {version('lm_eval')}: wall time of the evaluation (model load apart), "
                 f"model {mname}: {n_params:,} parameters, vocab {model_info['tokenizer_vocab_size']}; "
                 f"float32 CPU, limit {args.limit}")
        head = (f"{'group':<16} {'thr':>3} {'lm-eval bs':>10} {'harness bs':>10} {'lm-eval s':>10} {'harness s':>10} "
                f"{'speedup':>8} {'numbers equal':>13} {'per-example':>16} {'max |dll|':>9} {'ulps':>5}")
        lines = [title, head, "-" * len(head)]
        for r in rows:
            ex = "yes" if r["per_example_equal"] else f"NO {r['mismatches']}/{r['n_lls']}"
            lines.append(f"{r['group']:<16} {r['threads']:>3} {r['lm_eval_batch_size']:>10} {r['harness_batch_size']:>10} "
                         f"{r['lm_eval_eval_s']:>10.1f} {r['harness_eval_s']:>10.1f} {r['speedup']:>7.2f}x "
                         f"{'yes' if r['numbers_equal'] else 'NO':>13} "
                         f"{ex:>16} "
                         f"{r['max_abs_ll_diff']:>9.1e} {r['max_f32_ulp_diff']:>5.1f}")
        target = all(r["speedup"] >= 2.0 and r["numbers_equal"] for r in rows)
        loads = {s: ", ".join(f"{r['load_s']:.1f}" for r in results if r["system"] == s) for s in ("harness", "lm-eval")}
        target_by_group = {g: all(r["speedup"] >= 2.0 and r["numbers_equal"] for r in rows if r["group"] == g)
                           for g in groups}
        lines.append(f"target (>= 2x at equal numbers): {'met' if target else 'NOT met'} ("
                     + ", ".join(f"{g} {'met' if ok else 'not met'}" for g, ok in target_by_group.items())
                     + f"); model load s: harness {loads['harness']}, lm-eval {loads['lm-eval']}")
        table = "\n".join(lines)
        print(table, flush=True)

        try:
            commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True).stdout.strip()
            dirty = bool(subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO,
                                        capture_output=True, text=True).stdout.strip())
        except OSError:
            commit, dirty = None, None
        report = {
            "what": "eval_harness.evaluate vs lm_eval.simple_evaluate (0.4.13, hf model) on the same model, documents "
                    "and threads; each run a fresh subprocess",
            "command": " ".join([Path(sys.executable).name, *sys.argv]), "started": started,
            "total_s": round(time.perf_counter() - t_all, 1),
            "settings": {"tasks": groups, "threads": args.threads, "limit": args.limit,
                         "harness_batch_size": args.harness_batch_size, "lm_eval_batch_sizes": args.lm_eval_batch_size,
                         "lm_eval_bootstrap_iters": args.lm_eval_bootstrap_iters or "lm-eval default (100000)",
                         "dtype": "float32", "device": "cpu", "data_root": str(root),
                         "tolerances": {"aggregate_rel": AGG_RTOL, "ll_abs": LL_ATOL, "ll_rel": LL_RTOL},
                         "timed": {"eval_s": "harness: evaluate(..., scorer=...) after the model is loaded; lm-eval: "
                                             "simple_evaluate(model=HFLM, task_manager=...) after the model is loaded "
                                             "and the TaskManager built, less its reporting_s (add_env_info, "
                                             "add_tokenizer_info, get_git_commit_hash after the evaluation) and "
                                             "metric_lookup_s (get_metric while building the tasks: the failed "
                                             "offline evaluate.load('f1') of KoBEST); simple_evaluate_s has both",
                                   "score_s": "inside loglikelihood / loglikelihood_rolling",
                                   "process_s": "the whole worker process (interpreter start, imports, load, index, "
                                                "eval)"}},
            "model": model_info,
            "machine": {"cpu": cpu_model(), "cores": os.cpu_count(), "python": platform.python_version(),
                        "platform": platform.platform(), "torch": torch.__version__,
                        "transformers": transformers.__version__, "lm_eval": version("lm_eval"),
                        "tokenizers": version("tokenizers"), "datasets": version("datasets"),
                        "torch_config_threads": torch.__config__.parallel_info().splitlines()[:6],
                        "load_average_end": os.getloadavg(), "git_commit": commit, "git_dirty": dirty},
            "rows": rows, "runs": results, "target_2x_met": target, "target_2x_met_by_group": target_by_group,
            "table": table,
        }
        atomic_write_json(Path(args.out), report)
        log(f"wrote {args.out}")
        return 0 if all(r["numbers_equal"] and r["per_example_equal"] for r in rows) else 1
    except (RuntimeError, subprocess.TimeoutExpired) as err:
        log(f"failed: {err}")
        return 2
    finally:
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
