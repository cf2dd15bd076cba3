"""GPT-2's byte-level BPE tokenizer, in pure Python (standard library only); at the end of the file,
the SentencePiece-style BPE of Llama 2 and Gemma, a subclass that shares its special tokens,
merges and decoding.

    text  --pre-tokenize-->  words  --UTF-8, spelled in GPT-2's byte alphabet-->  symbols
          --BPE merges, lowest rank first-->  tokens  --vocab.json-->  ids

1. Pre-tokenization cuts text into words with GPT-2's pattern
       's|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+
   a contraction, a run of letters, of digits or of other symbols (each with at most one leading
   space), or whitespace. Merges never cross word boundaries.
2. Each word's UTF-8 bytes are spelled with one printable character per byte (a space is 'Ġ'),
   so that tokens are plain strings in vocab.json and merges.txt.
3. BPE: merge the adjacent pair that comes first in merges.txt, again and again.
4. Each token's id is its entry in vocab.json.

Decoding runs 4, 2 backwards: ids -> token bytes -> UTF-8 text. The special token
`<|endoftext|>` (GPT-2's BOS and EOS) is never produced from text unless the caller allows it.

The same tokenizer reads LLaMA-3's `tokenizer.json` and a GGUF file's `tokenizer.ggml.*` metadata
(`tokenizer.ggml.model` "gpt2"), whose pre-tokenizers differ in step 1 only. A vocabulary may lack
a token for some bytes (SmolLM2's has none for 21 control and invalid-UTF-8 bytes): such a byte
is dropped from the word before the merges, as Hugging Face tokenizers does when there is no
unknown token or byte fallback, so `decode(encode(text))` loses it.
"""

from __future__ import annotations

import heapq
import json
import os
import re
from pathlib import Path
from typing import Callable, Collection, Iterable, Literal

from .sources import CheckpointError, locate
from .textfiles import describe, lines, read_json, read_text
from .unicode_tables import LETTERS, NUMBERS, UNICODE_VERSION, WHITE_SPACE

EOT = "<|endoftext|>"


class TokenizerError(CheckpointError):
    """vocab.json or merges.txt that is missing or malformed."""


# ---------------------------------------------------------------------------------------------
# 1. Pre-tokenization: GPT-2's pattern with \p{L}, \p{N} and \s spelled out as Unicode 16.0
#    ranges (Python's `re` has no \p{...}, and its \s is str.isspace, which differs).


def _char_class(*tables, negate: bool = False) -> str:
    spans = "".join(f"\\U{a:08x}" if a == b else f"\\U{a:08x}-\\U{b:08x}" for t in tables for a, b in t)
    return "[" + ("^" if negate else "") + spans + "]"


def _gpt2_pattern(letters, numbers) -> re.Pattern:
    L, N, S = _char_class(letters), _char_class(numbers), _char_class(WHITE_SPACE)
    not_s = _char_class(WHITE_SPACE, negate=True)                      # \S
    other = _char_class(WHITE_SPACE, letters, numbers, negate=True)    # [^\s\p{L}\p{N}]
    return re.compile(rf"'s|'t|'re|'ve|'m|'ll|'d| ?{L}+| ?{N}+| ?{other}+|{S}+(?!{not_s})|{S}+")


def _below_0x10000(table):
    return tuple((a, min(b, 0xFFFF)) for a, b in table if a <= 0xFFFF)


PATTERN = _gpt2_pattern(LETTERS, NUMBERS)
# The same pattern for text without characters past U+FFFF, where the classes' 374 ranges above
# U+FFFF cannot match: Python's re tests those ranges one by one at every word boundary, so
# leaving them out makes pre-tokenization 4x faster (5.5 -> 23 MB/s on the Gutenberg books).
_BMP_PATTERN = _gpt2_pattern(_below_0x10000(LETTERS), _below_0x10000(NUMBERS))
_ASTRAL = re.compile("[\U00010000-\U0010ffff]")


def pre_tokenize(text: str) -> list[str]:
    """The words of `text` under GPT-2's pattern."""
    return (PATTERN if _ASTRAL.search(text) else _BMP_PATTERN).findall(text)


# LLaMA-3's pattern (tiktoken's, as its tokenizer.json gives it): contractions in any case, a run of
# letters with at most one non-letter, non-digit, non-newline character before it, digits in
# groups of up to three, other symbols with one optional leading space and trailing newlines,
# newlines with the whitespace before them, then whitespace as GPT-2's.
LLAMA3_PATTERN_STRING = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}|"
                         r" ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")


