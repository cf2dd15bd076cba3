"""SentencePiece-style BPE (Llama 2's, Gemma's), in pure Python (standard library only), as
Hugging Face tokenizers runs it from a tokenizer.json or transformers builds it from a GGUF file.

    text  --added tokens matched whole-->  pieces  --" " -> "▁", maybe a "▁" prefix-->  one word each
          --each character a symbol, or its UTF-8 bytes as <0xXX> tokens (byte fallback)-->
          --BPE merges, lowest rank first-->  tokens  -->  ids

Unlike GPT-2's byte-level BPE (tokenizer.py) there is no pre-tokenizer: a whole piece of text
between added tokens (a paragraph: Gemma's newlines are added tokens) is one word. bpe() merges
with a heap, so a long word costs n log n, not n^2. Decoding turns "▁" back into spaces and each
<0xXX> token into its byte.

Where merges are missing (GGUF files of the "llama" tokenizer model store scores, not merges),
they are derived as transformers derives them: every split of a token into two tokens is a
merge, ordered by the token's priority (its score; for Gemma, its place in the file), then by the
left piece's length, longest first.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Iterable

from .textfiles import describe
from .tokenizer import Tokenizer, TokenizerError, _merge, bpe, check_vocabulary_ids, gguf_named, gguf_tokens

SPACE = "▁"                                  # U+2581, SentencePiece's space
BYTE_TOKEN = re.compile(r"<0x([0-9A-F]{2})>")
# When a "▁" is put before a piece of text: never; before the text's first piece, unless it
# starts with a space (Metaspace "first", Llama 2 today); before every piece that does not
# (Metaspace "always"); before every piece (a Prepend normalizer: Llama 2's older tokenizer.json).
PREFIXES = ("never", "first", "always", "prepend")
GEMMA_ARCHITECTURES = ("gemma", "gemma2", "gemma3")


class SentencePieceTokenizer(Tokenizer):
    """`vocab` maps tokens as the model spells them ("▁the", "<0x0A>") to ids 0..n-1, `merges`
    lists symbol pairs, first merged first; special tokens are written as themselves and never
    come from text unless allowed (as in Tokenizer.encode); added tokens are matched whole."""

    def __init__(self, vocab: dict[str, int], merges: Iterable[tuple[str, str]], *, bos_token: str | None,
                 eos_token: str | None, unk_token: str | None = None, special: Iterable[str] = (),
                 added: Iterable[str] = (), prefix: str = "never", strip_decoded_prefix: bool = False,
                 _source: str = "vocab", _where=None):
        if prefix not in PREFIXES:
            raise TokenizerError(f"{_source}: prefix {prefix!r}: expected one of {', '.join(PREFIXES)}")
        check_vocabulary_ids(vocab, _source)
        named = {"bos_token": bos_token, "eos_token": eos_token, "unk_token": unk_token}
        specials = list(dict.fromkeys([t for t in named.values() if t is not None] + list(special)))
        for token in specials + list(added):
            if token not in vocab:
                roles = [role for role, t in named.items() if t == token]
                raise TokenizerError(f"{_source}: no {token!r} token ({' and '.join(roles) or 'a special or added token'})")
        where = _where or (lambda i: f"merges[{i}]")
        self.ranks: dict[tuple[str, str], int] = {}
        for rank, (a, b) in enumerate(merges):
            for token in (a, b, a + b):
                if token not in vocab:
                    raise TokenizerError(f"{where(rank)}: {token!r} is not in the vocabulary")
            self.ranks.setdefault((a, b), rank)          # a repeat would never apply: the first wins
        self.vocab = dict(vocab)
        self.pattern, self.ignore_merges, self.prefix = "sentencepiece", False, prefix
        self.strip_decoded_prefix = strip_decoded_prefix
        self.special_tokens = {t: vocab[t] for t in specials}
        self.bos_token, self.eos_token, self.unk_token = bos_token, eos_token, unk_token
        added = [t for t in dict.fromkeys(added) if t and t not in self.special_tokens]
        self.added_tokens = {t: vocab[t] for t in sorted(added, key=len, reverse=True)}   # longest first
        self._added = (re.compile("(" + "|".join(re.escape(t) for t in self.added_tokens) + ")")
                       if self.added_tokens else None)
        self._byte_symbols = [f"<0x{b:02X}>" if f"<0x{b:02X}>" in vocab else None for b in range(256)]
        self.missing_bytes = bytes(b for b in range(256) if self._byte_symbols[b] is None)
        self._token_bytes = [b""] * len(vocab)
        for token, i in vocab.items():
            byte = BYTE_TOKEN.fullmatch(token)
            if token in self.special_tokens or token in self.added_tokens:
                self._token_bytes[i] = token.encode()
            elif byte:
                self._token_bytes[i] = bytes([int(byte.group(1), 16)])
            else:
                self._token_bytes[i] = token.replace(SPACE, " ").encode()
        self._cache: dict[str, list[int]] = {}

    def __repr__(self):
        return (f"SentencePieceTokenizer(vocab_size={self.vocab_size}, merges={len(self.ranks)}, "
                f"prefix={self.prefix!r})")

    # --- encoding ----------------------------------------------------------------------------

    def pre_tokenize(self, text: str) -> list[str]:
        """The one word a piece of text is (no pre-split), spaces as "▁", with the prefix the
        tokenizer puts before the text's first piece."""
        return [self._word(text, at_start=True)] if text else []

    def _word(self, text: str, at_start: bool) -> str:
        word = text.replace(" ", SPACE)
        starts_spaced = word.startswith(SPACE)
        if self.prefix == "prepend" or (not starts_spaced and (self.prefix == "always" or
                                                               (self.prefix == "first" and at_start))):
            word = SPACE + word
        return word

    def _encode_words(self, text: str, at_start: bool = True) -> list[int]:
        if not text:
            return []
        word = self._word(text, at_start)
        ids = self._cache.get(word)
        if ids is None:
            ids = [self.vocab[token] for token in bpe(self._symbols(word, text), self.ranks)]
            if len(word) <= 256:                          # paragraphs rarely repeat; words and prompts do
                if len(self._cache) >= self.CACHE_SIZE:
                    self._cache.clear()
                self._cache[word] = ids
        return ids

    def _symbols(self, word: str, text: str) -> list[str]:
        """Each character of the word that is a token, else its UTF-8 bytes' <0xXX> tokens, else
        the unknown token (one for a run of such characters, as tokenizers fuses them)."""
        vocab, out = self.vocab, []
        for ch in word:
            if ch in vocab:
                out.append(ch)
                continue
            try:
                utf8 = ch.encode("utf-8")
            except UnicodeEncodeError:
                at = text.index(ch)
                raise ValueError(f"text has a lone surrogate U+{ord(ch):04X} at index {at}, which has no UTF-8 "
                                 "encoding") from None
            symbols = [self._byte_symbols[b] for b in utf8]
            if None not in symbols:
                out.extend(symbols)
            elif self.unk_token is not None:
                if not out or out[-1] != self.unk_token:
                    out.append(self.unk_token)
            else:
                raise ValueError(f"character {ch!r} of the text has no token, no byte tokens and this vocabulary "
                                 "has no unknown token")
        return out

    # --- decoding ----------------------------------------------------------------------------

    def decode(self, ids: Iterable[int], errors: str = "replace") -> str:
        text = super().decode(ids, errors)
        return text[1:] if self.strip_decoded_prefix and text.startswith(" ") else text

    # --- files -------------------------------------------------------------------------------

    @classmethod
    def from_gguf(cls, file) -> SentencePieceTokenizer:
        """A GGUF file's `tokenizer.ggml.model` "llama" vocabulary, as transformers builds it:
        tokens (ids in order), merges (stored, or derived: by score, or for Gemma by place in
        the file), token types (control, unknown and unused tokens special; user-defined ones
        matched whole), BOS/EOS/unknown ids, add_bos_token (default true), and the "▁" before
        the text that add_space_prefix asks for (default true, as llama.cpp; Gemma's files say false).
        Gemma's files store tokens of 2-31 spaces as spaces; they are respelled with "▁", as
        transformers does, so that the merges reach them."""
        where = str(file.path)
        tokens, types = gguf_tokens(file)
        architecture = file.string("general.architecture", default="")
        gemma = architecture in GEMMA_ARCHITECTURES
        spelled = [SPACE * len(t) if gemma and " " in t and not t.strip() else t for t in tokens]
        vocab: dict[str, int] = {}
        for i, token in enumerate(spelled):
            if vocab.setdefault(token, i) != i:
                raise TokenizerError(f"{where}: tokenizer.ggml.tokens[{i}] {token!r} repeats token {vocab[token]}")
        stored = file.strings("tokenizer.ggml.merges", default=None)
        if stored is not None:
            merges = [_merge(m, f"{where}: tokenizer.ggml.merges[{i}]") for i, m in enumerate(stored)]
        elif gemma:
            merges = derived_merges(spelled, [-i for i in range(len(spelled))])
        else:
            scores = file.numbers("tokenizer.ggml.scores", default=None)
            if scores is None or len(scores) != len(tokens):
                raise TokenizerError(f"{where}: no tokenizer.ggml.merges, and tokenizer.ggml.scores "
                                     f"{'is missing' if scores is None else f'has {len(scores)} entries'}: "
                                     f"the merges of {len(tokens)} tokens come from one or the other")
            merges = derived_merges(spelled, scores.tolist())
        special = [t for t, kind in zip(spelled, types) if kind in (2, 3, 5)]     # unknown, control, unused
        added = [t for t, s, kind in zip(tokens, spelled, types) if kind == 4 and t == s]   # user-defined
        named = gguf_named(file, spelled, ("bos_token", "eos_token", "unk_token"))
        prefix = file.boolean("tokenizer.ggml.add_space_prefix", default=True)
        # transformers' LlamaTokenizer puts the prefix before the text only (Metaspace "first")
        tokenizer = cls(vocab, merges, special=special, added=added, prefix="first" if prefix else "never",
                        strip_decoded_prefix=prefix, _source=where,
                        _where=lambda i: f"{where}: merge {i} (derived from the vocabulary)", **named)
        tokenizer.add_bos_token = file.boolean("tokenizer.ggml.add_bos_token", default=True)
        return tokenizer

    @classmethod
    def from_tokenizer_json(cls, path: Path, raw: dict, special: dict) -> SentencePieceTokenizer:
        """tokenizer.json of a BPE with byte_fallback and "▁" for spaces: Gemma's (normalizer
        Replace " " -> "▁", no pre-split), Llama 2's (Metaspace with prepend_scheme "first", a
        Strip decoder) and its older form (normalizer Prepend "▁" + Replace). Anything else that
        would change the tokens is refused by name."""
        model = raw["model"]
        vocab = dict(model["vocab"])
        added = raw.get("added_tokens") or []
        for i, t in enumerate(added):
            if not (isinstance(t, dict) and isinstance(t.get("content"), str) and isinstance(t.get("id"), int)):
                raise TokenizerError(f"{path}: added_tokens[{i}]: {json.dumps(t)[:80]} (expected an object with a string "
                                     "content and an integer id)")
            vocab.setdefault(t["content"], t["id"])
        merges = model.get("merges") or []
        if not isinstance(merges, list):
            raise TokenizerError(f"{path}: model.merges: {describe(merges)} (expected an array)")
        merges = [_merge(m, f"{path}: model.merges[{i}]") for i, m in enumerate(merges)]
        prefix = _prefix_of(raw.get("normalizer"), raw.get("pre_tokenizer"), path)
        strip = _strips_prefix(raw.get("decoder"), path)
        specials = [t["content"] for t in added if t.get("special")]
        plain = [t["content"] for t in added if not t.get("special")]
        named = {"bos_token": special.get("bos_token"), "eos_token": special.get("eos_token"),
                 "unk_token": model.get("unk_token") if model.get("unk_token") in vocab else None}
        return cls(vocab, merges, special=list(special.get("special", [])) + specials, added=plain, prefix=prefix,
                   strip_decoded_prefix=strip, _source=str(path), _where=lambda i: f"{path}: model.merges[{i}]", **named)


