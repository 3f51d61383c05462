"""Bilingual (Korean/English/code) decoder LM in the HyperCLOVA X style: tokenizer, pretraining, SFT (see README.md)."""