def _llama3_pattern(letters, numbers) -> re.Pattern:
    L, N, S = _char_class(letters), _char_class(numbers), _char_class(WHITE_SPACE)
    not_s = _char_class(WHITE_SPACE, negate=True)                      # \S
    other = _char_class(WHITE_SPACE, letters, numbers, negate=True)    # [^\s\p{L}\p{N}]
    before = _char_class(((0x0A, 0x0A), (0x0D, 0x0D)), letters, numbers, negate=True)   # [^\r\n\p{L}\p{N}]
    return re.compile(rf"(?i:'s|'t|'re|'ve|'m|'ll|'d)|{before}?{L}+|{N}{{1,3}}| ?{other}+[\r\n]*|"
                      rf"{S}*[\r\n]+|{S}+(?!{not_s})|{S}+")


PATTERNS = {"gpt2": (PATTERN, _BMP_PATTERN)}
PATTERNS["llama3"] = (_llama3_pattern(LETTERS, NUMBERS),
                      _llama3_pattern(_below_0x10000(LETTERS), _below_0x10000(NUMBERS)))
# SmolLM's (StarCoder's): each digit a piece of its own first (Hugging Face's Digits with
# individual_digits, llama.cpp's "\p{N}" step), then GPT-2's pattern on every piece. Not one regex:
# whitespace before a digit ends its piece, so "a \n1" gives "a", " \n", "1" where GPT-2 gives
# "a", " ", "\n", "1".
PATTERNS["smollm"] = PATTERNS["gpt2"]
DIGIT_FIRST = {"smollm": re.compile("(" + _char_class(NUMBERS) + ")")}


# ---------------------------------------------------------------------------------------------
# 2. GPT-2's byte alphabet


def byte_alphabet() -> list[str]:
    """The character that spells each byte: printable Latin-1 bytes spell themselves; the other
    68 (controls, space, NBSP, soft hyphen) are shifted to chr(256 + n), in byte order."""
    printable = {*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)}
    alphabet, shifted = [], 0
    for b in range(256):
        if b in printable:
            alphabet.append(chr(b))
        else:
            alphabet.append(chr(256 + shifted))
            shifted += 1
    return alphabet


# ---------------------------------------------------------------------------------------------
# 3. BPE


def bpe(symbols: str, ranks: dict[tuple[str, str], int]) -> list[str]:
    """Merge adjacent pairs of `symbols`, lowest rank first and leftmost among equals, until no
    pair has a rank. This is the order of Hugging Face tokenizers' BPE (a heap, O(n log n)), so
    a long word costs no more than its length; a stale heap entry is skipped unless the pair at
    its position still forms the same merged token."""
    parts: list[str | None] = list(symbols)
    if len(parts) < 2:
        return parts
    rank_of, push, pop = ranks.get, heapq.heappush, heapq.heappop
    nxt = list(range(1, len(parts))) + [-1]   # a linked list over positions; a merged-away
    prv = list(range(-1, len(parts) - 1))     # position holds None in `parts`
    heap = [(r, i, a + b) for i, (a, b) in enumerate(zip(parts, parts[1:])) if (r := rank_of((a, b))) is not None]
    heapq.heapify(heap)
    while heap:
        _, i, merged = pop(heap)
        j = nxt[i]
        if j < 0 or parts[i] is None or parts[i] + parts[j] != merged:
            continue  # stale: a neighbour was merged since this entry was pushed
        parts[i], parts[j] = merged, None
        k = nxt[i] = nxt[j]
        if k >= 0:  # the new pair with the next symbol
            prv[k] = i
            if (r := rank_of((merged, parts[k]))) is not None:
                push(heap, (r, i, merged + parts[k]))
        h = prv[i]
        if h >= 0 and (r := rank_of((parts[h], merged))) is not None:  # ... and with the previous
            push(heap, (r, h, parts[h] + merged))
    return [p for p in parts if p is not None]


# ---------------------------------------------------------------------------------------------
# The tokenizer


# llama.cpp's names of pre-tokenizers (a GGUF file's tokenizer.ggml.pre) -> ours, as llama-vocab.cpp
# groups them: GPT-2's pattern, LLaMA-3's, and SmolLM's (StarCoder's) digits first, then GPT-2's.
GGUF_PRE_TOKENIZERS = {"gpt-2": "gpt2", "llama-bpe": "llama3", "llama3": "llama3", "llama-v3": "llama3",
                       "smollm": "smollm", "starcoder": "smollm"}


