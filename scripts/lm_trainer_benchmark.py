"""The bilingual LM's training loop (``models/bilingual_lm/trainer.py``) against Hugging Face ``Trainer`` (CPU).

Both train the same ``HyperCLOVAXForCausalLM`` (``models/bilingual_lm/modeling.py``: ``build_model(preset,
vocab_size=..., seed=...)``) on the same packed rows ``[N, seq_len + 1]`` for the same optimiser steps, each in a
fresh subprocess of its own (so peak memory is per implementation), interleaved A B A B A B (``--repeats``) so that
drift of the machine cancels. Measured: wall time of every optimiser step (the time between the ends of consecutive
steps, the first ``--timing-warmup`` steps left out), tokens/s = ``global_batch * seq_len`` / median step time, the
loss of every step, peak RSS (``VmHWM`` of ``/proc/self/status``: the kernel's high-water mark of the process's
resident memory, which covers torch's allocations; psutil has no peak RSS on Linux, tracemalloc sees only Python's
allocator), the 1-minute load average and the CPU that other processes used during the timed steps (from
``/proc/stat`` less the worker's own CPU time). On a shared machine the wall times include waiting for a core, so
also reported: the worker's own CPU seconds per step (``time.process_time``, all its threads) and tokens per
CPU-second, its core share during the timed steps (own CPU / wall; a run below 0.9 x ``--threads`` is marked
contended), the ratio over the pairs in which neither run was contended, and the ratio of the fastest steps.

    .venv/bin/python scripts/lm_trainer_benchmark.py --threads 1 --out /tmp/lm_bench.json
    .venv/bin/python scripts/lm_trainer_benchmark.py --quick --out /tmp/lm_bench_quick.json   # tiny, seconds

Defaults: preset ``10m`` with a 16,384 vocabulary (~10M parameters, tied), seq_len 256, global batch 32 rows =
micro-batch 8 x accumulation 4, lr 2e-3, warm-up 3 steps, cosine to 0.1 x lr, weight decay 0.1, 16 optimiser steps
(the issue's 30 steps take ~10 s each on one core of this machine, 6 runs x 30 steps ~ 31 minutes; 16 steps keep the
whole benchmark under ~20 minutes: ``--steps 30`` runs the issue's number), 3 repeats, one torch thread
(``--threads``). ``--quick``: the ``tiny`` preset (512 vocabulary), seq_len 32, global batch 8 = 4 x 2, 6 steps, 1
repeat (the smoke test). Exit status 1 when the losses differ beyond ``--rtol`` (relative, per step), 2 when
Hugging Face ``Trainer`` cannot run here (it needs ``accelerate``; see ``--accelerate-path``), 3 when the losses agree
but a faithfulness check failed (initial weights, micro-batch order, parameter groups or learning rates differ).

What is the same in the two
---------------------------
* **Model and initial weights**: each worker calls ``build_model(preset, vocab_size=vocab, seed=seed)``; the sha256
  of the initial ``state_dict`` is compared (the run stops if they differ). fp32 on CPU, no autocast (``dtype
  float32`` in ours; no ``bf16`` / ``fp16`` in the Trainer's arguments), no dropout (the model has none), the same
  ``torch.set_num_threads``.
* **Data and order**: the rows are a seeded, learnable stream (random short patterns of ids, repeated in a random
  order; ``--rows path.npy`` reads a real packed file instead). Ours reads global step k's rows from
  ``global_batch_rows(k, N, settings)`` (seeded per-epoch permutations) and splits them into micro-batches of
  ``micro_batch`` rows in that order. The Trainer gets a dataset that holds exactly that stream (step 0's rows,
  then step 1's, ...) with ``train_sampling_strategy="sequential"`` (5.24's own switch for ``_get_train_sampler``:
  a ``SequentialSampler``), ``per_device_train_batch_size=micro_batch`` and ``gradient_accumulation_steps =
  global_batch / micro_batch``, so its k-th optimiser step sees the same rows in the same micro-batches;
  ``training_step`` is wrapped to check every micro-batch against the expected rows (mismatches are counted and
  fail the run).
* **Loss**: next-token cross-entropy, the per-token mean over the global batch. Ours: ``lm_loss_sum`` (inputs =
  row[:-1], targets = row[1:]) summed, divided by ``global_batch * seq_len``. The Trainer: ``input_ids = labels =``
  the whole row of ``seq_len + 1`` ids; the model's ``ForCausalLMLoss`` shifts the labels (position i predicts
  label i+1, the last position predicts nothing), so the same ``seq_len`` targets per row are scored, and since the
  model's ``forward`` takes ``**kwargs`` the Trainer passes ``num_items_in_batch`` = the target count of the whole
  accumulated batch (it counts ``labels[..., 1:]``), i.e. each micro-batch's summed loss / the global count, as
  ours. Both record the loss of a step as the sum of its micro-batches' losses (float64).
* **Optimiser**: ``torch.optim.AdamW`` (the Trainer's ``optim="adamw_torch"``, not 5.24's default
  ``adamw_torch_fused``; ours is not fused on CPU either), lr 2e-3, betas (0.9, 0.95), eps 1e-8, weight decay 0.1 on
  every parameter with ``dim >= 2`` and 0 on the rest. The Trainer's own exclusion is by NAME (bias / LayerNorm /
  RMSNorm / ``norm`` patterns, ``get_decay_parameter_names``); here it is overridden to return the names of the
  parameters with ``dim >= 2``, and the resulting groups are compared with ours name by name (reported, and what the
  Trainer's default would have chosen differently is listed too: for this model nothing, since it has no biases,
  its norm weights' names contain ``norm`` and ``lm_head.weight`` is the tied embedding, listed once by
  ``named_parameters``). Gradient norm clipped to 1.0 (``max_grad_norm``;
  both call ``torch.nn.utils.clip_grad_norm_`` on the model's parameters), gradients zeroed to None.
* **Schedule**: ours is ``lr_at``: linear warm-up ``lr * (k + 1) / warmup`` for k < warmup, then cosine to
  ``min_lr_ratio * lr`` at ``max_steps``. 5.24's ``cosine_with_min_lr`` (``min_lr_rate``) warms up from 0
  (``lr * k / warmup``: step 0 trains at lr 0) and so differs during warm-up; both schedules are printed, and the
  Trainer is given ours (``create_scheduler`` overridden to return an ``LRScheduler`` whose ``get_lr`` is ``lr_at``,
  the same values bit for bit); the learning rates actually used at every step are compared.

What differs (and is measured, not corrected)
---------------------------------------------
* The Trainer's forward/backward runs on ``seq_len + 1`` positions per row (the last position's logits are computed
  and thrown away): (L + 1) / L more work, 0.39 % at L = 256 (a bit more in attention). Reported as
  ``hf_extra_positions``; tokens/s counts the ``seq_len`` target tokens for both.
* The Trainer's own per-step machinery: its DataLoader + ``default_data_collator`` (a dict per row, stacked), the
  accelerate wrappers (``AcceleratedOptimizer``, ``clip_grad_norm_`` through the Accelerator), callbacks, logging
  every step (``logging_steps=1``, so loss and grad norm are read every step as ours does), the FLOP estimate per
  micro-batch, the nan/inf filter. Ours: numpy indexing of the rows, a tqdm bar (off here: ``progress=False``; the
  Trainer's bar is off too, ``disable_tqdm=True``, and its PrinterCallback removed).
* Checkpoints: none in the Trainer (``save_strategy="no"``); ours always writes one at the last step (not
  configurable), after the last step's end is timed: it is outside every step time and reported on its own
  (``final_checkpoint_s``); ``checkpoint_every > max_steps`` so no other checkpoint is written.
* Float-level differences: the (L + 1)-position matmuls block differently from the L-position ones, so the logits
  differ in the last bits and Adam carries that on over the steps. Measured with the defaults: step 1's loss agrees
  to 2.4e-8 relative, the largest per-step difference in 16 steps is 1.9e-5 (3.0e-6 relative), the final parameters
  differ by at most 5.5e-5; the pre-clip gradient norms agree to ~1e-5 except one step (0.5 %). Reruns of one
  implementation are bit-identical.

Hugging Face ``Trainer`` needs ``accelerate`` (``TrainingArguments`` refuses to pick a device without it). When it is
not importable, ``--accelerate-path`` (or ``LM_BENCH_ACCELERATE_PATH``) names a directory or a pure-Python wheel
(e.g. from ``pip download --no-deps accelerate==1.15.0``) that is put first on the Trainer worker's ``sys.path``
(a wheel is imported in place by zipimport); nothing is installed.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

DEFAULTS = dict(preset="10m", vocab=16384, seq_len=256, global_batch=32, micro_batch=8, steps=16, warmup=3, lr=2e-3,
                min_lr_ratio=0.1, weight_decay=0.1, seed=0, n_rows=1024, repeats=3, timing_warmup=2)
QUICK = dict(preset="tiny", vocab=512, seq_len=32, global_batch=8, micro_batch=4, steps=6, warmup=1, n_rows=64,
             repeats=1)
IMPLS = ("ours", "hf")
LABEL = {"ours": "ours (models/bilingual_lm/trainer.py train)", "hf": "HF Trainer (transformers 5.24)"}


# ------------------------------------------------------------------------------------------------ shared helpers
def make_rows(n_rows: int, seq_len: int, vocab: int, seed: int):
    """A seeded, learnable packed stream: 16 random id patterns (16-48 ids, ids >= 3: no special tokens) repeated
    in a random order, cut into rows of seq_len + 1."""
    import numpy as np

    rng = np.random.default_rng([seed, 20240])
    patterns = [rng.integers(3, vocab, size=int(rng.integers(16, 49))) for _ in range(16)]
    need, chunks, total = n_rows * (seq_len + 1), [], 0
    while total < need:
        p = patterns[int(rng.integers(len(patterns)))]
        chunks.append(p)
        total += len(p)
    return np.concatenate(chunks)[:need].reshape(n_rows, seq_len + 1).astype(np.int32)


def load_rows(cfg: dict):
    import numpy as np

    if cfg.get("rows_path"):
        rows = np.load(cfg["rows_path"], mmap_mode="r")
        if rows.ndim != 2 or rows.shape[1] != cfg["seq_len"] + 1:
            raise SystemExit(f"--rows: expected [N, seq_len + 1 = {cfg['seq_len'] + 1}], got {rows.shape}")
        rows = np.asarray(rows[:cfg["n_rows"]] if cfg.get("n_rows_given") else rows)
        if int(rows.max()) >= cfg["vocab"] or int(rows.min()) < 0:
            raise SystemExit(f"--rows: ids outside [0, {cfg['vocab']})")
        return rows
    return make_rows(cfg["n_rows"], cfg["seq_len"], cfg["vocab"], cfg["seed"])


def settings_of(cfg: dict):
    from models.bilingual_lm.trainer import TrainSettings

    return TrainSettings(seq_len=cfg["seq_len"], global_batch=cfg["global_batch"], micro_batch=cfg["micro_batch"],
                         max_steps=cfg["steps"], lr=cfg["lr"], min_lr_ratio=cfg["min_lr_ratio"],
                         warmup_steps=cfg["warmup"], weight_decay=cfg["weight_decay"], seed=cfg["seed"],
                         dtype="float32", checkpoint_every=cfg["steps"] + 1, eval_every=cfg["steps"] + 1,
                         log_every=cfg["steps"], keep_last=1)


def stream_order(n_rows: int, s):
    """Row indices in the order ours consumes them: every step's global batch, its micro-batches in order (1
    process)."""
    import numpy as np

    from models.bilingual_lm.trainer import Dist, global_batch_rows, rank_micro_batches

    out = []
    for k in range(s.max_steps):
        out.extend(np.concatenate(rank_micro_batches(global_batch_rows(k, n_rows, s), Dist(), s)).tolist())
    return np.asarray(out, dtype=np.int64)


def state_hash(model) -> str:
    h = hashlib.sha256()
    for k, v in sorted(model.state_dict().items()):
        h.update(k.encode())
        h.update(v.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def proc_status(field: str) -> int:
    """kB from /proc/self/status (VmRSS, VmHWM)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return -1


