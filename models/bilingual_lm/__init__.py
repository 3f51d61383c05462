"""Bilingual (Korean-English) decoder LM in the style of HyperCLOVA X: the morpheme-aware byte-level BPE (`tokenizer`)."""
