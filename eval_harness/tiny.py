"""A tiny randomly initialised causal LM + a byte-level BPE tokenizer trained on given text (tests, benchmarks).

The tokenizer adds BOS (``<s>``) in front of every encoding (a Llama-style post-processor) and appends nothing, so
the tests exercise lm-eval's BOS handling (``tok_encode`` default special tokens, the BOS-prefixed rolling windows).
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path


def build_tiny_lm(out_dir: str | Path, texts: Iterable[str], *, vocab_size: int = 400,
                  max_position_embeddings: int = 128, hidden_size: int = 16, num_layers: int = 2,
                  initializer_range: float = 0.5, seed: int = 0) -> Path:
    """Train the tokenizer on ``texts``, build a Llama with random weights, save both to ``out_dir``."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<s>", "</s>", "<pad>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(list(texts), trainer=trainer)
    bos = tok.token_to_id("<s>")
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A $B", special_tokens=[("<s>", bos)])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>")
    fast.save_pretrained(str(out_dir))

    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=tok.get_vocab_size(), hidden_size=hidden_size, intermediate_size=2 * hidden_size,
                      num_hidden_layers=num_layers, num_attention_heads=2, num_key_value_heads=1,
                      max_position_embeddings=max_position_embeddings, initializer_range=initializer_range,
                      bos_token_id=bos, eos_token_id=tok.token_to_id("</s>"), pad_token_id=tok.token_to_id("<pad>"),
                      tie_word_embeddings=False)
    model = LlamaForCausalLM(cfg).eval()
    model.save_pretrained(str(out_dir))
    return out_dir
