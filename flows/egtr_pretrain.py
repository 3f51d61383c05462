"""``python -m flows.egtr_pretrain``: EGTR stage 0 alone (the Deformable-DETR detector); see :mod:`flows.egtr`."""

from __future__ import annotations

import sys

from flows.egtr import egtr_pretrain_flow, main_pretrain

__all__ = ["egtr_pretrain_flow"]

if __name__ == "__main__":
    sys.exit(main_pretrain())
