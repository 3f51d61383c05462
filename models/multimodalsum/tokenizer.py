"""The BPE tokenizer of a MultimodalSum run: BART's own (``model.pretrained``) or a small byte-level BPE trained here.

Either way it is one ``tokenizers.Tokenizer`` (the fast backend of ``BartTokenizerFast`` for a pretrained BART),
stored as its JSON string inside every checkpoint, so the weights and their vocabulary travel together.

* **Pretrained**: ``AutoTokenizer.from_pretrained(model.pretrained)`` (a local folder, or a hub id when the hub is
  reachable), its ``backend_tokenizer``; the special ids must be BART's (<s> 0, <pad> 1, </s> 2, <unk> 3, <mask>).
* **Trained** [reconstruction: the official code always uses ``facebook/bart-large``'s]: a byte-level BPE
  (``tokenizers``: ByteLevel pre-tokenizer and decoder, the 256-byte initial alphabet, so nothing is out of
  vocabulary) with BART's special tokens first, in BART's order, ``<s>`` = 0, ``<pad>`` = 1, ``</s>`` = 2,
  ``<unk>`` = 3, ``<mask>`` = 4, trained on the texts given: :func:`build_tokenizer` is called with the
  **training reviews only** (``models.multimodalsum.data.ReviewCorpus.tokenizer_texts``: never a reference, never a
  dev/test entity unless the run trains on dev, never the held-out validation entities). Deterministic: the same
  texts in the same order give the same JSON (checked in the tests).

Encoding follows the official ``tokenizer(x, add_prefix_space=True)``: a space is put before the text, which is
byte-level BPE's way of marking the first word like any other.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

SPECIALS = ("<s>", "<pad>", "</s>", "<unk>", "<mask>")
BOS, PAD, EOS, UNK = 0, 1, 2, 3


class ReviewTokenizer:
    """Thin wrapper of a ``tokenizers.Tokenizer`` with the calls the data code needs."""

    def __init__(self, backend):
        self.backend = backend
        ids = {s: backend.token_to_id(s) for s in SPECIALS}
        expected = {"<s>": BOS, "<pad>": PAD, "</s>": EOS, "<unk>": UNK}
        wrong = {s: ids[s] for s in expected if ids[s] != expected[s]}
        if wrong or ids["<mask>"] is None:
            raise ValueError(f"tokenizer: BART special ids expected (<s> 0, <pad> 1, </s> 2, <unk> 3, <mask>); got {ids}")
        self.mask_id = int(ids["<mask>"])

    # ---- construction
    @classmethod
    def train(cls, texts: Iterable[str], vocab_size: int, min_frequency: int = 2) -> "ReviewTokenizer":
        from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

        tok = Tokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=min_frequency, special_tokens=list(SPECIALS),
                                      initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
        texts = [" " + t for t in texts]
        if not texts:
            raise ValueError("tokenizer: no training texts")
        tok.train_from_iterator(texts, trainer)
        return cls(tok)

    @classmethod
    def pretrained(cls, name_or_path: str) -> "ReviewTokenizer":
        from transformers import AutoTokenizer

        hf = AutoTokenizer.from_pretrained(name_or_path)
        backend = getattr(hf, "backend_tokenizer", None)
        if backend is None:
            raise ValueError(f"model.pretrained: {name_or_path} has no fast (tokenizers) tokenizer")
        return cls(backend)

    @classmethod
    def from_str(cls, blob: str) -> "ReviewTokenizer":
        from tokenizers import Tokenizer

        return cls(Tokenizer.from_str(blob))

    def to_str(self) -> str:
        return self.backend.to_str()

    # ---- use
    @property
    def vocab_size(self) -> int:
        return self.backend.get_vocab_size(with_added_tokens=True)

    def pieces(self, text: str) -> list[int]:
        """Sub-token ids of ``text`` without special tokens (prefix space added, as the official calls)."""
        return self.backend.encode(" " + text, add_special_tokens=False).ids

    def __call__(self, text: str) -> list[int]:  # the ``tokenizer(text) -> ids`` of modeling.build_table_batch
        return self.pieces(text)

    def stripped(self, text: str, max_length: int) -> list[int]:
        """The official ``tokenizer(x, max_length=L, truncation, padding='max_length')['input_ids'][1:-1]`` without
        the padding: ``<s> t.. </s>`` truncated to L, first and last position dropped, i.e. ``(t.. + </s>)[:L - 2]``
        (a review of L - 2 tokens or more loses its ``</s>``, as in the official code)."""
        return (self.pieces(text) + [EOS])[: max_length - 2]

    def decode(self, ids: Sequence[int]) -> str:
        """Text of ``ids`` without special tokens (official ``skip_special_tokens=True``, no clean-up)."""
        return self.backend.decode([int(i) for i in ids], skip_special_tokens=True).strip()


def build_tokenizer(pretrained: str | None, texts: Sequence[str], vocab_size: int, min_frequency: int) -> ReviewTokenizer:
    return ReviewTokenizer.pretrained(pretrained) if pretrained else ReviewTokenizer.train(texts, vocab_size, min_frequency)
