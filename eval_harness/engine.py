"""The scoring engine: batched log-likelihood of (context, continuation) pairs and rolling log-likelihood.

It scores any Hugging Face causal LM (a local directory through ``AutoModelForCausalLM``/``AutoTokenizer``; the
dtype and the device are parameters) and reproduces lm-eval 0.4.13's ``HFLM`` (``lm_eval/models/huggingface.py``,
``lm_eval/api/model.py``). What decides equality with lm-eval:

* **Encoding** (``TemplateLM.loglikelihood`` / ``_encode_pair``): the context's trailing whitespace
  (``len(ctx) - len(ctx.rstrip())`` characters, ``\\n`` included) is moved to the front of the continuation; then
  ``whole = enc(ctx + cont)``, ``ctx_enc = enc(ctx)``, ``cont_enc = whole[len(ctx_enc):]``; the continuation is
  never encoded on its own. An empty context becomes ``[prefix_token_id]`` (unless the continuation already starts
  with it).
* **BOS** (``tok_encode``): ``tokenizer.encode(s)`` with the tokenizer's own default for special tokens (so BOS is
  there iff the tokenizer's post-processor adds it), except that a string starting with ``decode(prefix_token_id)``
  is encoded with ``add_special_tokens=False``. ``prefix_token_id`` = BOS, else EOS.
* **Truncation**: the model input is ``(ctx_enc + cont_enc)[-(max_length + 1):][:-1]`` (left truncation);
  ``max_length`` = the config's ``n_positions`` / ``max_position_embeddings`` / ``n_ctx`` (``text_config`` first),
  else the tokenizer's ``model_max_length`` unless it is the "infinite" sentinel, else 2048.
* **Scores**: ``log_softmax`` over the full output width in the logits' dtype (``softmax_dtype`` as lm-eval's);
  the continuation's token log-probs summed with a torch ``sum`` in that dtype, then ``float``; ``is_greedy`` = every
  continuation token is the argmax.
* **Rolling** (``loglikelihood_rolling``): ``get_rolling_token_windows(enc(text), prefix_token_id, max_length,
  context_len=1)`` + ``make_disjoint_window``, each window scored as a (context, continuation) request, the window
  sums added as Python floats in window order. (If the tokenizer adds BOS, the first window scores BOS after the
  BOS prefix, exactly as lm-eval does.)

* **Generation** (``generate_until``): requests grouped by their generation settings and sorted by
  ``(-len(tok_encode(context)), context)``; contexts encoded as one left-padded batch (``add_special_tokens=False``
  when the first string starts with the BOS string, the tokenizer default otherwise) and left-truncated to
  ``max_length - max_gen_toks`` tokens (``max_gen_toks`` 256 unless the task sets it); greedy ``model.generate`` with
  ``max_length = padded context width + max_gen_toks`` and the pad token lm-eval configures (pad, else unk, else EOS);
  the EOS string joins the stop sequences; the new tokens are decoded with ``skip_special_tokens=True`` and cut at
  each stop sequence in turn (``text.split(stop)[0]``). A row stops as soon as its decoded text holds a stop sequence
  (lm-eval waits for every row of the batch; what follows the first stop is cut off in both, so the strings agree).

Where it is faster than ``HFLM`` (numbers agree to ~1e-6 in float32; order and batching do not change them beyond
that): requests are encoded with batched tokenizer calls and each distinct context is encoded once; requests are
sorted longest first and batched with right padding; a request whose model input is a prefix of another request's
input with the same context (identical inputs, as lm-eval's ``group_by="contexts"``, and more generally shorter
choices of the same question) takes its scores from that one forward pass; the choices of one question run their
shared context **once** (``cache_prefixes``: the context up to its last token is one row of a right-padded batch,
its key/value cache is copied to every choice, and each choice runs only its tail, the last context token and its
continuation, with an attention mask over the real prefix positions and position ids continuing the prefix's; a
choice whose left-truncated input no longer shares the prefix takes the plain path); and the LM head is applied only
at the positions that are scored (``logits_to_keep``, where the model supports it), so the vocabulary-wide
log-softmax runs on scored rows only. A batch holds at most ``max_batch_logits`` full-vocabulary rows (a rolling
window scores every position: two 512-token windows of a 16k vocabulary, not 32), long spans are read through
views of the logits (no copy), and ``is_greedy`` uses a max reduction with a tie check instead of an argmax over
the vocabulary at every position. What stays is the model's own forward and one log-softmax per scored position,
which lm-eval computes too: WikiText-2 (every position scored, nothing shared) is therefore only a little faster.
"""

