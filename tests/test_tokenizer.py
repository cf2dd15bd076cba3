"""The tokenizer against Hugging Face `tokenizers` and `tiktoken` on the same files, for two
tokenizers: one trained here (no outside data) and the genuine GPT-2 files from ../shared."""

import json
import random

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import handmade_tokenizer, write_tokenizer_files
from minigpt import CheckpointError, Tokenizer
from minigpt.tokenizer import EOT, PATTERN, TokenizerError, bpe, byte_alphabet, pre_tokenize
from minigpt.unicode_tables import LETTERS, NUMBERS, WHITE_SPACE

# Text that exercises every branch of the pattern and the byte alphabet, mixed into arbitrary
# Unicode (hypothesis' text() draws from all categories but surrogates).
FRAGMENTS = [
    "'s", "'t", "'re", "'ve", "'m", "'ll", "'d", "'S", "'LL", " 're", "don't", "we'll", "''s",
    EOT, "<|endoftext", "|>", "  ", "   x", "\n\n", "\r\n", "\t", " \u00a0", "\u3000", "\x1c", "\x85", "\x00",
    "é", "e\u0301", "\u0301", "👩\u200d👩\u200d👧", "🦜", "中文字符", "日本語の", "한국어", "ภาษาไทย", "עברית",
    "٣٤", "१२३", "Ⅻ", "½", "１２", " 123", "x²", "Hello", " world", "...", "!!", " ?!", "\u200b",
    "\ufeff", "\U0001e030", "\U00011f04", "\U00031350", "\U0001e5d0", "\U0001ccf0",  # Unicode 15-16
]
texts = st.lists(st.one_of(st.text(), st.sampled_from(FRAGMENTS)), max_size=24).map("".join)


def sample_corpus(seed: int = 0, n: int = 3000) -> list[str]:
    """Training text for the test tokenizer: English, other scripts, digits, emoji, whitespace."""
    rng = random.Random(seed)
    words = ("the whale ship sea captain love hate wedding ballroom dance I you we they it's don't "
             "Ishmael Ahab morning evening quickly 1851 42 3.14").split()
    scripts = ["Привет мир", "Γειά σου", "你好世界", "こんにちは", "مرحبا", "नमस्ते १२३", "🙂🙃 🦜", "ça va?",
               "naïve café", "  indented\n\tline", "x² + y² = ½"]
    out = []
    for _ in range(n):
        line = " ".join(rng.choice(words) for _ in range(rng.randint(3, 12)))
        if rng.random() < 0.3:
            line += " " + rng.choice(scripts)
        out.append(line.capitalize() + rng.choice([".", "!", "?", ",", "\n", "\r\n", "..."]))
    return out


@pytest.fixture(scope="session")
def trained_dir(tok_reference, tmp_path_factory):
    return tok_reference.train_byte_level_bpe(sample_corpus(), tmp_path_factory.mktemp("trained-bpe"), 600)


@pytest.fixture(scope="session")
def gpt2(gpt2_tokenizer_dir):
    return Tokenizer.from_pretrained(gpt2_tokenizer_dir)


@pytest.fixture(scope="session")
def tiktoken_gpt2(tok_reference, gpt2_tokenizer_dir):
    return tok_reference.tiktoken_encoding(gpt2_tokenizer_dir)


@pytest.fixture(scope="session", params=["trained", "gpt2"])
def pair(request, tok_reference):
    """(minigpt tokenizer, HF tokenizer) built from the same files."""
    folder = request.getfixturevalue("trained_dir" if request.param == "trained" else "gpt2_tokenizer_dir")
    return Tokenizer.from_pretrained(folder), tok_reference.hf_tokenizer(folder)


# --- parity ------------------------------------------------------------------------------------


@settings(max_examples=300)
@given(text=texts)
def test_encode_matches_hugging_face_tokenizers(pair, text):
    ours, hf = pair
    assert ours.encode(text, allowed_special="all") == hf.encode(text).ids


@settings(max_examples=300)
@given(text=texts)
def test_pre_tokenizer_matches_hugging_face(tok_reference, text):
    words = tok_reference.hf_pre_tokenize(text)
    assert pre_tokenize(text) == words
    assert PATTERN.findall(text) == words  # the full pattern, also where the BMP one is used