def cpu_snapshot() -> tuple[float, float, float]:
    """(wall, busy core-seconds of the whole machine from /proc/stat, this process's CPU seconds)."""
    parts = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    vals = [int(x) for x in parts[:8]]
    busy = sum(vals) - vals[3] - vals[4]  # less idle and iowait
    return time.perf_counter(), busy / os.sysconf("SC_CLK_TCK"), time.process_time()


class StepClock:
    """End-of-step timestamps; a machine-CPU snapshot at the end of the last untimed step and of the last step."""

    def __init__(self, timing_warmup: int, max_steps: int):
        self.t: list[float] = []
        self.cpu: list[float] = []  # this process's CPU seconds (all threads) at the same moments
        self.timing_warmup, self.max_steps = timing_warmup, max_steps
        self.snap0 = self.snap1 = None
        self.load1 = None

    def tick(self, step: int) -> None:  # step: 1-based, just finished
        self.t.append(time.perf_counter())
        self.cpu.append(time.process_time())
        if step == self.timing_warmup:
            self.snap0 = cpu_snapshot()
        if step == self.max_steps:
            self.snap1 = cpu_snapshot()
            self.load1 = os.getloadavg()[0]
            self.hwm_last_step = proc_status("VmHWM")  # before ours writes its final checkpoint

    def summary(self) -> dict:
        # t[i] ends step i + 1, so t[i + 1] - t[i] is step i + 2's time; steps timing_warmup + 1 .. max_steps
        times = [b - a for a, b in zip(self.t, self.t[1:])][self.timing_warmup - 1:]
        cpu = [b - a for a, b in zip(self.cpu, self.cpu[1:])][self.timing_warmup - 1:]
        out = {"step_times_s": times, "step_cpu_s": cpu, "load1_end": self.load1,
               "rss_peak_training_kb": getattr(self, "hwm_last_step", -1)}
        if self.snap0 and self.snap1:
            wall = self.snap1[0] - self.snap0[0]
            others = (self.snap1[1] - self.snap0[1]) - (self.snap1[2] - self.snap0[2])
            out["timed_wall_s"] = wall
            out["own_cpu_cores"] = (self.snap1[2] - self.snap0[2]) / wall
            out["other_cpu_cores"] = max(0.0, others / wall)
        return out