from __future__ import annotations

import inspect
import json
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from transformers import StoppingCriteria

TOKENIZER_INFINITY = 1000000000000000019884624838656
DEFAULT_MAX_LENGTH = 2048
_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16, "float64": torch.float64}


class ModelLoadError(ValueError):
    """The model directory cannot be used (no tokenizer, no config ...); raised before any weights are read."""


def resolve_max_length(config, tokenizer, default: int = DEFAULT_MAX_LENGTH) -> int:
    """lm-eval's ``resolve_max_length``: config length attributes (``text_config`` first), tokenizer, default."""
    cfg = getattr(config, "text_config", None) or config
    for attr in ("n_positions", "max_position_embeddings", "n_ctx"):
        value = getattr(cfg, attr, None)
        if value is not None:
            return int(value)
    mml = getattr(tokenizer, "model_max_length", None)
    if mml is not None and mml != TOKENIZER_INFINITY:
        return int(mml)
    return default


def rolling_windows(tokens: list[int], prefix_token: int, max_seq_len: int,
                    context_len: int = 1) -> list[tuple[list[int], list[int]]]:
    """lm-eval's ``get_rolling_token_windows`` followed by ``make_disjoint_window``, as (context, continuation)."""
    assert 1 <= context_len <= max_seq_len
    out: list[tuple[list[int], list[int]]] = []
    if not tokens:
        return out
    pred_len = max_seq_len - context_len + 1
    first = min(max_seq_len, len(tokens))
    windows = [([prefix_token] + tokens[: first - 1], tokens[:first])]
    predicted = first
    while predicted < len(tokens):
        wpl = min(len(tokens) - predicted, pred_len)
        end = predicted + wpl
        windows.append((tokens[end - max_seq_len - 1: end - 1], tokens[end - wpl: end]))
        predicted += wpl
    for a, b in windows:
        out.append((a[: len(a) - (len(b) - 1)], b))
    return out


@dataclass
class _Req:
    idx: int
    inp: list[int]  # the model input (truncated, last token dropped)
    cont: list[int]