class Tokenizer:
    """GPT-2 byte-level BPE: `vocab` maps token strings (in the byte alphabet) to ids 0..n-1,
    `merges` lists symbol pairs, first merged first. Both as in vocab.json / merges.txt."""

    CACHE_SIZE = 100_000  # words remembered; cleared when full, so memory stays bounded
    add_bos_token = False  # whether the model's own tokenizer starts a text with BOS (a GGUF file says)

    def __init__(self, vocab: dict[str, int], merges: Iterable[tuple[str, str]],
                 _where: Callable[[int], str] | None = None, _source: str = "vocab",
                 bos_token: str | None = EOT, eos_token: str | None = EOT, special: Iterable[str] = (),
                 pattern: str = "gpt2", ignore_merges: bool = False, added: Iterable[str] = ()):
        if pattern not in PATTERNS:
            raise TokenizerError(f"{_source}: pre-tokenizer pattern {pattern!r}: expected one of {list(PATTERNS)}")
        self.pattern, self.ignore_merges = pattern, ignore_merges
        merges = list(merges)
        where = _where or (lambda i: f"merges[{i}]")
        named = {"bos_token": bos_token, "eos_token": eos_token}
        specials = list(dict.fromkeys([t for t in named.values() if t is not None] + list(special)))
        added = [t for t in dict.fromkeys(added) if t not in specials]
        _check_vocab(vocab, _source, specials, named, literal=added)
        self.ranks: dict[tuple[str, str], int] = {}
        for rank, (a, b) in enumerate(merges):
            for token in (a, b, a + b):
                if token not in vocab:
                    raise TokenizerError(f"{where(rank)}: {token!r} is not in the vocabulary")
            if (a, b) in self.ranks:
                raise TokenizerError(f"{where(rank)}: merge {a!r} {b!r} repeats {where(self.ranks[a, b])}")
            self.ranks[a, b] = rank
        self.vocab = dict(vocab)
        self.special_tokens = {t: vocab[t] for t in specials}   # written as themselves, never merged
        self.bos_token, self.eos_token = bos_token, eos_token
        # Tokens matched whole wherever they stand in text, before pre-tokenization, but not special
        # (a GGUF file's user-defined tokens, as Hugging Face's added tokens): longest first.
        for t in added:
            if not t or t not in vocab:
                raise TokenizerError(f"{_source}: added token {t!r} is " + ("empty" if not t else "not in the vocabulary"))
        self.added_tokens = {t: vocab[t] for t in sorted(added, key=len, reverse=True)}
        self._added = (re.compile("(" + "|".join(re.escape(t) for t in self.added_tokens) + ")")
                       if self.added_tokens else None)
        alphabet = byte_alphabet()
        # str.translate table: Latin-1 char -> symbol; a byte the vocabulary has no token for -> None,
        # dropped from the word before the merges (Hugging Face's BPE without unk or byte fallback)
        self._spell = {b: alphabet[b] if alphabet[b] in vocab else None for b in range(256)}
        self.missing_bytes = bytes(b for b in range(256) if alphabet[b] not in vocab)
        unspell = {ch: b for b, ch in enumerate(alphabet)}
        self._token_bytes = [b""] * len(vocab)
        for token, i in vocab.items():
            literal = token in self.special_tokens or token in self.added_tokens        # their text, not spelled
            self._token_bytes[i] = token.encode() if literal else bytes(unspell[c] for c in token)
        self._cache: dict[str, list[int]] = {}

    @classmethod
    def from_pretrained(cls, name_or_path: str | os.PathLike, revision: str | None = None) -> Tokenizer:
        """vocab.json + merges.txt from a local folder or hub id (resolved as the model is), with
        the special tokens that tokenizer_config.json / special_tokens_map.json name (OPT: `</s>`
        as BOS and EOS; without them, GPT-2's `<|endoftext|>`); or a GGUF file's metadata."""
        source = locate(name_or_path, revision)
        if source.gguf is not None:
            return cls.from_gguf(source.gguf)
        named = _special_tokens(source.file("tokenizer_config.json", required=False),
                                source.file("special_tokens_map.json", required=False))
        if source.file("vocab.json", required=False) is None:
            packed = source.file("tokenizer.json", required=False)
            if packed is not None:                  # LLaMA-3's folders: one tokenizer.json
                return cls.from_tokenizer_json(packed, **named)
        return cls.from_files(source.file("vocab.json"), source.file("merges.txt"), **named)

    @classmethod
    def from_tokenizer_json(cls, path: str | os.PathLike, **special) -> Tokenizer:
        """A byte-level BPE from Hugging Face's tokenizer.json: model.vocab and model.merges, the
        added tokens (ids after the vocabulary), and the pre-tokenizer, which must be GPT-2's
        (ByteLevel with its regex) or LLaMA-3's (Split on its regex, then ByteLevel without one)."""
        path = Path(path)
        raw = read_json(path, TokenizerError, what="tokenizer.json")
        if not isinstance(raw, dict):
            raise TokenizerError(f"{path}: {describe(raw)} (expected a JSON object with a model)")
        model = raw.get("model")
        if not isinstance(model, dict) or model.get("type") != "BPE" or not isinstance(model.get("vocab"), dict):
            kind = model.get("type") if isinstance(model, dict) else model
            raise TokenizerError(f"{path}: model: type {json.dumps(kind)} (expected a byte-level BPE: type \"BPE\" "
                                 "with a vocab object)")
        added = raw.get("added_tokens") or []
        if not isinstance(added, list):
            raise TokenizerError(f"{path}: added_tokens: {describe(added)} (expected an array of tokens)")
        if model.get("byte_fallback") is True:     # SentencePiece-style: "▁" for spaces, bytes as <0xXX>
            return SentencePieceTokenizer.from_tokenizer_json(path, raw, special)
        vocab, merges = _json_vocab_and_merges(path, model, added)
        pattern = _pattern_of(raw.get("pre_tokenizer"), path)
        specials = [t["content"] for t in added if t.get("special")]
        if not special:                              # no tokenizer_config.json: GPT-2's rule, or no BOS
            special = {"bos_token": EOT, "eos_token": EOT} if EOT in vocab else {"bos_token": None, "eos_token": None}
        special = {**special, "special": list(dict.fromkeys(list(special.get("special", [])) + specials))}
        ignore_merges = model.get("ignore_merges") or False
        if not isinstance(ignore_merges, bool):
            raise TokenizerError(f"{path}: model.ignore_merges: {json.dumps(ignore_merges)[:40]} is "
                                 f"{describe(ignore_merges)} (expected true or false)")
        return cls(vocab, merges, _where=lambda i: f"{path}: model.merges[{i}]", _source=str(path), pattern=pattern,
                   ignore_merges=ignore_merges, **special)

    @classmethod
    def from_gguf(cls, path: str | os.PathLike) -> Tokenizer:
        """The byte-level BPE a GGUF file's metadata describes (`tokenizer.ggml.model` "gpt2"):
        its tokens (ids in order), merges, token types (control, unknown and unused tokens are
        special; user-defined ones are matched whole in text, not special), BOS and EOS ids, and
        the pre-tokenizer `tokenizer.ggml.pre` names, as llama.cpp reads them (with LLaMA-3's
        pattern, llama.cpp's ignore_merges and BOS by default)."""
        from .gguf import read_gguf

        file = read_gguf(path)
        where = str(file.path)
        kind = file.string("tokenizer.ggml.model")
        if kind == "llama":                         # SentencePiece-style: Llama 2's, Gemma's
            return SentencePieceTokenizer.from_gguf(file)
        if kind != "gpt2":
            raise TokenizerError(f"{where}: tokenizer.ggml.model is {kind!r}; minigpt reads byte-level BPE vocabularies "
                                 "(\"gpt2\") and SentencePiece-style ones (\"llama\")")
        pre = file.string("tokenizer.ggml.pre", default=None)
        if pre is None:
            raise TokenizerError(f"{where}: no tokenizer.ggml.pre; minigpt needs the pre-tokenizer named (one of "
                                 f"{', '.join(repr(p) for p in GGUF_PRE_TOKENIZERS)}), where llama.cpp would guess")
        if pre not in GGUF_PRE_TOKENIZERS:
            raise TokenizerError(f"{where}: tokenizer.ggml.pre is {pre!r}, a pre-tokenizer minigpt does not know (it "
                                 f"knows {', '.join(repr(p) for p in GGUF_PRE_TOKENIZERS)}, as llama.cpp reads them)")
        tokens, types = gguf_tokens(file)
        vocab: dict[str, int] = {}
        for i, token in enumerate(tokens):
            if vocab.setdefault(token, i) != i:
                raise TokenizerError(f"{where}: tokenizer.ggml.tokens[{i}] {token!r} repeats token {vocab[token]}")
        by_type: dict[int, list[str]] = {t: [] for t in (2, 3, 4, 5, 6)}    # llama.cpp's token types:
        for token, t in zip(tokens, types):                                  # 1 normal, 2 unknown, 3 control,
            if t in by_type:                                                 # 4 user-defined, 5 unused, 6 byte
                by_type[t].append(token)
        if by_type[6]:
            raise TokenizerError(f"{where}: token {by_type[6][0]!r} has type 6 (a byte token of a SentencePiece "
                                 "vocabulary), which a byte-level BPE has no use for")
        named = gguf_named(file, tokens, ("bos_token", "eos_token"))
        merges = [_merge(m, f"{where}: tokenizer.ggml.merges[{i}]")
                  for i, m in enumerate(file.strings("tokenizer.ggml.merges"))]
        pattern = GGUF_PRE_TOKENIZERS[pre]
        # llama.cpp, for LLaMA-3's pre-tokenizer: a word the vocabulary holds whole is one token
        # (tokenizer.json's ignore_merges, which GGUF does not store), and BOS is added by default
        tokenizer = cls(vocab, merges, _where=lambda i: f"{where}: tokenizer.ggml.merges[{i}]", _source=where,
                        special=by_type[3] + by_type[2] + by_type[5], added=by_type[4], pattern=pattern,
                        ignore_merges=pattern == "llama3", **named)
        tokenizer.add_bos_token = file.boolean("tokenizer.ggml.add_bos_token", default=pattern == "llama3")
        return tokenizer

    @classmethod
    def from_files(cls, vocab_path: str | os.PathLike, merges_path: str | os.PathLike, **special) -> Tokenizer:
        vocab_path, merges_path = Path(vocab_path), Path(merges_path)
        vocab = _read_vocab(vocab_path)
        merges, lines = _read_merges(merges_path)
        return cls(vocab, merges, _where=lambda i: f"{merges_path}:{lines[i]}", _source=str(vocab_path), **special)

    def __repr__(self):
        return f"Tokenizer(vocab_size={self.vocab_size}, merges={len(self.ranks)}, unicode={UNICODE_VERSION})"

    @property
    def vocab_size(self) -> int:
        return len(self.vocab)

    @property
    def bos_token_id(self) -> int:
        """The id prepended to prompts (GPT-2: <|endoftext|>; OPT: </s>)."""
        if self.bos_token is None:
            raise TokenizerError("this tokenizer has no BOS token (its tokenizer_config.json or GGUF metadata names "
                                 "none), and ActAdd and --bos prepend one; name it as bos_token in "
                                 "tokenizer_config.json")
        return self.special_tokens[self.bos_token]

    @property
    def eos_token_id(self) -> int | None:
        """The id that ends a text (generation stops there); None if the tokenizer has none."""
        return None if self.eos_token is None else self.special_tokens[self.eos_token]

    # --- encoding ----------------------------------------------------------------------------

    def encode(self, text: str, allowed_special: Collection[str] | Literal["all"] = (),
               disallowed_special: Collection[str] | Literal["all"] = "all") -> list[int]:
        """Token ids of `text`. Special tokens are handled as in tiktoken: by default a special
        token's text in `text` is an error (it would silently become 7 ordinary tokens);
        `allowed_special={"<|endoftext|>"}` or `"all"` encodes it as the special id, and
        `disallowed_special=()` encodes it as ordinary text."""
        if not isinstance(text, str):
            raise TypeError(f"text must be str, got {type(text).__name__}")
        specials = set(self.special_tokens)
        allowed = specials if allowed_special == "all" else set(allowed_special)
        disallowed = specials - allowed if disallowed_special == "all" else set(disallowed_special)
        for name, given in (("allowed_special", allowed), ("disallowed_special", disallowed)):
            if given - specials:
                raise ValueError(f"{name} names {sorted(given - specials)}, not special tokens "
                                 f"of this tokenizer ({sorted(specials)})")
        for token in disallowed:
            at = text.find(token)
            if at >= 0:
                raise ValueError(
                    f"text contains the special token {token!r} at index {at}; pass "
                    f"allowed_special={{{token!r}}} to encode it as id {self.special_tokens[token]}, "
                    "or disallowed_special=() to encode it as ordinary text"
                )
        if not allowed:
            return self.encode_ordinary(text)
        ids: list[int] = []
        split = re.compile("(" + "|".join(re.escape(t) for t in sorted(allowed, key=len, reverse=True)) + ")")
        for k, part in enumerate(split.split(text)):
            ids.extend([self.special_tokens[part]] if k % 2 else self._encode_text(part, at_start=k == 0))
        return ids

    def encode_ordinary(self, text: str) -> list[int]:
        """Token ids of `text`, every character ordinary text (special tokens included; added
        tokens, which are not special, are still matched whole)."""
        return self._encode_text(text, at_start=True)

    def _encode_text(self, text: str, at_start: bool) -> list[int]:
        """Ids of text between special tokens: its added tokens matched whole, the rest as words.
        `at_start`: whether it begins the whole text (a SentencePiece prefix space may depend on it)."""
        if self._added is not None:
            ids: list[int] = []
            for k, part in enumerate(self._added.split(text)):
                ids.extend([self.added_tokens[part]] if k % 2 else self._encode_words(part, at_start and k == 0))
            return ids
        return self._encode_words(text, at_start)

    def pre_tokenize(self, text: str) -> list[str]:
        """The words of `text` under this tokenizer's pre-tokenizer (step 1)."""
        full, bmp = PATTERNS[self.pattern]
        words = (full if _ASTRAL.search(text) else bmp).findall
        digits = DIGIT_FIRST.get(self.pattern)
        if digits is None:
            return words(text)
        return [word for piece in digits.split(text) if piece for word in words(piece)]

    def _encode_words(self, text: str, at_start: bool = True) -> list[int]:
        ids: list[int] = []
        cache = self._cache
        for word in self.pre_tokenize(text):
            word_ids = cache.get(word)
            if word_ids is None:
                word_ids = self._encode_word(word, text)
            ids.extend(word_ids)
        return ids

    def _encode_word(self, word: str, text: str) -> list[int]:
        try:
            utf8 = word.encode("utf-8")
        except UnicodeEncodeError:
            at = next(i for i, ch in enumerate(text) if 0xD800 <= ord(ch) <= 0xDFFF)
            raise ValueError(f"text has a lone surrogate U+{ord(text[at]):04X} at index {at}, "
                             "which has no UTF-8 encoding") from None
        spelled = utf8.decode("latin-1").translate(self._spell)       # bytes without a token dropped
        if self.ignore_merges and spelled in self.vocab:   # a whole word in the vocabulary is one token (tiktoken's rule)
            ids = [self.vocab[spelled]]
        else:
            ids = [self.vocab[token] for token in bpe(spelled, self.ranks)]
        if len(self._cache) >= self.CACHE_SIZE:
            self._cache.clear()
        self._cache[word] = ids
        return ids

    # --- decoding ----------------------------------------------------------------------------

    def decode_bytes(self, ids: Iterable[int]) -> bytes:
        return b"".join(self._token_bytes[i] for i in self._check_ids(ids))

    def decode(self, ids: Iterable[int], errors: str = "replace") -> str:
        """Text of `ids`. A token can hold part of a UTF-8 character; such bytes become U+FFFD
        by default (`errors` as in bytes.decode: "strict" raises). `decode(encode(text))` is
        `text` but for the bytes of `missing_bytes` (a vocabulary without a token for them):
        those were dropped, the byte and not its character, so a character whose first byte has
        no token leaves its other bytes, each a U+FFFD."""
        return self.decode_bytes(ids).decode("utf-8", errors)

    def token_str(self, token_id: int) -> str:
        """One token for a person to read: ' Love', 'H', 'ate'; bytes that are not whole UTF-8
        characters are shown escaped ('\\xe2\\x80')."""
        (i,) = self._check_ids([token_id])
        return self._token_bytes[i].decode("utf-8", "backslashreplace")

    def token_strs(self, ids: Iterable[int]) -> list[str]:
        return [self._token_bytes[i].decode("utf-8", "backslashreplace") for i in self._check_ids(ids)]

    def _check_ids(self, ids: Iterable[int]) -> list[int]:
        checked = []
        for position, i in enumerate(ids):
            if isinstance(i, bool) or not hasattr(i, "__index__"):
                raise TypeError(f"token id {i!r} at position {position} is not an integer")
            i = i.__index__()
            if not 0 <= i < len(self._token_bytes):
                raise ValueError(f"token id {i} at position {position} is outside the vocabulary "
                                 f"[0, {len(self._token_bytes)})")
            checked.append(i)
        return checked