def group_names(model, groups) -> list[dict]:
    name_of = {id(p): n for n, p in model.named_parameters()}
    return [{"weight_decay": g["weight_decay"], "names": [name_of[id(p)] for p in g["params"]],
             **{k: (list(v) if isinstance(v, tuple) else v) for k, v in g.items()
                if k in ("betas", "eps", "amsgrad", "maximize", "foreach", "fused", "capturable", "differentiable")}}
            for g in groups]


# ------------------------------------------------------------------------------------------------ workers
def _worker_common(cfg: dict):
    import torch

    torch.set_num_threads(cfg["threads"])
    from models.bilingual_lm.modeling import build_model, count_parameters

    rows = load_rows(cfg)
    s = settings_of(cfg)
    model = build_model(cfg["preset"], vocab_size=cfg["vocab"], seed=cfg["seed"])
    info = {"init_hash": state_hash(model), "params": count_parameters(model), "threads": torch.get_num_threads(),
            "torch": torch.__version__, "n_rows": int(rows.shape[0])}
    return torch, rows, s, model, info


def run_ours(cfg: dict, workdir: Path) -> dict:
    torch, rows, s, model, info = _worker_common(cfg)
    from models.bilingual_lm.trainer import _param_groups, train

    info["param_groups"] = group_names(model, [{**g, "betas": [s.beta1, s.beta2], "eps": s.eps}
                                               for g in _param_groups(model, s.weight_decay)])
    clock = StepClock(cfg["timing_warmup"], s.max_steps)
    info["rss_start_kb"] = proc_status("VmRSS")
    t0 = time.perf_counter()
    hist = train(model, rows, s, workdir / "ckpt", progress=False, device="cpu",
                 log_fn=lambda rec, step: clock.tick(step))
    t1 = time.perf_counter()
    info.update(clock.summary())
    info["final_checkpoint_s"] = t1 - clock.t[-1]  # the one checkpoint train() always writes, after the last step
    info["train_call_s"] = t1 - t0
    info["loss"] = [h["loss"] for h in hist]
    info["lr"] = [h["lr"] for h in hist]
    info["grad_norm"] = [h["grad_norm"] for h in hist]
    info["order_mismatches"] = 0  # ours defines the order
    info["rss_peak_kb"] = proc_status("VmHWM")
    if cfg.get("save_final"):
        torch.save(model.state_dict(), cfg["save_final"])
    return info