@settings(max_examples=300)
@given(text=texts)
def test_ordinary_encoding_matches_tiktoken(gpt2, tiktoken_gpt2, text):
    assert gpt2.encode(text, disallowed_special=()) == tiktoken_gpt2.encode_ordinary(text)


def test_character_classes_match_the_reference_on_every_assigned_code_point(tok_reference):
    """Letters, numbers and whitespace as HF's pre-tokenizer (Oniguruma, Unicode 16) classifies
    them, on planes 0-3 and the variation selectors (every other plane is unassigned), probed
    one character at a time: 'a?a' is one word iff ? is a letter, '1?1' iff a number, and '!?!'
    splits in three iff whitespace (or a letter or number)."""
    from tokenizers import pre_tokenizers

    pre = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)

    def words(s):
        return len(pre.pre_tokenize_str(s))

    def classes(table):
        return {cp for a, b in table for cp in range(a, b + 1)}

    letters, numbers, space = classes(LETTERS), classes(NUMBERS), classes(WHITE_SPACE)
    mismatches = []
    for lo, hi in ((0x0, 0xD7FF), (0xE000, 0x323AF), (0xE0000, 0xE01EF)):
        for cp in range(lo, hi + 1):
            c = chr(cp)
            ref = ("L" if words(f"a{c}a") == 1 else "N" if words(f"1{c}1") == 1
                   else "S" if cp != 0x20 and words(f"!{c}!") == 3 else "")
            ours = "L" if cp in letters else "N" if cp in numbers else "S" if cp in space and cp != 0x20 else ""
            if ref != ours:
                mismatches.append(f"U+{cp:04X} reference {ref or 'other'}, ours {ours or 'other'}")
    assert not mismatches, f"{len(mismatches)} code points differ: {mismatches[:10]}"
    assert all(b < 0xE0000 or 0xE01EF < a for a, b in LETTERS + NUMBERS)  # nothing in planes 4-13


def test_genuine_gpt2_known_encodings(gpt2):
    tok = gpt2
    assert tok.encode("Hello world") == [15496, 995]
    assert tok.encode("I hate you because") == [40, 5465, 345, 780]
    assert tok.encode(" Love") == [5896]
    assert tok.encode(" Hate") == [28334]
    assert tok.encode("Hate") == [39, 378]
    assert tok.token_strs([39, 378]) == ["H", "ate"]
    assert tok.encode(EOT, allowed_special="all") == [50256]
    assert (tok.vocab_size, tok.eos_token_id, tok.bos_token_id) == (50257, 50256, 50256)


def test_whole_books_match_tokenizers_and_tiktoken(tok_reference, gpt2, tiktoken_gpt2, gpt2_tokenizer_dir,
                                                   corpora_dir):
    tok, hf, tt = gpt2, tok_reference.hf_tokenizer(gpt2_tokenizer_dir), tiktoken_gpt2
    books = sorted((corpora_dir / "gutenberg").glob("*.txt")) + [corpora_dir / "tinyshakespeare" / "input.txt"]
    assert len(books) == 11
    total = 0
    for book in books:
        text = book.read_text(encoding="utf-8")
        ids = tok.encode(text)
        assert ids == hf.encode(text).ids, book.name
        assert ids == tt.encode_ordinary(text), book.name
        assert tok.decode(ids) == text, book.name
        total += len(ids)
    assert total > 1_000_000
    # The corpora's own README gives this count for tinyshakespeare.
    assert len(tok.encode((corpora_dir / "tinyshakespeare" / "input.txt").read_text(encoding="utf-8"))) == 338025


# --- round trips and decoding (pure Python: a tokenizer built by hand, no references) -----------


HANDMADE = handmade_tokenizer()


@settings(max_examples=300)
@given(text=texts)
def test_decode_inverts_encode_for_any_text(text):
    assert HANDMADE.decode(HANDMADE.encode(text, allowed_special="all")) == text
    assert HANDMADE.decode(HANDMADE.encode(text, disallowed_special=())) == text
    assert HANDMADE.decode_bytes(HANDMADE.encode(text, disallowed_special=())) == text.encode("utf-8")


@settings(max_examples=200)
@given(text=texts)
def test_round_trip_with_real_merges(pair, text):
    ours, _ = pair
    assert ours.decode(ours.encode(text, allowed_special="all")) == text