# ---------------------------------------------------------------------------------------------
# Files


def gguf_tokens(file) -> tuple[list[str], list[int]]:
    """A GGUF file's tokens (ids in order) and llama.cpp's token types (1 normal, 2 unknown, 3
    control, 4 user-defined, 5 unused, 6 byte; all normal where the file gives none)."""
    tokens = file.strings("tokenizer.ggml.tokens")
    types = file.numbers("tokenizer.ggml.token_type", default=None)
    types = [1] * len(tokens) if types is None else types.tolist()
    if len(types) != len(tokens):
        raise TokenizerError(f"{file.path}: tokenizer.ggml.token_type has {len(types)} entries for {len(tokens)} tokens")
    return tokens, types


GGUF_ROLE_KEYS = {"bos_token": "bos_token_id", "eos_token": "eos_token_id", "unk_token": "unknown_token_id"}


def gguf_named(file, tokens: list[str], roles) -> dict[str, str | None]:
    """role -> the token a GGUF file's tokenizer.ggml.*_token_id names (None where it names none)."""
    named = {}
    for role in roles:
        key = GGUF_ROLE_KEYS[role]
        i = file.integer("tokenizer.ggml." + key, default=None, minimum=0)
        if i is not None and i >= len(tokens):
            raise TokenizerError(f"{file.path}: tokenizer.ggml.{key} is {i}, past the {len(tokens)} tokens")
        named[role] = None if i is None else tokens[i]
    return named


