"""Command line of the training loop, the entry point ``torchrun`` starts on every process.

    torchrun --nproc_per_node=2 --rdzv-backend=c10d --rdzv-endpoint=127.0.0.1:29512 \\
        -m models.bilingual_lm.launch --rows rows.npy --preset tiny --settings settings.json \\
        --ckpt-dir ckpt/ --history history.json [--model-out model/]

``--rows``: an ``.npy`` of packed rows [N, seq_len + 1] (read memory-mapped); ``--masks``: the SFT loss mask
[N, seq_len] (optional); ``--settings``: a JSON of :class:`models.bilingual_lm.trainer.TrainSettings` fields. Rank 0
writes the history and, with ``--model-out``, the model (``save_pretrained``, through a temporary folder).
Single-process: the same command with ``python -m``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=Path, required=True)
    ap.add_argument("--masks", type=Path, default=None)
    ap.add_argument("--preset", default="tiny")
    ap.add_argument("--norm", default="pre_ln")
    ap.add_argument("--vocab-size", type=int, default=None)
    ap.add_argument("--init-seed", type=int, default=0)
    ap.add_argument("--settings", type=Path, required=True)
    ap.add_argument("--ckpt-dir", type=Path, required=True)
    ap.add_argument("--history", type=Path, required=True)
    ap.add_argument("--model-out", type=Path, default=None)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=0, help="torch.set_num_threads per process (0 = default)")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    from data.atomic import atomic_directory, atomic_write_json
    from models.bilingual_lm.modeling import build_model
    from models.bilingual_lm.trainer import TrainSettings, train
    from models.common import distributed

    settings = TrainSettings(**json.loads(args.settings.read_text()))
    rows = np.load(args.rows, mmap_mode="r")
    masks = np.load(args.masks, mmap_mode="r") if args.masks else None
    model = build_model(args.preset, norm=args.norm, vocab_size=args.vocab_size, seed=args.init_seed)
    history = train(model, rows, settings, args.ckpt_dir, masks=masks, device=args.device, progress=False)
    if distributed.is_main():
        atomic_write_json(args.history, history)
        if args.model_out is not None:
            with atomic_directory(args.model_out) as tmp:
                model.save_pretrained(tmp)
    distributed.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