class LMScorer:
    """Batched log-likelihood scoring of a causal LM (see the module docstring for what equals lm-eval).

    Args:
        model: a causal LM whose forward returns ``.logits``; put in eval mode here.
        tokenizer: its (fast) tokenizer.
        batch_size: forward rows per batch (after sharing); ``max_batch_tokens`` caps rows x padded length too, and
            ``max_batch_logits`` the scored positions x vocabulary of a batch (64 MB of float32 logits by default).
        max_length: overrides the length resolved from the config/tokenizer (lm-eval's ``max_length`` model arg).
        softmax_dtype: dtype of the log-softmax (``None``: the logits' dtype, lm-eval's default).
    """

    def __init__(self, model, tokenizer, *, batch_size: int = 32, max_batch_tokens: int | None = 32768,
                 max_batch_logits: int | None = 2 ** 24,
                 max_length: int | None = None, softmax_dtype: torch.dtype | None = None,
                 share_prefixes: bool = True, cache_prefixes: bool = True, seed: int = 1234,
                 progress: bool = True) -> None:
        self.model = model.eval()
        # progress bars on stderr: rows scored / generated per call
        self.progress = progress
        self.tokenizer = tokenizer
        self.batch_size = max(1, int(batch_size))
        self.max_batch_tokens = max_batch_tokens
        self.max_length = int(max_length) if max_length else resolve_max_length(model.config, tokenizer)
        self.softmax_dtype = softmax_dtype
        self.share_prefixes = share_prefixes
        self.max_batch_logits = max_batch_logits
        self._vocab = int(getattr(getattr(model, "config", None), "vocab_size", 0) or len(tokenizer))
        self.cache_prefixes = cache_prefixes
        self.seed = int(seed)  # torch seed of sampled generation (lm-eval's torch_random_seed)
        self.device = next(model.parameters()).device
        self.stats = {"requests": 0, "forward_rows": 0, "forward_calls": 0}  # for tests and benchmarks
        try:
            self._keep_arg = "logits_to_keep" in inspect.signature(model.forward).parameters
        except (TypeError, ValueError):
            self._keep_arg = False
        try:
            self._cache_arg = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
        except (TypeError, ValueError):
            self._cache_arg = "past_key_values"
        bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
        self.prefix_token_id = bos if bos is not None else eos
        self._prefix_str = tokenizer.decode(self.prefix_token_id) if self.prefix_token_id is not None else None

    # ----------------------------------------------------------------------------------------------------- loading
    @classmethod
    def from_pretrained(cls, path: str | Path, *, dtype: str = "float32", device: str = "cpu",
                        **kwargs) -> "LMScorer":
        """Load ``AutoTokenizer`` + ``AutoModelForCausalLM`` from a local directory (tokenizer checked first)."""
        from transformers import AutoModelForCausalLM, AutoTokenizer

        path = Path(path)
        check_model_dir(path)
        if dtype not in _DTYPES:
            raise ModelLoadError(f"{path}: unknown dtype {dtype!r} (choose from {', '.join(_DTYPES)})")
        tokenizer = AutoTokenizer.from_pretrained(str(path), use_fast=True)
        model = AutoModelForCausalLM.from_pretrained(str(path), dtype=_DTYPES[dtype]).to(device)
        return cls(model, tokenizer, **kwargs)

    # ---------------------------------------------------------------------------------------------------- encoding
    def tok_encode(self, strings: Sequence[str], add_special_tokens: bool | None = None) -> list[list[int]]:
        """lm-eval's ``tok_encode`` for many strings at once (batched tokenizer calls, identical ids)."""
        out: list[list[int] | None] = [None] * len(strings)
        groups: dict[bool | None, list[int]] = {}
        for i, s in enumerate(strings):
            flag = add_special_tokens
            if flag is None and self._prefix_str is not None and s.startswith(self._prefix_str):
                flag = False
            groups.setdefault(flag, []).append(i)
        for flag, idxs in groups.items():
            kw = {} if flag is None else {"add_special_tokens": flag}
            enc = self.tokenizer([strings[i] for i in idxs], **kw)["input_ids"]
            for i, e in zip(idxs, enc):
                out[i] = list(e)
        return out  # type: ignore[return-value]

    def encode_pairs(self, pairs: Sequence[tuple[str, str]]) -> list[tuple[list[int], list[int]]]:
        """``(context_enc, continuation_enc)`` per pair, as ``TemplateLM.loglikelihood`` + ``_encode_pair``."""
        moved = []
        for ctx, cont in pairs:
            if ctx == "":
                moved.append(None)
                continue
            n = len(ctx) - len(ctx.rstrip())
            moved.append((ctx[:-n], ctx[-n:] + cont) if n else (ctx, cont))
        ctxs = sorted({m[0] for m in moved if m is not None})
        ctx_enc = dict(zip(ctxs, self.tok_encode(ctxs)))
        whole_idx = [i for i, m in enumerate(moved) if m is not None]
        whole = dict(zip(whole_idx, self.tok_encode([moved[i][0] + moved[i][1] for i in whole_idx])))
        empty_idx = [i for i, m in enumerate(moved) if m is None]
        empty = dict(zip(empty_idx, self.tok_encode([pairs[i][1] for i in empty_idx], add_special_tokens=False)))
        out = []
        for i, m in enumerate(moved):
            if m is None:
                c = empty[i]
                out.append(([self.prefix_token_id], c) if self.prefix_token_id != c[0] else (c[:1], c[1:]))
            else:
                ce = ctx_enc[m[0]]
                out.append((ce, whole[i][len(ce):]))
        return out

    # ----------------------------------------------------------------------------------------------------- scoring
    def loglikelihood(self, pairs: Sequence[tuple[str, str]]) -> list[tuple[float, bool]]:
        """(sum of continuation log-probs, is_greedy) per (context, continuation) pair, in input order."""
        return self.loglikelihood_tokens(self.encode_pairs(pairs))

    def loglikelihood_rolling(self, strings: Sequence[str]) -> list[float]:
        """Whole-string log-likelihood with lm-eval's disjoint rolling windows (for perplexity)."""
        encs = self.tok_encode(strings)
        windows, owner = [], []
        for d, toks in enumerate(encs):
            for w in rolling_windows(toks, self.prefix_token_id, self.max_length):
                windows.append(w)
                owner.append(d)
        scores = self.loglikelihood_tokens(windows, share_prefixes=False)  # windows never share a prefix
        totals = [0.0] * len(strings)
        for d, (ll, _) in zip(owner, scores):
            totals[d] = totals[d] + ll
        return totals

    def _hosts(self, reqs: list[_Req], share: bool) -> tuple[list[_Req], list[int]]:
        """Forward rows and, per request, the index of the row whose input starts with the request's input."""
        host_of = [-1] * len(reqs)
        hosts: list[_Req] = []
        by_key: dict[tuple, list[int]] = {}
        order = sorted(range(len(reqs)), key=lambda i: -len(reqs[i].inp))
        for i in order:
            r = reqs[i]
            if share:
                # candidates: requests with the same context part of the input (the choices of one question)
                key = tuple(r.inp[: max(1, len(r.inp) - len(r.cont))])
                cands = by_key.setdefault(key, [])
                for h in cands:
                    hi = hosts[h].inp
                    if len(hi) >= len(r.inp) and hi[: len(r.inp)] == r.inp:
                        host_of[i] = h
                        break
                if host_of[i] >= 0:
                    continue
                cands.append(len(hosts))
            host_of[i] = len(hosts)
            hosts.append(r)
        return hosts, host_of

    def _batches(self, rows: list[int], lengths: list[int], scored: list[int] | None = None) -> Iterator[list[int]]:
        """Rows in order, cut at ``batch_size`` rows, ``max_batch_tokens`` padded tokens, and ``max_batch_logits``
        vocabulary-wide logits (``scored[r]`` positions of row ``r`` go through the LM head and the log-softmax: a
        rolling window scores all of them, and batching hundreds of full-vocabulary rows is slower than a few)."""
        batch: list[int] = []
        n_logits = 0
        cap = self.max_batch_logits // max(1, self._vocab) if self.max_batch_logits else None
        for r in rows:
            k = scored[r] if scored is not None else 0
            if batch and (len(batch) >= self.batch_size or (
                    self.max_batch_tokens and (len(batch) + 1) * lengths[batch[0]] > self.max_batch_tokens) or (
                    cap and scored is not None and n_logits + k > cap)):
                yield batch
                batch, n_logits = [], 0
            batch.append(r)
            n_logits += k
        if batch:
            yield batch

    @torch.inference_mode()
    def loglikelihood_tokens(self, requests: Sequence[tuple[list[int], list[int]]],
                             share_prefixes: bool | None = None) -> list[tuple[float, bool]]:
        """Score already-encoded (context_enc, continuation_enc) requests; results in input order."""
        reqs = []
        for i, (ctx, cont) in enumerate(requests):
            if not ctx or not cont:
                raise ValueError(f"request {i}: empty context or continuation encoding")
            if len(cont) > self.max_length:
                raise ValueError(f"request {i}: continuation of {len(cont)} tokens > max_length {self.max_length}")
            reqs.append(_Req(i, (list(ctx) + list(cont))[-(self.max_length + 1):][:-1], list(cont)))
        hosts, host_of = self._hosts(reqs, self.share_prefixes if share_prefixes is None else share_prefixes)
        self.stats["requests"] += len(reqs)
        self.stats["forward_rows"] += len(hosts)
        bar = self._bar(len(hosts), "log-likelihood rows")
        members: list[list[int]] = [[] for _ in hosts]
        for i, h in enumerate(host_of):
            members[h].append(i)
        results: list[tuple[float, bool] | None] = [None] * len(reqs)
        plain = list(range(len(hosts)))
        if self.cache_prefixes and (self.share_prefixes if share_prefixes is None else share_prefixes):
            try:
                plain = self._score_cached(reqs, hosts, members, results, bar)
            except (TypeError, AttributeError, NotImplementedError) as err:  # a model without a batch-selectable cache
                warnings.warn(f"{type(self.model).__name__}: no shared-prefix cache ({type(err).__name__}: {err}); "
                              "every row runs in full", stacklevel=2)
                self.cache_prefixes = False
        row_order = sorted(plain, key=lambda h: (-len(hosts[h].inp), tuple(hosts[h].inp)))
        lengths = [len(h.inp) for h in hosts]
        # a row's members share one prefix length and the row is the longest of them: it scores from there to its end
        scored = [len(r.inp) - (len(reqs[members[h][0]].inp) - len(reqs[members[h][0]].cont)) for h, r in enumerate(hosts)]
        for batch in self._batches(row_order, lengths, scored):
            width = lengths[batch[0]]
            ids = torch.zeros((len(batch), width), dtype=torch.long)
            for b, h in enumerate(batch):
                ids[b, : lengths[h]] = torch.tensor(hosts[h].inp, dtype=torch.long)
            # scored positions: request r (input length L, continuation c) is scored at positions L-c .. L-1
            spans = [(b, i, len(reqs[i].inp) - len(reqs[i].cont)) for b, h in enumerate(batch) for i in members[h]]
            keep = sorted({p for _, i, s in spans for p in range(s, s + len(reqs[i].cont))})
            kwargs = {"use_cache": False}
            col = None
            if self._keep_arg and len(keep) < width:
                kwargs["logits_to_keep"] = torch.tensor(keep, dtype=torch.long, device=self.device)
                col = {p: k for k, p in enumerate(keep)}
            logits = self.model(ids.to(self.device), **kwargs).logits
            self.stats["forward_calls"] += 1
            self._gather(logits, [(b, i, s if col is None else col[s]) for b, i, s in spans], reqs, results)
            bar.update(len(batch))
        bar.close()
        return results  # type: ignore[return-value]

    def _bar(self, total: int, desc: str):
        """A tqdm bar over ``total`` rows (off with ``progress=False``); one refresh per 10 s at most in a log file."""
        import sys

        from tqdm.auto import tqdm

        return tqdm(total=total, desc=desc, unit="row", disable=not self.progress or total == 0,
                    mininterval=0.5 if sys.stderr.isatty() else 10.0, file=sys.stderr)

    def _gather(self, logits, spans: list[tuple[int, int, int]], reqs: list[_Req], results: list) -> None:
        """Score request ``i``'s continuation at ``logits[row, col : col + len(cont)]`` for each ``(row, i, col)``.

        Long spans (rolling windows) are read through views of the logits, so no copy of a full-vocabulary block is
        made; short ones (the choices of multiple-choice questions) are gathered into one block. ``is_greedy`` is
        lm-eval's ``argmax == target`` at every position, computed as "the target's log-prob is the row maximum and
        no earlier index holds it" (a max reduction instead of an argmax over the vocabulary; the tie check runs only
        for continuations whose every position reaches the maximum)."""
        short = [sp for sp in spans if len(reqs[sp[1]].cont) < 64]
        for b, i, c in spans:
            m = len(reqs[i].cont)
            if m >= 64:
                self._score_block(logits[b, c: c + m], [i], [m], reqs, results)
        if not short:
            return
        rows_idx, cols_idx, sizes = [], [], []
        for b, i, c in short:
            m = len(reqs[i].cont)
            rows_idx += [b] * m
            cols_idx += list(range(c, c + m))
            sizes.append(m)
        sel = logits[torch.tensor(rows_idx, device=self.device), torch.tensor(cols_idx, device=self.device)]
        self._score_block(sel, [i for _, i, _ in short], sizes, reqs, results)

    def _score_block(self, block, owners: list[int], sizes: list[int], reqs: list[_Req], results: list) -> None:
        logp = F.log_softmax(block, dim=-1, dtype=self.softmax_dtype)
        tgt = torch.tensor([t for i in owners for t in reqs[i].cont], dtype=torch.long, device=self.device)
        tok_lp = logp.gather(1, tgt.unsqueeze(1)).squeeze(1)
        at_max = tok_lp == logp.amax(dim=-1)
        sums = torch.stack([x.sum() for x in torch.split(tok_lp, sizes)]).tolist()
        allmax = torch.stack([x.all() for x in torch.split(at_max, sizes)]).tolist()
        start = 0
        for i, m, ll, g in zip(owners, sizes, sums, allmax):
            if g:  # argmax returns the first maximal index: the target must be it
                rows = logp[start: start + m]
                g = bool((rows.argmax(dim=-1) == tgt[start: start + m]).all())
            results[i] = (float(ll), bool(g))
            start += m

    def _score_cached(self, reqs: list[_Req], hosts: list[_Req], members: list[list[int]], results: list,
                      bar=None) -> list[int]:
        """Rows whose requests share the context part of their input (the choices of one question) with other rows:
        the shared prefix runs once, its key/value cache is copied to each row, and only the row's own tail (the
        last context token and the continuation) runs on it. Returns the rows left for the plain path."""
        groups: dict[tuple, list[int]] = {}
        for h, r in enumerate(hosts):
            p = len(reqs[members[h][0]].inp) - len(reqs[members[h][0]].cont)  # every member: the same prefix
            if p >= 1:
                groups.setdefault(tuple(r.inp[:p]), []).append(h)
        shared = sorted((g for g in groups.items() if len(g[1]) > 1), key=lambda g: (-len(g[0]), g[0]))
        done = {h for _, hs in shared for h in hs}
        batch: list[tuple[tuple, list[int]]] = []
        rows = tail = 0
        for key, hs in shared:  # longest prefix first: a batch's first prefix is its widest
            t = max(len(hosts[h].inp) - len(key) for h in hs)
            if batch and (rows + len(hs) > self.batch_size or (self.max_batch_tokens and (rows + len(hs)) * (
                    len(batch[0][0]) + max(tail, t)) > self.max_batch_tokens)):
                self._cached_batch(batch, reqs, hosts, members, results)
                if bar is not None:
                    bar.update(rows)
                batch, rows, tail = [], 0, 0
            batch.append((key, hs))
            rows, tail = rows + len(hs), max(tail, t)
        if batch:
            self._cached_batch(batch, reqs, hosts, members, results)
            if bar is not None:
                bar.update(rows)
        return [h for h in range(len(hosts)) if h not in done]

    def _cached_batch(self, batch, reqs, hosts, members, results) -> None:
        pmax = max(len(k) for k, _ in batch)
        ids = torch.zeros((len(batch), pmax), dtype=torch.long)
        for g, (key, _) in enumerate(batch):
            ids[g, : len(key)] = torch.tensor(key, dtype=torch.long)
        kw = {"logits_to_keep": 1} if self._keep_arg else {}
        # right padding: a causal model's real positions never see it; the tails below mask it out
        out = self.model(ids.to(self.device), use_cache=True, **kw)
        cache = out.cache if "cache" in out else out.past_key_values  # transformers 5.2x renamed it
        rows = [(g, h) for g, (_, hs) in enumerate(batch) for h in hs]
        cache.batch_select_indices(torch.tensor([g for g, _ in rows], device=self.device))
        tails = [hosts[h].inp[len(batch[g][0]):] for g, h in rows]
        smax = max(len(t) for t in tails)
        tail_ids = torch.zeros((len(rows), smax), dtype=torch.long)
        mask = torch.zeros((len(rows), pmax + smax), dtype=torch.long)
        pos = torch.zeros((len(rows), smax), dtype=torch.long)
        for r, ((g, _), t) in enumerate(zip(rows, tails)):
            p = len(batch[g][0])
            tail_ids[r, : len(t)] = torch.tensor(t, dtype=torch.long)
            mask[r, :p] = 1
            mask[r, pmax: pmax + len(t)] = 1
            pos[r] = torch.arange(p, p + smax)
        logits = self.model(tail_ids.to(self.device), attention_mask=mask.to(self.device),
                            position_ids=pos.to(self.device), **{self._cache_arg: cache}, use_cache=True,
                            cache_position=torch.arange(pmax, pmax + smax, device=self.device)).logits
        self.stats["forward_calls"] += 2
        self.stats["cached_rows"] = self.stats.get("cached_rows", 0) + len(rows)
        spans = [(r, i, len(reqs[i].inp) - len(reqs[i].cont) - len(batch[g][0]))
                 for r, (g, h) in enumerate(rows) for i in members[h]]
        self._gather(logits, spans, reqs, results)

    # -------------------------------------------------------------------------------------------------- generation
    def generate_until(self, requests: Sequence[tuple[str, dict]], default_max_gen_toks: int = 256) -> list[str]:
        """Continuations of ``(context, generation_kwargs)`` requests (greedy unless the settings sample), cut at the
        stop sequences, in input order (lm-eval's ``HFLM.generate_until``; see the module docstring). Sampled rows
        draw from one ``torch.manual_seed(seed)`` stream per settings group, so they repeat run to run but do not
        equal lm-eval's draws (its batches, hence its random stream, are laid out differently)."""
        tok = self.tokenizer
        eos = tok.decode(tok.eos_token_id, skip_special_tokens=False) if tok.eos_token_id is not None else None
        pad = tok.pad_token_id if tok.pad_token_id is not None else (
            tok.unk_token_id if tok.unk_token is not None else tok.eos_token_id)
        lengths = [len(e) for e in self.tok_encode([c for c, _ in requests])]
        groups: dict[str, list[int]] = {}
        for i, (_, kw) in enumerate(requests):
            groups.setdefault(json.dumps(kw, sort_keys=True, default=str), []).append(i)
        out: list[str | None] = [None] * len(requests)
        bos = tok.bos_token
        bar = self._bar(len(requests), "generations")
        with torch.inference_mode():
            for idxs in groups.values():
                kw = normalize_gen_kwargs(requests[idxs[0]][1], default_max_gen_toks)
                if kw["do_sample"]:  # one seeded stream per settings group (lm-eval seeds torch once, 1234)
                    torch.manual_seed(self.seed)
                until = list(kw["until"])
                if eos is not None and eos not in until:
                    until.append(eos)
                max_gen = kw["max_gen_toks"]
                max_ctx = self.max_length - max_gen
                if max_ctx <= 0:
                    raise ValueError(f"max_gen_toks {max_gen} must be less than the model's max_length {self.max_length}")
                order = sorted(idxs, key=lambda i: (-lengths[i], requests[i][0]))
                for b in range(0, len(order), self.batch_size):
                    batch = order[b: b + self.batch_size]
                    strings = [requests[i][0] for i in batch]
                    special = {"add_special_tokens": False} if bos and strings[0].startswith(bos) else {}
                    enc = tok(strings, padding="longest", return_tensors="pt", padding_side="left", **special)
                    ids, mask = enc["input_ids"][:, -max_ctx:], enc["attention_mask"][:, -max_ctx:]
                    width = ids.shape[1]
                    sample = {k: kw[k] for k in ("temperature", "top_p", "top_k") if k in kw}
                    gen = self.model.generate(
                        input_ids=ids.to(self.device), attention_mask=mask.to(self.device), max_length=width + max_gen,
                        stopping_criteria=[_StopStrings(tok, until, width)], pad_token_id=pad, use_cache=True,
                        do_sample=kw["do_sample"], **sample)
                    self.stats["generate_calls"] = self.stats.get("generate_calls", 0) + 1
                    for i, row in zip(batch, gen[:, width:].tolist()):
                        out[i] = cut_at_stops(tok.decode(row, skip_special_tokens=True), until)
                    bar.update(len(batch))
        bar.close()
        return out  # type: ignore[return-value]