def _json_vocab_and_merges(path: Path, model: dict, added: list) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """A tokenizer.json's vocabulary (model.vocab, then the added tokens' ids) and its merges."""
    vocab = dict(model["vocab"])
    for i, t in enumerate(added):
        if not (isinstance(t, dict) and isinstance(t.get("content"), str) and isinstance(t.get("id"), int)
                and not isinstance(t.get("id"), bool)):
            raise TokenizerError(f"{path}: added_tokens[{i}]: {json.dumps(t)[:80]} (expected an object with a string "
                                 "content and an integer id)")
        vocab.setdefault(t["content"], t["id"])
    merges = model.get("merges") or []
    if not isinstance(merges, list):
        raise TokenizerError(f"{path}: model.merges: {describe(merges)} (expected an array)")
    return vocab, [_merge(m, f"{path}: model.merges[{i}]") for i, m in enumerate(merges)]


def _merge(m, where: str) -> tuple[str, str]:
    """A merge as tokenizer.json stores it: "a b" (tokenizers < 0.20) or ["a", "b"]."""
    pair = m.split(" ") if isinstance(m, str) else m
    if not (isinstance(pair, list) and len(pair) == 2 and all(isinstance(p, str) and p for p in pair)):
        raise TokenizerError(f"{where}: {json.dumps(m)[:60]} (expected two symbols: \"a b\" or [\"a\", \"b\"])")
    return pair[0], pair[1]


