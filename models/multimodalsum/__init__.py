"""MultimodalSum (Im et al., ACL 2021): self-supervised multimodal opinion summarization.

The model (`modeling`), its BPE (`tokenizer`), review-table batches (`data`), the five training steps (`recipe`),
evaluation (`evaluate`: dev beam search, test ROUGE), the served summarizer (`pyfunc`) and its declaration for the
generic flow (`pipeline`, catalogued in `models/catalog.py`). `rouge` holds the official ROUGE protocol (spec §5:
PlanSum preprocessing + py-rouge 1.1, averaged over references) and a secondary Google `rouge-score` column;
`extractive` holds the random / clustroid / LexRank / oracle review selectors scored with it.
"""