class _StopStrings(StoppingCriteria):
    """Per-row stopping: a row is done once the text it generated contains one of the stop strings.

    Only the last ``max(len(stop in UTF-8 bytes)) + 1`` generated tokens are decoded at each step: every token yields
    at least one byte, so a stop string completed by the newest token lies inside that window (detection at the step
    it appears, O(1) per step). Where it stops changes only the run time: the text is cut at the first stop string
    afterwards, as lm-eval does."""

    def __init__(self, tokenizer, stops: list[str], start: int):
        self.tokenizer, self.stops, self.start = tokenizer, [s for s in stops if s], start
        self.window = max((len(s.encode("utf-8")) for s in self.stops), default=0) + 1

    def __call__(self, input_ids: torch.Tensor, scores=None, **kwargs) -> torch.Tensor:  # noqa: ARG002
        done = torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)
        if not self.stops:
            return done
        tail = input_ids[:, max(self.start, input_ids.shape[1] - self.window):].tolist()
        for r, row in enumerate(tail):
            text = self.tokenizer.decode(row, skip_special_tokens=False)
            done[r] = any(s in text for s in self.stops)
        return done


def cut_at_stops(text: str, until: Sequence[str]) -> str:
    """lm-eval's post-processing of a generation: cut at each stop sequence in turn (``text.split(stop)[0]``)."""
    for term in until:
        if term:
            text = text.split(term)[0]
    return text