def run_hf(cfg: dict, workdir: Path) -> dict:
    if cfg.get("accelerate_path"):
        sys.path.insert(0, cfg["accelerate_path"])
    torch, rows, s, model, info = _worker_common(cfg)
    import transformers
    from transformers import PrinterCallback, Trainer, TrainerCallback, TrainingArguments
    from transformers.optimization import get_scheduler

    from models.bilingual_lm.trainer import lr_at

    transformers.logging.set_verbosity_error()
    import accelerate

    info["transformers"], info["accelerate"] = transformers.__version__, accelerate.__version__
    order = stream_order(len(rows), s)
    stream = torch.from_numpy(rows[order].astype("int64"))

    class Rows(torch.utils.data.Dataset):
        def __len__(self):
            return stream.shape[0]

        def __getitem__(self, i):
            return {"input_ids": stream[i], "labels": stream[i]}

    class OurSchedule(torch.optim.lr_scheduler.LRScheduler):
        """lr_at(k) itself (not base_lr * ratio, which can differ in the last bit)."""

        def __init__(self, optimizer):
            super().__init__(optimizer)

        def get_lr(self):
            return [lr_at(self.last_epoch, s) for _ in self.optimizer.param_groups]

    class FaithfulTrainer(Trainer):
        def __init__(self, *a, **kw):
            super().__init__(*a, **kw)
            self.bench_pos, self.bench_mismatch, self.bench_micro_losses = 0, 0, []

        def get_decay_parameter_names(self, model):  # ours: decay on every parameter with dim >= 2
            return [n for n, p in model.named_parameters() if p.dim() >= 2]

        def create_scheduler(self, num_training_steps, optimizer=None):
            if self.lr_scheduler is None:
                self.lr_scheduler = OurSchedule(optimizer if optimizer is not None else self.optimizer)
                self._created_lr_scheduler = True
            return self.lr_scheduler

        def training_step(self, model, inputs, num_items_in_batch=None):
            ids = inputs["input_ids"]
            if not torch.equal(ids, stream[self.bench_pos:self.bench_pos + ids.shape[0]]):
                self.bench_mismatch += 1
            self.bench_pos += ids.shape[0]
            loss = super().training_step(model, inputs, num_items_in_batch)
            self.bench_micro_losses.append(float(loss))
            return loss

    clock = StepClock(cfg["timing_warmup"], s.max_steps)
    used_lr, logs_list = [], []

    class Probe(TrainerCallback):
        def on_optimizer_step(self, args, state, control, optimizer=None, **kw):  # before the scheduler's step
            used_lr.append(optimizer.param_groups[0]["lr"])

        def on_step_end(self, args, state, control, **kw):
            clock.tick(state.global_step)

        def on_log(self, args, state, control, logs=None, **kw):
            if logs and "grad_norm" in logs:  # the per-step logs (not the end-of-training summary)
                logs_list.append(dict(logs))

    ga = s.global_batch // s.micro_batch
    args = TrainingArguments(
        output_dir=str(workdir / "hf"), use_cpu=True, seed=cfg["seed"], max_steps=s.max_steps,
        per_device_train_batch_size=s.micro_batch, gradient_accumulation_steps=ga,
        learning_rate=s.lr, weight_decay=s.weight_decay, adam_beta1=s.beta1, adam_beta2=s.beta2, adam_epsilon=s.eps,
        max_grad_norm=s.clip, optim="adamw_torch", lr_scheduler_type="cosine_with_min_lr",
        lr_scheduler_kwargs={"min_lr_rate": s.min_lr_ratio}, warmup_steps=s.warmup_steps,
        train_sampling_strategy="sequential", dataloader_num_workers=0, dataloader_pin_memory=False,
        logging_strategy="steps", logging_steps=1, report_to=[], save_strategy="no", disable_tqdm=True,
        bf16=False, fp16=False)
    trainer = FaithfulTrainer(model=model, args=args, train_dataset=Rows(), callbacks=[Probe()])
    trainer.remove_callback(PrinterCallback)
    info["hf_accepts_loss_kwargs"] = bool(trainer.model_accepts_loss_kwargs)
    info["hf_loss_shifts_labels"] = bool(trainer._loss_shifts_labels)
    # the Trainer's default (name-based) choice, as create_optimizer would apply it: over named_parameters(), which
    # lists a tied weight once (lm_head.weight is model.embed_tokens.weight)
    named = {n for n, _ in model.named_parameters()}
    default_decay = set(Trainer.get_decay_parameter_names(trainer, model)) & named
    ours_decay = {n for n, p in model.named_parameters() if p.dim() >= 2}
    info["hf_default_decay_differs"] = {"hf_decays_ours_not": sorted(default_decay - ours_decay),
                                        "ours_decays_hf_not": sorted(ours_decay - default_decay)}
    # the Trainer's own cosine_with_min_lr schedule (what it would do unless told), for the printout
    probe = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=s.lr)
    native = get_scheduler("cosine_with_min_lr", optimizer=probe, num_warmup_steps=s.warmup_steps,
                           num_training_steps=s.max_steps, scheduler_specific_kwargs={"min_lr_rate": s.min_lr_ratio})
    info["hf_native_lr"] = []
    for _ in range(s.max_steps):
        info["hf_native_lr"].append(probe.param_groups[0]["lr"])
        probe.step()
        native.step()
    info["rss_start_kb"] = proc_status("VmRSS")
    t0 = time.perf_counter()
    trainer.train()
    t1 = time.perf_counter()
    info.update(clock.summary())
    info["train_call_s"] = t1 - t0
    info["final_checkpoint_s"] = 0.0
    micro = trainer.bench_micro_losses
    if len(micro) != s.max_steps * ga:
        raise RuntimeError(f"the Trainer ran {len(micro)} micro-batches, expected {s.max_steps * ga}")
    info["loss"] = [math.fsum(micro[k * ga:(k + 1) * ga]) for k in range(s.max_steps)]
    info["loss_logged"] = [lg["loss"] for lg in logs_list]
    info["lr"] = used_lr
    info["grad_norm"] = [float(lg["grad_norm"]) for lg in logs_list]
    info["order_mismatches"] = trainer.bench_mismatch
    info["param_groups"] = group_names(model, trainer.optimizer.optimizer.param_groups
                                       if hasattr(trainer.optimizer, "optimizer") else trainer.optimizer.param_groups)
    info["optimizer_class"] = type(getattr(trainer.optimizer, "optimizer", trainer.optimizer)).__name__
    info["rss_peak_kb"] = proc_status("VmHWM")
    if cfg.get("save_final"):
        torch.save(model.state_dict(), cfg["save_final"])
    return info


