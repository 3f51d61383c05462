"""Per-example scores and aggregates, computed as lm-eval 0.4.13 does (``api/task.py``, ``api/metrics.py``,
``api/group.py``, ``tasks/kobest/utils.py``).

What decides equality with lm-eval:

* ``acc``: ``np.argmax(lls) == gold`` (ties -> the lowest index); ``acc_norm``: ``np.argmax(lls / len(choice))`` with
  the length in characters of the choice *without* the target delimiter. Aggregate: ``sum(x) / len(x)``; stderr
  ``sample_stddev / sqrt(n)`` (n - 1 denominator).
* ``f1`` (KoBEST): per doc ``(gold, pred)``; aggregate ``sklearn.metrics.f1_score(golds, preds, average="macro")``
  over the evaluated docs; no stderr (lm-eval prints N/A; here ``None``).
* WikiText: per doc ``(loglikelihood, words)`` / ``(loglikelihood, bytes)`` counted on the *original* page;
  ``word_perplexity = exp(-sum(ll) / sum(words))``, ``byte_perplexity = exp(-sum(ll) / sum(bytes))``,
  ``bits_per_byte = -sum(ll) / sum(bytes) / ln 2`` (``weighted_mean``, Python sums in doc order); no stderr.
* Groups (``kobest``, ``click``, ``click_cul``, ``click_lang``; ``weight_by_size: true``): over the group's *leaf* tasks
  that report the metric, ``sum(metric * n) / sum(n)``; stderr ``pooled_sample_stderr`` when every leaf has one.
"""

from __future__ import annotations

import math

import numpy as np


def mc_scores(lls: list[float], choices: list[str] | tuple[str, ...], gold: int) -> dict:
    """pred, pred_norm, acc, acc_norm of one multiple-choice doc."""
    arr = np.array(lls)
    completion_len = np.array([float(len(c)) for c in choices])
    pred = int(np.argmax(arr))
    pred_norm = int(np.argmax(arr / completion_len))
    return {"pred": pred, "pred_norm": pred_norm, "acc": 1.0 if pred == gold else 0.0,
            "acc_norm": 1.0 if pred_norm == gold else 0.0}


def mean(arr: list[float]) -> float:
    return sum(arr) / len(arr)


def mean_stderr(arr: list[float]) -> float | None:
    if len(arr) < 2:
        return None
    mu = mean(arr)
    return math.sqrt(sum([(x - mu) ** 2 for x in arr]) / (len(arr) - 1)) / math.sqrt(len(arr))


def macro_f1(golds: list[int], preds: list[int]) -> float:
    from sklearn.metrics import f1_score

    return float(f1_score(golds, preds, average="macro"))


def mc_task_metrics(records: list[dict], metrics: tuple[str, ...]) -> dict:
    """Aggregate the per-doc records (``acc``, ``acc_norm``, ``gold``, ``prediction``) of one task."""
    out: dict = {}
    for m in metrics:
        if m in ("acc", "acc_norm"):
            vals = [r[m] for r in records]
            out[m] = mean(vals)
            out[f"{m}_stderr"] = mean_stderr(vals)
        elif m == "f1":
            out["f1"] = macro_f1([r["gold"] for r in records], [r["prediction"] for r in records])
            out["f1_stderr"] = None
        else:
            raise ValueError(f"unknown multiple-choice metric {m!r}")
    out["n"] = len(records)
    return out


def perplexity_metrics(lls: list[float], words: list[int], nbytes: list[int]) -> dict:
    """word_perplexity, byte_perplexity, bits_per_byte (lm-eval's ``weighted_mean`` aggregations)."""
    wm_words = sum(lls) / sum(words)
    wm_bytes = sum(lls) / sum(nbytes)
    return {"word_perplexity": math.exp(-wm_words), "byte_perplexity": math.exp(-wm_bytes),
            "bits_per_byte": -wm_bytes / math.log(2), "n": len(lls)}


def pooled_sample_stderr(stderrs: list[float], sizes: list[int]) -> float:
    pooled = sum([(size - 1) * stderr**2 * size for size, stderr in zip(sizes, stderrs)]) / (sum(sizes) - len(sizes))
    return float(np.sqrt(pooled / sum(sizes)))


def group_metrics(task_results: dict[str, dict], leaf_tasks: list[str], metrics: tuple[str, ...]) -> dict:
    """Size-weighted mean over the leaf tasks that report each metric, with the pooled stderr."""
    out: dict = {"n": sum(task_results[t]["n"] for t in leaf_tasks if t in task_results)}
    for m in metrics:
        have = [t for t in leaf_tasks if t in task_results and m in task_results[t]]
        if not have:
            continue
        values = [task_results[t][m] for t in have]
        sizes = [task_results[t]["n"] for t in have]
        out[m] = sum([v * s for v, s in zip(values, sizes)]) / sum(sizes)
        stderrs = [task_results[t].get(f"{m}_stderr") for t in have]
        out[f"{m}_stderr"] = pooled_sample_stderr(stderrs, sizes) if all(s is not None for s in stderrs) else None
    return out