def check_vocabulary_ids(vocab, source: str) -> None:
    """A vocabulary is token string -> integer id, the ids 0..n-1 each once."""
    if not isinstance(vocab, dict) or not vocab:
        raise TokenizerError(f"{source}: the vocabulary must be a non-empty object of token -> id")
    seen: dict[int, str] = {}
    for token, i in vocab.items():
        if not isinstance(token, str) or isinstance(i, bool) or not isinstance(i, int):
            raise TokenizerError(f"{source}: entry {token!r}: {i!r} is not a token string -> integer id")
        if i in seen:
            raise TokenizerError(f"{source}: id {i} is given to both {seen[i]!r} and {token!r}")
        seen[i] = token
    missing = next((i for i in range(len(vocab)) if i not in seen), None)
    if missing is not None:
        raise TokenizerError(f"{source}: ids must be 0..{len(vocab) - 1}, but {missing} is missing "
                             f"(largest id {max(seen)})")


def _check_vocab(vocab, source: str, specials=(EOT,), named=None, literal=()) -> None:
    check_vocabulary_ids(vocab, source)
    alphabet = byte_alphabet()
    for token in specials:
        if token not in vocab:
            roles = [role for role, t in (named or {}).items() if t == token]
            why = "GPT-2's BOS and EOS" if token == EOT and roles else (" and ".join(roles) or "a special token")
            raise TokenizerError(f"{source}: no {token!r} token ({why})")
    spelling, specials = set(alphabet), set(specials) | set(literal)   # a set: 32k special tokens cost no more than 3
    for token in vocab:
        if token not in specials and not spelling.issuperset(token):
            bad = next(ch for ch in token if ch not in spelling)
            raise TokenizerError(f"{source}: token {token!r} has {bad!r}, which is not in GPT-2's byte "
                                 "alphabet (a byte-level BPE spells a space as 'Ġ', a newline as 'Ċ')")