def worker_main(impl: str, cfg_path: str, result_path: str) -> None:
    cfg = json.loads(Path(cfg_path).read_text())
    with tempfile.TemporaryDirectory(prefix=f"lmbench-{impl}-") as d:
        info = (run_ours if impl == "ours" else run_hf)(cfg, Path(d))
    info["impl"] = impl
    Path(result_path).write_text(json.dumps(info))


# ------------------------------------------------------------------------------------------------ the parent
def accelerate_ok(path: str | None) -> tuple[bool, str]:
    code = ("import sys; p = sys.argv[1]\nif p: sys.path.insert(0, p)\n"
            "import accelerate, transformers; print(accelerate.__version__, transformers.__version__)")
    r = subprocess.run([sys.executable, "-c", code, path or ""], capture_output=True, text=True, cwd=REPO)
    return r.returncode == 0, (r.stdout.strip() or r.stderr.strip().splitlines()[-1] if r.stderr.strip() else "")


def run_worker(impl: str, cfg: dict, tmp: Path, tag: str) -> dict:
    cfg_path, res_path = tmp / f"{tag}.cfg.json", tmp / f"{tag}.json"
    cfg_path.write_text(json.dumps(cfg))
    env = {k: v for k, v in os.environ.items() if k not in ("WORLD_SIZE", "RANK", "LOCAL_RANK")}
    t = str(cfg["threads"])
    env.update(OMP_NUM_THREADS=t, MKL_NUM_THREADS=t, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false",
               PYTHONPATH=str(REPO) + os.pathsep + env.get("PYTHONPATH", ""))
    t0 = time.perf_counter()
    r = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--worker", impl, "--config", str(cfg_path),
                        "--result", str(res_path)], capture_output=True, text=True, cwd=REPO, env=env)
    if r.returncode != 0:
        sys.stderr.write(r.stdout[-4000:] + r.stderr[-8000:])
        raise SystemExit(f"the {impl} worker failed (exit {r.returncode})")
    out = json.loads(res_path.read_text())
    out["process_wall_s"] = time.perf_counter() - t0
    return out