def derived_merges(tokens: list[str], priority: list[float]) -> list[tuple[str, str]]:
    """Every split of a token into two tokens, as a merge: transformers' generate_merges. Ordered
    by the token's priority (highest first), then the left piece's length (longest first), the
    file's order among equals."""
    index = {t: i for i, t in enumerate(tokens)}
    found = []
    for t, p in zip(tokens, priority):
        cuts = [(t[:c], t[c:]) for c in range(1, len(t)) if t[:c] in index and t[c:] in index]
        cuts.sort(key=lambda ab: (index[ab[0]], index[ab[1]]))
        found += [(-p, -len(a), -len(b), a, b) for a, b in cuts]
    found.sort(key=lambda e: e[:3])                  # stable: equals keep the file's order
    return [(a, b) for *_, a, b in found]


def _steps(node) -> list[dict]:
    if node is None:
        return []
    if not isinstance(node, dict):
        raise TokenizerError(f"{describe(node)} where a normalizer, pre-tokenizer or decoder object was expected")
    inner = node.get("normalizers") or node.get("pretokenizers") or node.get("decoders")
    return [s for s in inner if isinstance(s, dict)] if node.get("type") == "Sequence" and isinstance(inner, list) else [node]


def _is_space_replace(step: dict) -> bool:
    pattern = step.get("pattern")
    return (step.get("type") == "Replace" and step.get("content") == SPACE
            and (pattern == " " or (isinstance(pattern, dict) and pattern.get("String") == " ")))


