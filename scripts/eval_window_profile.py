"""Where one rolling window's time goes (the WikiText-2 row of docs/results.md): model body, LM head, log-softmax,
an advanced-index copy of the scored block and an argmax over the vocabulary, for one 512-token window at batch 1,
minimum of 5 repeats, on the model directory given (default: the benchmark's model, built by
``scripts/eval_harness_benchmark.py --model-out /tmp/bench_model``).

    .venv/bin/python scripts/eval_window_profile.py --model /tmp/bench_model --threads 1
"""

from __future__ import annotations

import argparse
import json
import time


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="/tmp/bench_model")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=5)
    a = ap.parse_args()
    import torch
    import torch.nn.functional as F
    from transformers import AutoModelForCausalLM

    torch.set_num_threads(a.threads)
    m = AutoModelForCausalLM.from_pretrained(a.model).eval()
    n = int(m.config.max_position_embeddings)
    ids = torch.randint(5, m.config.vocab_size, (1, n), generator=torch.Generator().manual_seed(0))
    best: dict[str, float] = {}
    with torch.inference_mode():
        m(ids, use_cache=False)  # warm-up
        for _ in range(a.repeats):
            t = [time.perf_counter()]
            h = m.model(ids, use_cache=False).last_hidden_state
            t.append(time.perf_counter())
            logits = m.lm_head(h)
            t.append(time.perf_counter())
            logp = F.log_softmax(logits, dim=-1)
            t.append(time.perf_counter())
            logits[torch.zeros(n, dtype=torch.long), torch.arange(n)]
            t.append(time.perf_counter())
            logp.argmax(dim=-1)
            t.append(time.perf_counter())
            for k, (x, y) in zip(("body", "lm_head", "log_softmax", "index_copy", "argmax"), zip(t, t[1:])):
                best[k] = min(best.get(k, float("inf")), y - x)
    print(json.dumps({"model": a.model, "threads": a.threads, "window_tokens": n, "vocab": m.config.vocab_size,
                      "ms_per_window": {k: round(v * 1000, 1) for k, v in best.items()}}))


if __name__ == "__main__":
    main()