def normalize_gen_kwargs(gen_kwargs: dict, default_max_gen_toks: int = 256) -> dict:
    """lm-eval's ``normalize_gen_kwargs`` + ``HFLM._model_generate``: ``until`` a list, ``max_gen_toks`` resolved from
    its aliases; greedy unless ``do_sample`` is true (then ``temperature``, ``top_p``, ``top_k`` pass through to
    ``model.generate``, as lm-eval passes them). ``do_sample`` false with a temperature above 0 is refused."""
    kw = dict(gen_kwargs)
    until = kw.pop("until", None)
    until = [until] if isinstance(until, str) else list(until or [])
    n = default_max_gen_toks
    for alias in ("max_completion_tokens", "max_tokens", "max_new_tokens", "max_gen_toks"):
        if kw.get(alias) is not None:
            n = int(kw[alias])
    for alias in ("max_completion_tokens", "max_tokens", "max_new_tokens", "max_gen_toks"):
        kw.pop(alias, None)
    do_sample = bool(kw.pop("do_sample", False))
    temperature = float(kw.pop("temperature", 0.0) or 0.0)
    sampling = {k: kw.pop(k) for k in ("top_p", "top_k") if k in kw}
    if kw:
        raise ValueError(f"generation settings {gen_kwargs}: unsupported key(s) {sorted(kw)}")
    if not do_sample:
        if temperature > 0:
            raise ValueError(f"generation settings {gen_kwargs}: a temperature above 0 needs do_sample true")
        return {"until": until, "max_gen_toks": n, "do_sample": False}
    if temperature <= 0:
        raise ValueError(f"generation settings {gen_kwargs}: do_sample needs a temperature above 0")
    return {"until": until, "max_gen_toks": n, "do_sample": True, "temperature": temperature, **sampling}


def check_model_dir(path: Path) -> None:
    """Fail early, naming the file, if ``path`` cannot hold a HF causal LM + tokenizer."""
    if not path.is_dir():
        raise ModelLoadError(f"{path}: model directory not found")
    if not (path / "config.json").is_file():
        raise ModelLoadError(f"{path}: no config.json (not a Hugging Face model directory)")
    tok_files = ("tokenizer.json", "tokenizer.model", "vocab.json", "tokenizer_config.json")
    if not any((path / f).is_file() for f in tok_files):
        raise ModelLoadError(f"{path}: no tokenizer (none of {', '.join(tok_files)}); save the tokenizer with the "
                             f"model (tokenizer.save_pretrained)")