def _pattern_of(pre: dict | None, path: Path) -> str:
    """Which pre-tokenizer a tokenizer.json describes: "gpt2" or "llama3", or an error naming it."""
    if pre is not None and not isinstance(pre, dict):
        raise TokenizerError(f"{path}: pre_tokenizer: {json.dumps(pre)[:60]} is {describe(pre)} (expected an object)")
    steps = (pre or {}).get("pretokenizers", [pre]) if pre else []
    if not isinstance(steps, list):
        raise TokenizerError(f"{path}: pre_tokenizer.pretokenizers: {describe(steps)} (expected an array)")
    kinds = [(s.get("type"), s) for s in steps if isinstance(s, dict)]
    if [k for k, _ in kinds] == ["ByteLevel"] and kinds[0][1].get("use_regex", True):
        return "gpt2"
    if [k for k, _ in kinds] == ["Digits", "ByteLevel"] and kinds[0][1].get("individual_digits") is True \
            and kinds[1][1].get("use_regex", True):
        return "smollm"
    if [k for k, _ in kinds] == ["Split", "ByteLevel"] and not kinds[1][1].get("use_regex", True):
        pattern = kinds[0][1].get("pattern")
        regex = pattern.get("Regex") if isinstance(pattern, dict) else pattern
        if regex == LLAMA3_PATTERN_STRING:
            return "llama3"
        raise TokenizerError(f"{path}: the pre-tokenizer splits on {regex!r}, which is neither GPT-2's nor LLaMA-3's")
    raise TokenizerError(f"{path}: pre-tokenizer {[k for k, _ in kinds]} is not supported (GPT-2's ByteLevel, "
                         "LLaMA-3's Split + ByteLevel, or SmolLM's Digits + ByteLevel)")


