"""Test-only tokenizer references: Hugging Face `tokenizers` (Rust, Oniguruma regex) and
`tiktoken` (Rust, fancy-regex), each built from the same vocab.json + merges.txt as minigpt."""

from __future__ import annotations

import json
from pathlib import Path

import tiktoken
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from tokenizers.implementations import ByteLevelBPETokenizer

from minigpt.tokenizer import EOT, byte_alphabet

GPT2_PATTERN = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""


def hf_tokenizer(folder: Path) -> Tokenizer:
    """GPT-2's pipeline as transformers' GPT2TokenizerFast sets it up: byte-level BPE, the GPT-2
    regex pre-tokenizer without a prefix space, <|endoftext|> as the one special token."""
    tok = Tokenizer(models.BPE.from_file(str(folder / "vocab.json"), str(folder / "merges.txt")))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens([EOT])
    return tok


def hf_pre_tokenize(text: str) -> list[str]:
    """The words HF's GPT-2 pre-tokenizer cuts `text` into, spelled back as text."""
    unspell = {ch: b for b, ch in enumerate(byte_alphabet())}
    pieces = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True).pre_tokenize_str(text)
    return [bytes(unspell[c] for c in piece).decode("utf-8") for piece, _ in pieces]


def tiktoken_encoding(folder: Path) -> tiktoken.Encoding:
    """tiktoken's gpt2 encoding rebuilt from the files (tiktoken ranks are token ids)."""
    unspell = {ch: b for b, ch in enumerate(byte_alphabet())}
    vocab = json.loads((folder / "vocab.json").read_text(encoding="utf-8"))
    ranks = {bytes(unspell[c] for c in token): i for token, i in vocab.items() if token != EOT}
    return tiktoken.Encoding("gpt2-from-files", pat_str=GPT2_PATTERN, mergeable_ranks=ranks,
                             special_tokens={EOT: vocab[EOT]})


def train_byte_level_bpe(texts: list[str], folder: Path, vocab_size: int) -> Path:
    """A small byte-level BPE trained by `tokenizers`, saved in GPT-2's file layout."""
    trainer = ByteLevelBPETokenizer()  # GPT-2's pre-tokenizer, no prefix space
    trainer.train_from_iterator(texts, vocab_size=vocab_size, min_frequency=2, special_tokens=[EOT],
                                show_progress=False)
    folder.mkdir(parents=True, exist_ok=True)
    trainer.save_model(str(folder))
    return folder
