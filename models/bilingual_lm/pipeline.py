"""The bilingual LM's declaration for the generic flow (``python -m flows.model bilingual_lm``): two training stages,
``pretrain`` (packed corpus rows, FIM, next-token loss) -> ``sft`` (chat-template instruction mix, loss on assistant
turns + unlikelihood), each resumable from its own step checkpoints; then held-out bits per byte (Korean held-out
documents, WikiText-2 test) against the unigram baseline of the same tokenizer, a few generations, and the registry:
model ``bilingual_lm`` logged with MLflow's transformers flavour (a text-generation pipeline), gate =
``heldout_bpb_mean`` (lower is better). The run's ``kind`` tag tells the base model (``sft.enabled: false``, aliases
``champion_base``) from the SFT model (aliases ``champion`` / ``challenger``).

The tokenizer and the packed rows come from the DVC data stages before it (``train_tokenizer@<variant>``,
``pack_lm@<variant>``, :mod:`models.bilingual_lm.prepare`). The pretraining result is also written to
``outputs/bilingual_lm/<run>/pretrain-<tokenizer>`` (model + fingerprint), the base stage's DVC output: a later SFT run (another
DVC stage, another session) reuses it when the fingerprint matches instead of pretraining again.

    python -m flows.model bilingual_lm --variant base     # pretrain only, registered as the base model
    python -m flows.model bilingual_lm                    # pretrain (or reuse) + SFT
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from models.bilingual_lm.config import BilingualLMConfig
from models.common import distributed, tracking
from models.common.config import fingerprint
from models.common.contract import Evaluation, ModelSpec, RunIdentity, Stage, dvc_address

VARIANTS = {"base": {"sft.enabled": False}}


def kind(cfg: BilingualLMConfig) -> str:
    return "sft" if cfg.sft.enabled else "base"


def identity(cfg: BilingualLMConfig) -> RunIdentity:
    from models.bilingual_lm import report

    r = cfg.registry
    k = kind(cfg)
    return RunIdentity(
        experiment=r.experiment, run_name=f"bilingual_lm-{report.name(cfg)}",
        dvc_stage=dvc_address("bilingual_lm", "train_bilingual_lm" if k == "sft"
                              else f"pretrain_bilingual_lm@{cfg.tokenizer.variant}"),
        registered_model=r.model_name,
        gate_metric=r.gate_metric, gate_mode=r.gate_mode, scope=None if k == "sft" else "base",
        data_paths=(cfg.packed_dir(), cfg.tokenizer_dir()),
        tags={"model": "bilingual_lm", "run": cfg.run, "kind": k, "tokenizer": cfg.tokenizer.variant,
              "preset": cfg.model.preset, "norm": cfg.model.norm, "reproducible": "true"})


def data_targets(cfg: BilingualLMConfig) -> tuple[str, ...]:
    v = cfg.tokenizer.variant
    return (f"{dvc_address('bilingual_lm', 'train_tokenizer')}@{v}", f"{dvc_address('bilingual_lm', 'pack_lm')}@{v}")


# ------------------------------------------------------------------------------------------------------ helpers
def load_tokenizer(cfg: BilingualLMConfig):
    from models.bilingual_lm.tokenizer import load_tokenizer as load

    d = Path(cfg.tokenizer_dir())
    if not (d / "tokenizer.json").is_file():
        raise FileNotFoundError(f"{d}: no tokenizer (run the DVC stage train_tokenizer@{cfg.tokenizer.variant})")
    return load(d, strict=True)


def packed(cfg: BilingualLMConfig) -> dict:
    d = Path(cfg.packed_dir())
    if not (d / "report.json").is_file():
        raise FileNotFoundError(f"{d}: no packed data (run the DVC stage pack_lm@{cfg.tokenizer.variant})")
    rep = json.loads((d / "report.json").read_text())
    if rep["seq_len"] != cfg.pretrain.seq_len:
        raise ValueError(f"{d}/report.json: packed for seq_len {rep['seq_len']}, pretrain.seq_len is "
                         f"{cfg.pretrain.seq_len}; re-run pack_lm@{cfg.tokenizer.variant}")
    return {"dir": d, "report": rep, "rows": np.load(d / "rows.npy", mmap_mode="r"),
            "token_bytes": np.load(d / "token_bytes.npy"), "unigram": np.load(d / "unigram_counts.npy"),
            "heldout": {k: np.load(d / f"heldout_{k}.npy") for k in ("ko", "en")}}


def settings_of(loop, extra: dict):
    from models.bilingual_lm.trainer import TrainSettings

    keep = ("seq_len", "global_batch", "micro_batch", "max_steps", "lr", "min_lr_ratio", "warmup_steps",
            "weight_decay", "beta1", "beta2", "clip", "dtype", "checkpoint_every", "eval_every", "log_every",
            "peak_flops")
    return TrainSettings(**{k: getattr(loop, k) for k in keep}, seed=loop.order_seed, extra=extra)


def device_of(loop) -> str:
    import torch

    return ("cuda" if torch.cuda.is_available() else "cpu") if loop.device == "auto" else loop.device


def heldout_eval(cfg: BilingualLMConfig, data: dict, device: str):
    from models.bilingual_lm.trainer import bits_per_byte

    def run(model, step: int | None = None) -> dict:
        out = {}
        for lang in ("ko", "en"):
            r = bits_per_byte(model, data["heldout"][lang], data["token_bytes"], cfg.pretrain.seq_len,
                              batch=cfg.eval.batch, device=device)
            out[f"heldout_bpb_{lang}"] = r["bits_per_byte"]
        out["heldout_bpb_mean"] = (out["heldout_bpb_ko"] + out["heldout_bpb_en"]) / 2
        return out
    return run


def _log_step(run_id: str, prefix: str):
    def log(rec: dict, step: int) -> None:
        tracking.log_metrics(run_id, {f"{prefix}{k}": float(v) for k, v in rec.items()
                                      if k != "step" and isinstance(v, (int, float))}, step=step)
    return log


def _save_model(model, tok, out: Path, meta: dict) -> Path:
    from data.atomic import atomic_directory

    with atomic_directory(out) as tmp:
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        (tmp / "lm_stage.json").write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
    return out


# ------------------------------------------------------------------------------------------------------ stages
def pretrain(cfg: BilingualLMConfig, run_id: str, done: dict) -> dict:
    import torch

    from models.bilingual_lm.modeling import build_model, check_vocabulary
    from models.bilingual_lm.trainer import train

    if cfg.pretrain.torch_threads:
        torch.set_num_threads(cfg.pretrain.torch_threads)
    tok = load_tokenizer(cfg)
    data = packed(cfg)
    fp = fingerprint({"model": cfg.model, "pretrain": cfg.pretrain, "tokenizer": tok.metadata["vocab_sha256"],
                      "rows": data["report"]["packing"], "mixture": data["report"]["mixture"]["tokens"]})
    final = Path(cfg.pretrain_dir())
    meta_path = final / "lm_stage.json"
    if meta_path.is_file() and json.loads(meta_path.read_text()).get("fingerprint") == fp:
        meta = json.loads(meta_path.read_text())
        tracking.client().set_tag(run_id, "pretrain.reused", str(final))
        return {"weights": str(final / "model.safetensors"), "model_dir": str(final), "fingerprint": fp,
                "history": meta["history"], "reused": True}
    model = build_model(cfg.model.preset, norm=cfg.model.norm, tokenizer=tok, seed=cfg.pretrain.init_seed,
                        rope_theta=cfg.model.rope_theta)
    check_vocabulary(model, tok, cfg.tokenizer_dir())
    device = device_of(cfg.pretrain)
    history = train(model, np.asarray(data["rows"]), settings_of(cfg.pretrain, {"fingerprint": fp}),
                    Path(cfg.pretrain.checkpoint_dir) / f"pretrain-{fp}", eval_fn=heldout_eval(cfg, data, device),
                    log_fn=_log_step(run_id, "pretrain."), device=device)
    if distributed.is_main():  # under torchrun rank 0 writes; the others wait for the folder
        _save_model(model, tok, final, {"fingerprint": fp, "history": history, "stage": "pretrain"})
    distributed.barrier()
    tracking.client().set_tag(run_id, "pretrain.fingerprint", fp)
    return {"weights": str(final / "model.safetensors"), "model_dir": str(final), "fingerprint": fp,
            "history": history, "reused": False}


def sft(cfg: BilingualLMConfig, run_id: str, done: dict) -> dict:
    """Instruction tuning of the pretrained model; ``sft.enabled: false`` passes the base model through."""
    if not cfg.sft.enabled:
        return {**done["pretrain"], "skipped": True}
    import functools

    import torch
    from transformers import AutoModelForCausalLM

    from models.bilingual_lm.sft import build_sft_mix, sft_loss_sum, sft_rows
    from models.bilingual_lm.trainer import train

    if cfg.sft.torch_threads:
        torch.set_num_threads(cfg.sft.torch_threads)
    tok = load_tokenizer(cfg)
    mix_report: dict = {}
    examples = build_sft_mix(Path(cfg.data.raw_dir), seed=cfg.sft.init_seed,
                             max_per_source=cfg.sft.max_per_source or None, include_refusals=cfg.sft.include_refusals,
                             system_rate=cfg.sft.system_rate, decontaminate=cfg.sft.decontaminate, report=mix_report)
    rows, masks, rep = sft_rows(tok, examples, cfg.sft.seq_len)
    rep = {"sources": mix_report["per_source"], "rows": rep["per_source"], "total": rep["total"],
           "decontaminated_against": mix_report.get("decontaminated_against")}
    fp = fingerprint({"sft": cfg.sft, "upstream": done["pretrain"]["fingerprint"], "rows": int(rows.shape[0])})
    model = AutoModelForCausalLM.from_pretrained(done["pretrain"]["model_dir"])
    device = device_of(cfg.sft)
    history = train(model, rows, settings_of(cfg.sft, {"fingerprint": fp}), Path(cfg.sft.checkpoint_dir) / f"sft-{fp}",
                    masks=masks, loss_fn=functools.partial(sft_loss_sum, unlikelihood=cfg.sft.unlikelihood),
                    log_fn=_log_step(run_id, "sft."), device=device)
    out = Path(cfg.sft.checkpoint_dir) / f"sft-{fp}" / "final"
    if distributed.is_main():
        _save_model(model, tok, out, {"fingerprint": fp, "stage": "sft", "mix": rep})
    distributed.barrier()
    tracking.log_json(run_id, rep, "sft/mix_report.json")
    return {"weights": str(out / "model.safetensors"), "model_dir": str(out), "fingerprint": fp, "history": history,
            "mix": rep}


# ------------------------------------------------------------------------------------------------------ evaluation
def generations(cfg: BilingualLMConfig, model, tok, chat: bool) -> list[dict]:
    import torch

    model.eval()
    out = []
    prompts = cfg.eval.chats if chat else cfg.eval.prompts
    for p in prompts:
        ids = (tok.encode(tok.apply_chat_template([{"role": "user", "content": p}], add_generation_prompt=True),
                          split_special_tokens=False) if chat else tok.encode(p))
        with torch.no_grad():
            gen = model.generate(torch.tensor([ids], device=model.device), max_new_tokens=cfg.eval.max_new_tokens, do_sample=False,
                                 eos_token_id=[tok.eos_token_id, 9], pad_token_id=tok.pad_token_id)
        out.append({"prompt": p, "completion": tok.decode(gen[0, len(ids):].tolist(), skip_special_tokens=True)})
    return out


def _mix_summary(mix: dict) -> dict:
    return {s: {"examples": v["examples"], "dropped_contaminated": v["dropped_contaminated"],
                "rows": mix["rows"].get(s, {}).get("rows", 0)} for s, v in mix["sources"].items()}


def evaluate(cfg: BilingualLMConfig, run_id: str, done: dict) -> Evaluation:
    from transformers import AutoModelForCausalLM

    from models.bilingual_lm import report
    from models.bilingual_lm.trainer import unigram_bits_per_byte

    data = packed(cfg)
    device = device_of(cfg.pretrain)
    k = kind(cfg)
    weights = done["sft"]["model_dir"]
    model = AutoModelForCausalLM.from_pretrained(weights)
    scores = heldout_eval(cfg, data, device)(model.to(device).eval())
    unigram = {f"unigram_bpb_{lang}": unigram_bits_per_byte(data["unigram"], data["heldout"][lang],
                                                            data["token_bytes"], cfg.pretrain.seq_len)
               for lang in ("ko", "en")}
    hist = done["pretrain"]["history"]
    result = {"run_id": run_id, "run": cfg.run, "kind": k, "tokenizer": cfg.tokenizer.variant,
              "preset": cfg.model.preset, "norm": cfg.model.norm, "reproducible": True,
              **scores, **unigram,
              "pretrain": {"steps": len(hist), "tokens": hist[-1]["tokens"] if hist else 0,
                           "final_loss": hist[-1]["loss"] if hist else None},
              "generations": generations(cfg, model, load_tokenizer(cfg), chat=k == "sft")}
    if k == "sft":
        result["sft"] = {"steps": len(done["sft"]["history"]), "final_loss": done["sft"]["history"][-1]["loss"],
                         "mix": _mix_summary(done["sft"]["mix"])}
    tracking.log_metrics(run_id, {**scores, **unigram})
    report.write(cfg, run_id, result, done)
    return Evaluation(result, float(scores["heldout_bpb_mean"]))


def example_prompt(cfg: BilingualLMConfig) -> str:
    return cfg.eval.chats[0] if cfg.sft.enabled else cfg.eval.prompts[0]


def log_model(cfg: BilingualLMConfig, run_id: str, done: dict) -> str:
    """The final model + tokenizer with MLflow's transformers flavour (task text-generation)."""
    import mlflow
    import torch
    import transformers
    from transformers import AutoModelForCausalLM, pipeline

    tok = load_tokenizer(cfg)
    model = AutoModelForCausalLM.from_pretrained(done["sft"]["model_dir"])
    pipe = pipeline("text-generation", model=model, tokenizer=tok.hf, device="cpu")
    import tempfile

    repo_root = Path(__file__).resolve().parents[2]
    with tempfile.TemporaryDirectory() as tmp, tracking.signals_deferred(), mlflow.start_run(run_id=run_id):
        # the project's code travels with the model: load_tokenizer (the morpheme split) for exact training ids
        code = [str(tracking.python_package_copy(repo_root / p, tmp)) for p in ("models", "data")]
        # task llm/v1/chat: `mlflow models serve` takes OpenAI-style {"messages": [...]} requests, rendered with
        # the tokenizer's chat template (role tokens), and answers in the chat-completion format
        info = mlflow.transformers.log_model(
            transformers_model=pipe, name="model", task="llm/v1/chat",
            input_example={"messages": [{"role": "user", "content": example_prompt(cfg)}]}, code_paths=code,
            pip_requirements=[f"torch=={torch.__version__.split('+')[0]}", f"transformers=={transformers.__version__}",
                              f"mlflow=={mlflow.__version__}", "kiwipiepy==0.24.1", "kiwipiepy-model==0.24.0"],
            model_config={"max_new_tokens": cfg.eval.max_new_tokens, "do_sample": False},
        )
    return info.model_uri


def tiny(root: Path) -> dict:
    from models.bilingual_lm.tiny import tiny as make

    return make(root)


MODEL = ModelSpec.of(
    __name__,
    name="bilingual_lm",
    description="Bilingual Korean/English/code decoder LM in the HyperCLOVA X style (transformers' HyperCLOVAX): "
                "pretrain (FIM) -> SFT (unlikelihood) -> held-out bits per byte -> register.",
    config=BilingualLMConfig,
    stages=(Stage("pretrain", pretrain, distributed=True), Stage("sft", sft, distributed=True)),
    variants=VARIANTS,
    data_targets=data_targets,
    example="pretrain.max_steps=100",
)
