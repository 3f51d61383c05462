"""CLI: ``python -m eval_harness --model PATH --tasks kobest_boolq,wikitext --data-root DIR --out DIR``."""

from __future__ import annotations

import argparse
import sys

from eval_harness.engine import ModelLoadError
from eval_harness.evaluate import evaluate, results_table
from eval_harness.tasks import GROUPS, TASKS, UnknownTaskError


def parse_gen_kwargs(text: str | None) -> dict | None:
    """``"max_gen_toks=256,do_sample=false"`` -> ``{"max_gen_toks": 256, "do_sample": False}`` (lm-eval's
    ``simple_parse_args_string``: booleans, ints and floats converted, everything else a string)."""
    if not text:
        return None
    out = {}
    for item in text.split(","):
        if "=" not in item:
            raise ValueError(f"--gen-kwargs: {item!r} is not key=value")
        k, v = (x.strip() for x in item.split("=", 1))
        if v.lower() in ("true", "false"):
            out[k] = v.lower() == "true"
        else:
            for conv in (int, float):
                try:
                    out[k] = conv(v)
                    break
                except ValueError:
                    continue
            else:
                out[k] = v
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m eval_harness", description=__doc__)
    p.add_argument("--model", required=True, help="(path) local Hugging Face causal LM directory with its tokenizer")
    p.add_argument("--tasks", required=True,
                   help=f"(comma list) tasks or groups; tasks: {', '.join(TASKS)}; groups: {', '.join(GROUPS)}")
    p.add_argument("--data-root", default="data/raw", help="(path) mirror root holding kobest/, click/, english_corpus/")
    p.add_argument("--limit", type=int, default=None, help="(int) first N docs of each task")
    p.add_argument("--num-fewshot", type=int, default=None, help="(int) few-shot count; default: lm-eval's per task")
    p.add_argument("--fewshot-seed", type=int, default=1234, help="(int) seed of the few-shot sampler")
    p.add_argument("--batch-size", type=int, default=32, help="(int) forward rows per batch")
    p.add_argument("--dtype", default="float32", help="(str) float32 | bfloat16 | float16 | float64")
    p.add_argument("--device", default="cpu", help="(str) cpu | cuda | cuda:N")
    p.add_argument("--max-length", type=int, default=None, help="(int) override the model's context length")
    p.add_argument("--gen-kwargs", default=None,
                   help="(k=v,...) merged into every generation task's settings, as lm-eval's --gen_kwargs "
                        "(e.g. max_gen_toks=256)")
    p.add_argument("--seed", type=int, default=1234, help="(int) torch seed of sampled generation (humaneval_64)")
    p.add_argument("--out", default=None, help="(path) output directory for samples_*.jsonl, results.json/.md (replaced as a whole)")
    a = p.parse_args(argv)
    try:
        out = evaluate(a.model, [t for t in a.tasks.split(",") if t], data_root=a.data_root, limit=a.limit,
                       num_fewshot=a.num_fewshot, fewshot_seed=a.fewshot_seed, batch_size=a.batch_size,
                       dtype=a.dtype, device=a.device, max_length=a.max_length, out_dir=a.out,
                       gen_kwargs=parse_gen_kwargs(a.gen_kwargs), seed=a.seed)
    except (UnknownTaskError, ModelLoadError, ValueError) as err:  # TaskDataError is a ValueError
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(results_table(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