def _special_tokens(*paths: Path | None) -> dict:
    """bos_token, eos_token and the other special tokens named in tokenizer_config.json /
    special_tokens_map.json (a token is a string or {"content": ...}). Neither file, or neither
    naming a BOS or EOS: GPT-2's <|endoftext|> for both."""
    found: dict = {}
    for path in paths:
        if path is None:
            continue
        raw = read_json(path, TokenizerError, what=path.name)
        if not isinstance(raw, dict):
            raise TokenizerError(f"{path}: {describe(raw)} (expected a JSON object)")
        for key in ("bos_token", "eos_token", "unk_token", "pad_token"):
            value = raw.get(key)
            if isinstance(value, dict):
                value = value.get("content")
            if value is not None and not isinstance(value, str):
                raise TokenizerError(f"{path}: {key}: {json.dumps(raw.get(key))[:60]} (expected a token string, an "
                                     "object with a string content, or null)")
            if isinstance(value, str) and key not in found:
                found[key] = value
        decoder = raw.get("added_tokens_decoder") or {}
        if not isinstance(decoder, dict):
            raise TokenizerError(f"{path}: added_tokens_decoder: {describe(decoder)} (expected an object of id -> token)")
        for entry in decoder.values():
            if isinstance(entry, dict) and entry.get("special") and isinstance(entry.get("content"), str):
                found.setdefault("special", []).append(entry["content"])
    if "bos_token" not in found and "eos_token" not in found:
        return {}
    extra = [found[k] for k in ("unk_token", "pad_token") if k in found] + found.get("special", [])
    return {"bos_token": found.get("bos_token"), "eos_token": found.get("eos_token"), "special": extra}


def _read_vocab(path: Path) -> dict[str, int]:
    return read_json(path, TokenizerError, what="vocab.json")


def _read_merges(path: Path) -> tuple[list[tuple[str, str]], list[int]]:
    """(merges, the line number of each). A first line '#version: ...' is a header."""
    merges, numbers = [], []
    for number, line in enumerate(lines(read_text(path, TokenizerError, what="merges.txt")), 1):
        if number == 1 and line.startswith("#version"):
            continue
        parts = line.split(" ")
        if len(parts) != 2 or not all(parts):
            raise TokenizerError(f"{path}:{number}: expected two symbols separated by one space, got {line!r}")
        merges.append((parts[0], parts[1]))
        numbers.append(number)
    return merges, numbers


# ---------------------------------------------------------------------------------------------
# SentencePiece-style BPE (Llama 2's, Gemma's), in pure Python (standard library only), as
# Hugging Face tokenizers runs it from a tokenizer.json or transformers builds it from a GGUF file.
#
#     text  --added tokens matched whole-->  pieces  --" " -> "▁", maybe a "▁" prefix-->  one word each
#           --each character a symbol, or its UTF-8 bytes as <0xXX> tokens (byte fallback)-->
#           --BPE merges, lowest rank first-->  tokens  -->  ids
#
# Unlike GPT-2's byte-level BPE (tokenizer.py) there is no pre-tokenizer: a whole piece of text
# between added tokens (a paragraph: Gemma's newlines are added tokens) is one word. bpe() merges
# with a heap, so a long word costs n log n, not n^2. Decoding turns "▁" back into spaces and each
# <0xXX> token into its byte.
#
# Where merges are missing (GGUF files of the "llama" tokenizer model store scores, not merges),
# they are derived as transformers derives them: every split of a token into two tokens is a
# merge, ordered by the token's priority (its score; for Gemma, its place in the file), then by the
# left piece's length, longest first.

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
        added = raw.get("added_tokens") or []
        vocab, merges = _json_vocab_and_merges(path, model, added)
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