def _prefix_of(normalizer, pre_tokenizer, path: Path) -> str:
    """The prefix scheme (PREFIXES) a tokenizer.json's normalizer and pre-tokenizer describe."""
    norm = [(s.get("type"), s) for s in _steps(normalizer)]
    pre = [(s.get("type"), s) for s in _steps(pre_tokenizer)]
    prefix = None
    if len(norm) == 1 and _is_space_replace(norm[0][1]):
        prefix = "never"
    elif len(norm) == 2 and norm[0][0] == "Prepend" and norm[0][1].get("prepend") == SPACE and _is_space_replace(norm[1][1]):
        prefix = "prepend"
    elif not norm and len(pre) == 1 and pre[0][0] == "Metaspace" and pre[0][1].get("replacement") == SPACE \
            and not pre[0][1].get("split", True):
        scheme = pre[0][1].get("prepend_scheme", "always" if pre[0][1].get("add_prefix_space", True) else "never")
        if scheme in ("always", "first", "never"):
            return scheme
    if prefix is not None:
        # after the normalizer no text holds " ": Gemma's Split on " " never cuts
        if not pre or (len(pre) == 1 and pre[0][0] == "Split" and _split_on_space(pre[0][1])):
            return prefix
    raise TokenizerError(f"{path}: normalizer {[k for k, _ in norm]} with pre-tokenizer {[k for k, _ in pre]} is not a "
                         "SentencePiece-style BPE minigpt knows (Gemma's Replace \" \" -> \"▁\"; Llama 2's Metaspace "
                         "without split, or Prepend \"▁\" + Replace)")


def _split_on_space(step: dict) -> bool:
    pattern = step.get("pattern")
    return pattern == {"String": " "} or pattern == " "


def _strips_prefix(decoder, path: Path) -> bool:
    """Whether the decoder ends by stripping one leading space (Llama 2's Strip)."""
    steps = _steps(decoder)
    last = steps[-1] if steps else {}
    return last.get("type") == "Strip" and last.get("content") == " " and last.get("start") == 1