def test_handmade_merges_apply_in_rank_order():
    tok = HANDMADE
    assert tok.token_strs(tok.encode(" the abab aba")) == [" the", " ", "abab", " ", "ab", "a"]


def naive_bpe(symbols: str, ranks: dict) -> list[str]:
    """The textbook loop (OpenAI's encoder.py): merge every occurrence of the lowest-ranked pair,
    left to right, and start again. Slow (quadratic) but obviously right for well-formed merges."""
    parts = list(symbols)
    while len(parts) > 1:
        pairs = set(zip(parts, parts[1:]))
        best = min(pairs, key=lambda p: ranks.get(p, float("inf")))
        if best not in ranks:
            break
        merged, i = [], 0
        while i < len(parts):
            if i + 1 < len(parts) and (parts[i], parts[i + 1]) == best:
                merged.append(parts[i] + parts[i + 1])
                i += 2
            else:
                merged.append(parts[i])
                i += 1
        parts = merged
    return parts


@settings(max_examples=300)
@given(text=texts)
def test_heap_bpe_equals_the_textbook_loop(gpt2, text):
    tok = gpt2
    spell = {b: ch for b, ch in enumerate(byte_alphabet())}
    for word in pre_tokenize(text):
        symbols = word.encode("utf-8").decode("latin-1").translate(spell)
        assert bpe(symbols, tok.ranks) == naive_bpe(symbols, tok.ranks)


class CountingRanks(dict):
    """Merge ranks that count their lookups: the work BPE does, the same on any machine."""

    lookups = 0

    def get(self, key, default=None):
        self.lookups += 1
        return super().get(key, default)


@pytest.mark.parametrize("n", [1_000, 4_000])
def test_long_words_cost_linear_work_not_quadratic(gpt2, n):
    """A word of n letters costs a bounded number of rank lookups per letter (about 2-3 here),
    where merging by rescanning every pair costs about n^2 / 2: counted, not timed."""
    ranks = CountingRanks(gpt2.ranks)
    assert "".join(bpe("a" * n, ranks)) == "a" * n
    assert ranks.lookups <= 4 * n, ranks.lookups
    ids = gpt2.encode("a" * 200_000)                          # and a 200,000-letter word, whole
    assert gpt2.decode(ids) == "a" * 200_000


def test_partial_utf8_decodes_without_raising_by_default():
    ids = HANDMADE.encode("€")  # three byte tokens: E2 82 AC
    assert len(ids) == 3
    assert HANDMADE.decode(ids[:2]) == "\ufffd"
    assert HANDMADE.decode_bytes(ids[:2]) == b"\xe2\x82"
    assert HANDMADE.token_strs(ids) == ["\\xe2", "\\x82", "\\xac"]
    with pytest.raises(UnicodeDecodeError):
        HANDMADE.decode(ids[:2], errors="strict")


def test_special_token_handling_is_explicit():
    tok, eot = HANDMADE, HANDMADE.eos_token_id
    with pytest.raises(ValueError, match=r"special token '<\|endoftext\|>' at index 2; pass allowed_special="):
        tok.encode("ab<|endoftext|>")
    assert tok.encode("ab<|endoftext|>ab", allowed_special={EOT}) == tok.encode("ab") + [eot] + tok.encode("ab")
    assert tok.encode(EOT, allowed_special="all") == [eot]
    ordinary = tok.encode(EOT, disallowed_special=())
    assert eot not in ordinary and tok.decode(ordinary) == EOT
    with pytest.raises(ValueError, match=r"allowed_special names \['<\|pad\|>'\]"):
        tok.encode("x", allowed_special={"<|pad|>"})
    with pytest.raises(ValueError, match=r"disallowed_special names \['x'\], not special tokens"):
        tok.encode("x", disallowed_special={"x"})
    assert tok.decode([eot]) == EOT and tok.token_str(eot) == EOT