def median(xs):
    return statistics.median(xs) if xs else float("nan")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="tiny preset, seq_len 32, 6 steps, 1 repeat (smoke test)")
    for k, v in DEFAULTS.items():
        ap.add_argument("--" + k.replace("_", "-"), type=type(v), default=None, help=f"default {v} ({QUICK.get(k, v)} "
                        "with --quick)")
    ap.add_argument("--rows", default=None, help="a packed .npy [N, seq_len + 1] to train on instead of the stream")
    ap.add_argument("--threads", type=int, default=1, help="torch threads in each worker (default 1)")
    ap.add_argument("--rtol", type=float, default=1e-4, help="max relative per-step loss difference (default 1e-4)")
    ap.add_argument("--accelerate-path", default=os.environ.get("LM_BENCH_ACCELERATE_PATH"),
                    help="a directory or wheel with accelerate for the Trainer worker, when it is not installed")
    ap.add_argument("--busy-note", default=None,
                    help="a line about the machine's other load, printed with the results (default: said from the "
                         "measured CPU use of other processes; '' for none)")
    ap.add_argument("--out", default=None, help="write the results as JSON here")
    ap.add_argument("--worker", choices=IMPLS, help=argparse.SUPPRESS)
    ap.add_argument("--config", help=argparse.SUPPRESS)
    ap.add_argument("--result", help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.worker:
        worker_main(a.worker, a.config, a.result)
        return 0

    base = {**DEFAULTS, **(QUICK if a.quick else {})}
    cfg = {k: (getattr(a, k) if getattr(a, k) is not None else v) for k, v in base.items()}
    cfg.update(threads=a.threads, rows_path=str(Path(a.rows).resolve()) if a.rows else None,
               n_rows_given=a.n_rows is not None, accelerate_path=a.accelerate_path)
    if cfg["global_batch"] % cfg["micro_batch"]:
        raise SystemExit("global_batch must be a multiple of micro_batch")
    if not 1 <= cfg["timing_warmup"] < cfg["steps"] - 1:
        raise SystemExit("need 1 <= timing_warmup < steps - 1 (at least two timed steps)")
    ok, msg = accelerate_ok(a.accelerate_path)
    if not ok:
        print(f"Hugging Face Trainer cannot run here: accelerate is not importable ({msg}). Install it in the "
              "environment, or pass --accelerate-path DIR_OR_WHEEL (e.g. from `pip download --no-deps "
              "accelerate==1.15.0`).", file=sys.stderr)
        return 2

    import platform

    load_before = os.getloadavg()
    runs: dict[str, list[dict]] = {i: [] for i in IMPLS}
    with tempfile.TemporaryDirectory(prefix="lmbench-") as d:
        tmp = Path(d)
        for r in range(cfg["repeats"]):
            for impl in IMPLS:  # A B A B ...
                c = dict(cfg, save_final=str(tmp / f"final-{impl}.pt") if r == 0 else None)
                res = run_worker(impl, c, tmp, f"{impl}-{r}")
                runs[impl].append(res)
                print(f"[{r + 1}/{cfg['repeats']}] {impl:4s}: median step {median(res['step_times_s']):.3f} s, "
                      f"final loss {res['loss'][-1]:.5f}, peak RSS {res['rss_peak_kb'] / 1024:.0f} MiB, "
                      f"other processes {res.get('other_cpu_cores', float('nan')):.2f} cores", flush=True)
        import torch

        fa, fb = (torch.load(tmp / f"final-{i}.pt", weights_only=True) for i in IMPLS)
        final_param_max_abs = max(float((fa[k] - fb[k]).abs().max()) for k in fa)
        final_param_max_rel = max(float((fa[k] - fb[k]).abs().max() / fa[k].abs().max().clamp_min(1e-30))
                                  for k in fa)
    load_after = os.getloadavg()

    A, B = runs["ours"], runs["hf"]
    problems = []
    hashes = {x["init_hash"] for x in A + B}
    if len(hashes) != 1:
        problems.append(f"initial weights differ between the workers: {sorted(hashes)}")
    if any(x["order_mismatches"] for x in B):
        problems.append("the Trainer saw micro-batches other than ours")
    if not B[0]["hf_accepts_loss_kwargs"] or not B[0]["hf_loss_shifts_labels"]:
        problems.append("the Trainer does not normalise by the global target count (num_items_in_batch)")
    pg_o = [(g["weight_decay"], sorted(g["names"])) for g in A[0]["param_groups"]]
    pg_h = [(g["weight_decay"], sorted(g["names"])) for g in B[0]["param_groups"]]
    groups_equal = pg_o == pg_h
    if not groups_equal:
        problems.append("the optimiser parameter groups differ")
    hf_hyper = {k: B[0]["param_groups"][0].get(k) for k in ("betas", "eps", "amsgrad", "maximize", "foreach", "fused")}
    lr_o, lr_h, lr_native = A[0]["lr"], B[0]["lr"], B[0]["hf_native_lr"]
    lr_max_diff = max(abs(x - y) for x, y in zip(lr_o, lr_h))
    if lr_max_diff > 0 or len(lr_o) != len(lr_h):
        problems.append(f"the learning rates used differ (max {lr_max_diff:.3g})")
    # losses: every run of each implementation is the same computation; compare all pairs of runs
    steps = cfg["steps"]
    loss_o, loss_h = A[0]["loss"], B[0]["loss"]
    abs_d = [abs(x - y) for x, y in zip(loss_o, loss_h)]
    rel_d = [d_ / abs(x) for d_, x in zip(abs_d, loss_o)]
    rerun_spread = max(max(abs(x - y) for x, y in zip(r_["loss"], runs[i][0]["loss"])) for i in IMPLS
                       for r_ in runs[i])
    losses_equal = max(rel_d) <= a.rtol and len(loss_o) == len(loss_h) == steps
    gn_rel = max(abs(x - y) / max(abs(x), 1e-12) for x, y in zip(A[0]["grad_norm"], B[0]["grad_norm"]))

    tokens_per_step = cfg["global_batch"] * cfg["seq_len"]
    summary = {}
    for impl, rs in runs.items():
        pooled = [t for r_ in rs for t in r_["step_times_s"]]
        per_run = [tokens_per_step / median(r_["step_times_s"]) for r_ in rs]
        pooled_cpu = [t for r_ in rs for t in r_["step_cpu_s"]]
        summary[impl] = {
            "median_step_s": median(pooled), "tokens_per_s": tokens_per_step / median(pooled),
            "median_step_cpu_s": median(pooled_cpu), "tokens_per_cpu_s": tokens_per_step / median(pooled_cpu),
            "min_step_s": min(pooled), "tokens_per_s_best_step": tokens_per_step / min(pooled),
            "own_cpu_cores_per_run": [r_.get("own_cpu_cores", float("nan")) for r_ in rs],
            "tokens_per_s_per_run": per_run, "timed_steps": len(pooled), "max_step_s": max(pooled),
            "rss_peak_mib": max(r_["rss_peak_kb"] for r_ in rs) / 1024,
            "rss_start_mib": median([r_["rss_start_kb"] for r_ in rs]) / 1024,
            "rss_growth_mib": median([r_["rss_peak_kb"] - r_["rss_start_kb"] for r_ in rs]) / 1024,
            "rss_peak_training_mib": max(r_["rss_peak_training_kb"] for r_ in rs) / 1024,
            "other_cpu_cores": median([r_.get("other_cpu_cores", float("nan")) for r_ in rs]),
            "own_cpu_cores": median([r_.get("own_cpu_cores", float("nan")) for r_ in rs]),
            "load1_end": [r_["load1_end"] for r_ in rs],
            "final_checkpoint_s": median([r_["final_checkpoint_s"] for r_ in rs]),
            "process_wall_s": median([r_["process_wall_s"] for r_ in rs]),
        }
    ratio = summary["ours"]["tokens_per_s"] / summary["hf"]["tokens_per_s"]
    ratio_cpu = summary["ours"]["tokens_per_cpu_s"] / summary["hf"]["tokens_per_cpu_s"]
    ratio_best = summary["ours"]["tokens_per_s_best_step"] / summary["hf"]["tokens_per_s_best_step"]
    # a run is contended when the worker got less than ~90 % of a core for each of its threads (other processes
    # took more than the cores it did not use): its wall times are inflated by waiting, not by its own work
    contended = {i: [c < 0.9 * min(cfg["threads"], os.cpu_count() or 1) for c in summary[i]["own_cpu_cores_per_run"]]
                 for i in IMPLS}
    clean = [k for k in range(cfg["repeats"]) if not contended["ours"][k] and not contended["hf"][k]]
    clean_ratio = None
    if clean:
        po = [t for k in clean for t in runs["ours"][k]["step_times_s"]]
        ph = [t for k in clean for t in runs["hf"][k]["step_times_s"]]
        clean_ratio = median(ph) / median(po)
    pair_ratios = [x / y for x, y in zip(summary["ours"]["tokens_per_s_per_run"],
                                         summary["hf"]["tokens_per_s_per_run"])]
    extra = (cfg["seq_len"] + 1) / cfg["seq_len"]

    result = {
        "config": {k: v for k, v in cfg.items() if k not in ("accelerate_path", "n_rows_given")},
        "data": "packed .npy " + cfg["rows_path"] if cfg["rows_path"] else
                "seeded learnable stream (16 random id patterns repeated in random order)",
        "machine": {"cores": os.cpu_count(), "python": platform.python_version(), "torch": A[0]["torch"],
                    "transformers": B[0]["transformers"], "accelerate": B[0]["accelerate"],
                    "threads": A[0]["threads"], "load_avg_before": load_before, "load_avg_after": load_after,
                    "busy_note": a.busy_note},
        "params": A[0]["params"], "init_hash": A[0]["init_hash"], "init_weights_equal": len(hashes) == 1,
        "order_equal": not any(x["order_mismatches"] for x in B),
        "param_groups_equal": groups_equal, "hf_optimizer": B[0]["optimizer_class"], "hf_optimizer_hyper": hf_hyper,
        "hf_default_decay_differs": B[0]["hf_default_decay_differs"],
        "lr_ours": lr_o, "lr_hf_used": lr_h, "lr_hf_native_cosine_with_min_lr": lr_native,
        "lr_max_abs_diff": lr_max_diff,
        "loss_ours": loss_o, "loss_hf": loss_h, "loss_hf_logged": B[0]["loss_logged"],
        "loss_max_abs_diff": max(abs_d), "loss_max_rel_diff": max(rel_d), "loss_step1_rel_diff": rel_d[0],
        "loss_rerun_max_abs_spread": rerun_spread, "rtol": a.rtol, "losses_equal": losses_equal,
        "grad_norm_max_rel_diff": gn_rel,
        "final_param_max_abs_diff": final_param_max_abs, "final_param_max_rel_diff": final_param_max_rel,
        "tokens_per_step": tokens_per_step, "hf_extra_positions": extra,
        "ratio_ours_over_hf": ratio, "ratio_per_pair": pair_ratios,
        "ratio_ours_over_hf_cpu_time": ratio_cpu, "ratio_ours_over_hf_best_step": ratio_best,
        "contended_runs": contended, "uncontended_pairs": clean, "ratio_ours_over_hf_uncontended_pairs": clean_ratio,
        "ratio_ours_over_hf_per_forward_position": ratio / extra,
        "summary": summary, "problems": problems, "runs": runs,
    }

    # ---- the report
    print()
    print(f"Training loop throughput, {cfg['preset']} preset ({A[0]['params']['total']:,} parameters, vocab "
          f"{cfg['vocab']}), seq_len {cfg['seq_len']}, global batch {cfg['global_batch']} = micro {cfg['micro_batch']} "
          f"x accumulation {cfg['global_batch'] // cfg['micro_batch']}, {steps} steps (warm-up {cfg['warmup']}), "
          f"fp32 CPU, torch threads {A[0]['threads']}, {cfg['repeats']} interleaved repeats, step times after "
          f"{cfg['timing_warmup']} untimed steps.")
    others = median([summary[i]["other_cpu_cores"] for i in IMPLS])
    if a.busy_note is None:
        a.busy_note = (f"the machine was shared: other processes (another long-running job) kept about {others:.1f} "
                       f"of its {os.cpu_count()} cores busy during the timed steps" if others >= 0.5 else
                       "no other process used a notable share of the machine during the timed steps")
    result["machine"]["busy_note"] = a.busy_note
    print(f"Machine: {os.cpu_count()} cores; load average (1 min) {load_before[0]:.2f} before, {load_after[0]:.2f} "
          f"after; other processes used a median {summary['ours']['other_cpu_cores']:.2f} / "
          f"{summary['hf']['other_cpu_cores']:.2f} cores during the timed steps (ours / HF)."
          + (f" Note: {a.busy_note}; each worker ran {A[0]['threads']} torch thread(s)." if a.busy_note else ""))
    print()
    print("| implementation | median step (s) | tokens/s (median step) | tokens/s per run | CPU s / step (median) | "
          "tokens per CPU-s | core share per run | peak RSS (MiB) | peak RSS by the last step (MiB) | "
          "RSS growth (MiB) | final loss |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for impl in IMPLS:
        sm = summary[impl]
        print(f"| {LABEL[impl]} | {sm['median_step_s']:.3f} | {sm['tokens_per_s']:.0f} | "
              f"{', '.join(f'{x:.0f}' for x in sm['tokens_per_s_per_run'])} | {sm['median_step_cpu_s']:.3f} | "
              f"{sm['tokens_per_cpu_s']:.0f} | {', '.join(f'{x:.2f}' for x in sm['own_cpu_cores_per_run'])} | "
              f"{sm['rss_peak_mib']:.0f} | {sm['rss_peak_training_mib']:.0f} | {sm['rss_growth_mib']:.0f} | "
              f"{runs[impl][0]['loss'][-1]:.6f} |")
    print()
    print(f"ours / HF tokens/s: {ratio:.3f} (per interleaved pair: {', '.join(f'{x:.3f}' for x in pair_ratios)}; "
          f"fastest step of each: {ratio_best:.3f}; per CPU-second, which waiting for a busy core does not inflate: "
          f"{ratio_cpu:.3f}; pairs in which neither run was contended (core share >= 0.9): "
          f"{[k + 1 for k in clean]} -> " + (f"{clean_ratio:.3f}" if clean_ratio else "none") + "). "
          f"HF computes {cfg['seq_len'] + 1} positions per row for {cfg['seq_len']} targets (x{extra:.4f} work), so "
          f"per forward position the ratio is {ratio / extra:.3f}. Ours also writes one checkpoint after its last "
          f"step ({summary['ours']['final_checkpoint_s']:.2f} s, outside the step times).")
    print(f"Loss per step: max |ours - HF| {max(abs_d):.3g} (relative {max(rel_d):.3g}; step 1 {rel_d[0]:.3g}; "
          f"tolerance {a.rtol:g}) -> {'EQUAL' if losses_equal else 'DIFFERENT'}; reruns of the same implementation "
          f"differ by at most {rerun_spread:.3g}; grad norm max relative difference {gn_rel:.3g}; final parameters "
          f"max |difference| {final_param_max_abs:.3g}.")
    print(f"Same initial weights: {len(hashes) == 1} ({A[0]['init_hash']}); same micro-batches: "
          f"{result['order_equal']}; same parameter groups: {groups_equal} (HF's default name-based exclusion would "
          f"differ by {B[0]['hf_default_decay_differs']}); learning rates used: max |difference| {lr_max_diff:.3g}.")
    print()
    print("| step | loss ours | loss HF | grad norm ours | grad norm HF | lr ours (= HF used) | "
          "lr HF cosine_with_min_lr (not used) |")
    print("|---|---|---|---|---|---|---|")
    go, gh = A[0]["grad_norm"], B[0]["grad_norm"]
    for k in range(steps):
        print(f"| {k + 1} | {loss_o[k]:.6f} | {loss_h[k]:.6f} | {go[k]:.5g} | {gh[k]:.5g} | {lr_o[k]:.6g} | "
              f"{lr_native[k]:.6g} |")
    if problems:
        print("\nPROBLEMS: " + "; ".join(problems))
    if a.out:
        Path(a.out).parent.mkdir(parents=True, exist_ok=True)
        Path(a.out).write_text(json.dumps(result, indent=1))
        print(f"\nwrote {a.out}")
    if not losses_equal:
        return 1
    return 3 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