def test_bad_ids_and_text_are_refused():
    with pytest.raises(ValueError, match=r"token id 262 at position 1 is outside the vocabulary \[0, 262\)"):
        HANDMADE.decode([1, 262])
    with pytest.raises(ValueError, match="token id -1 at position 0"):
        HANDMADE.token_str(-1)
    with pytest.raises(TypeError, match=r"token id 1.5 at position 0 is not an integer"):
        HANDMADE.decode([1.5])
    with pytest.raises(TypeError, match="not an integer"):
        HANDMADE.decode([True])
    assert HANDMADE.decode(np.array([72, 105])) == HANDMADE.decode([72, 105])
    with pytest.raises(TypeError, match="text must be str, got bytes"):
        HANDMADE.encode(b"abc")
    with pytest.raises(ValueError, match=r"lone surrogate U\+D800 at index 3"):
        HANDMADE.encode("abc\ud800")


def test_word_cache_is_bounded_and_changes_nothing():
    tok = handmade_tokenizer()
    tok.CACHE_SIZE = 10
    words = " ".join(f"w{i}" for i in range(100))
    first = tok.encode(words)
    assert len(tok._cache) <= 10
    assert tok.encode(words) == first == handmade_tokenizer().encode(words)


# --- bad files ---------------------------------------------------------------------------------


def write_tokenizer(folder, vocab=None, merges=None):
    write_tokenizer_files(folder, HANDMADE)
    if vocab is not None:
        (folder / "vocab.json").write_text(vocab, encoding="utf-8")
    if merges is not None:
        (folder / "merges.txt").write_text(merges, encoding="utf-8")
    return folder


def test_files_written_in_gpt2_layout_load_to_the_same_tokenizer(tmp_path):
    tok = Tokenizer.from_pretrained(write_tokenizer(tmp_path))
    assert tok.vocab == HANDMADE.vocab and tok.ranks == HANDMADE.ranks


def _vocab_with(**changes):
    return json.dumps({**HANDMADE.vocab, **changes})


@pytest.mark.parametrize("vocab,match", [
    ('{"a": 1,\n "b": }', r"vocab.json:2:7: not valid JSON"),
    ("[1, 2]", "must be a non-empty object"),
    (_vocab_with(Ġthe=3), "id 3 is given to both"),
    (_vocab_with(Ġthe=999), r"ids must be 0..261, but 258 is missing \(largest id 999\)"),
    (json.dumps({k: v for k, v in HANDMADE.vocab.items() if k != EOT}), r"no '<\|endoftext\|>' token"),
    (json.dumps({**HANDMADE.vocab, "x": "7"}), r"entry 'x': '7' is not a token string -> integer id"),
    (json.dumps({**HANDMADE.vocab, "a b": 262}), r"token 'a b' has ' ', which is not in GPT-2's byte alphabet"),
])
def test_malformed_vocab_is_refused_naming_the_file(tmp_path, vocab, match):
    write_tokenizer(tmp_path, vocab=vocab)
    with pytest.raises(TokenizerError, match=match) as info:
        Tokenizer.from_pretrained(tmp_path)
    assert "vocab.json" in str(info.value)


@pytest.mark.parametrize("merges,match", [
    ("#version: 0.2\nĠ t\nh  e\n", r"merges.txt:3: expected two symbols separated by one space, got 'h  e'"),
    ("#version: 0.2\nĠ t\n\nh e\n", r"merges.txt:3: expected two symbols"),
    ("Ġ t h\n", r"merges.txt:1: expected two symbols"),
    ("#version: 0.2\nĠ t\nq z\n", r"merges.txt:3: 'qz' is not in the vocabulary"),
    ("#version: 0.2\nĠ t\nĠ t\n", r"merges.txt:3: merge 'Ġ' 't' repeats .*merges.txt:2"),
    ("#version: 0.2\nĠ t\n€ t\n", r"merges.txt:3: '€' is not in the vocabulary"),
])
def test_malformed_merges_are_refused_naming_file_and_line(tmp_path, merges, match):
    write_tokenizer(tmp_path, merges=merges)
    with pytest.raises(TokenizerError, match=match):
        Tokenizer.from_pretrained(tmp_path)


def test_missing_tokenizer_files(tmp_path):
    write_tokenizer(tmp_path)
    (tmp_path / "merges.txt").unlink()
    with pytest.raises(CheckpointError, match="no merges.txt"):
        Tokenizer.from_pretrained(tmp_path)
    (tmp_path / "vocab.json").write_bytes(b"\xff\xfe{}")
    with pytest.raises(TokenizerError, match="vocab.json:1: not UTF-8"):
        Tokenizer.from_files(tmp_path / "vocab.json", tmp_path / "vocab.json")
