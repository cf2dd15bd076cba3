"""Tokenizers from a GGUF file's metadata (`tokenizer.ggml.*`, byte-level BPE) against the
references on the same vocabulary and merges: transformers' own GGUF tokenizer (pre-tokenizer
"gpt-2"), and Hugging Face `tokenizers` pipelines as the models' tokenizer.json files spell
them where transformers does not read llama.cpp's pre-tokenizer name (SmolLM's digits first,
LLaMA-3's pattern with ignore_merges); user-defined and control tokens; vocabularies without a
token for every byte (in tokenizer.json too); refusals."""

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import minigpt
from conftest import handmade_tokenizer
from gguf_models import gpt2_style_tokenizer, write_llama_gguf
from minigpt.tokenizer import LLAMA3_PATTERN_STRING, TokenizerError, byte_alphabet
from minigpt.unicode_tables import NUMBERS
from test_tokenizer import FRAGMENTS, sample_corpus

FIELDS = dict(vocab_size=1, hidden_size=32, num_attention_heads=2, num_key_value_heads=1, intermediate_size=32,
              num_hidden_layers=1, max_position_embeddings=16)
TEXTS = st.lists(st.one_of(st.text(st.characters(codec="utf-8")), st.sampled_from(FRAGMENTS)), max_size=16).map("".join)
CRAFTED = ["a \n1", "x 2024 y", "  \n\n 12  34\t5", "x² + y² = ½", "١٢٣ ④", "\x04hello\x1d", "abc\xf1\xff",
           "x\U0001F600y 🐳", "日本語 中文 한국어", "tabs\t\tand   spaces    \n\n\n", "don't WE'LL it's"]


def weights(vocab_size):
    import numpy as np

    rng = np.random.default_rng(0)
    f = dict(FIELDS, vocab_size=vocab_size)
    shapes = minigpt.llama.expected_shapes(minigpt.LlamaConfig(**f))
    return {"model." + n if n != "lm_head.weight" else n: rng.standard_normal(s).astype(np.float32)
            for n, s in shapes.items()}, f


def write(path, tok, pre, bos_token="<|endoftext|>", types=None, **changes):
    fields = gpt2_style_tokenizer(tok, pre=pre, bos=bos_token, types=types)
    fields.update(changes)
    tensors, config = weights(len(fields["tokens"]))
    return write_llama_gguf(path, tensors, config, tokenizer=fields)


def pipeline(tok, pre: str):
    """tokenizers' pipeline for the same vocabulary: the pre-tokenizer of the model's own
    tokenizer.json (GPT-2's; SmolLM2's Digits then ByteLevel; LLaMA-3's Split then ByteLevel,
    ignore_merges), no unknown token, the special tokens added."""
    from tokenizers import Regex, Tokenizer, models, pre_tokenizers

    merges = sorted(tok.ranks, key=tok.ranks.get)
    hf = Tokenizer(models.BPE(dict(tok.vocab), merges, ignore_merges=pre == "llama-bpe"))
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=pre != "llama-bpe")
    hf.pre_tokenizer = {
        "gpt-2": byte_level,
        "smollm": pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True), byte_level]),
        "llama-bpe": pre_tokenizers.Sequence([pre_tokenizers.Split(Regex(LLAMA3_PATTERN_STRING), "isolated"),
                                              byte_level])}[pre]
    hf.add_special_tokens(list(tok.special_tokens))
    return hf


@pytest.fixture(scope="module")
def trained(tok_reference, tmp_path_factory):
    folder = tok_reference.train_byte_level_bpe(sample_corpus(), tmp_path_factory.mktemp("bpe"), 600)
    return minigpt.Tokenizer.from_pretrained(folder)


@pytest.fixture(scope="module", params=["gpt-2", "smollm", "llama-bpe"])
def pair(request, trained, tmp_path_factory):
    path = write(tmp_path_factory.mktemp("g") / "t.gguf", trained, request.param)
    return minigpt.Tokenizer.from_pretrained(path), pipeline(trained, request.param), request.param


_NUMERIC = re.compile("[" + "".join(f"\\U{a:08x}-\\U{b:08x}" for a, b in NUMBERS) + "]")


def ordinary(text: str, pre: str) -> str:
    """The text without special tokens' text (the references match it whole) and, for SmolLM's
    digits, without the 13 numeric characters Unicode 17 added: tokenizers' Digits asks Rust's
    char::is_numeric, which knows them; our \\p{N} (and the regex engines') is Unicode 16."""
    text = text.replace("<|endoftext|>", "")
    if pre == "smollm":
        text = "".join(ch for ch in text if not (ch.isnumeric() or _NUMERIC.match(ch))
                       or not (0x11DE0 <= ord(ch) <= 0x11DE9 or 0x16FF4 <= ord(ch) <= 0x16FF6))
    return text


@settings(max_examples=300, deadline=None)
@given(text=TEXTS | st.sampled_from(CRAFTED))
def test_ids_equal_the_models_own_pipeline(pair, text):
    ours, hf, pre = pair
    text = ordinary(text, pre)
    ids = ours.encode(text)
    assert ids == hf.encode(text, add_special_tokens=False).ids
    assert ours.decode(ids) == text


def test_the_corpora_tokenize_as_the_pipelines(pair, corpora_dir):
    ours, hf, _ = pair
    for path in sorted((corpora_dir / "gutenberg").glob("*.txt"))[:2]:
        text = path.read_text(encoding="utf-8")[:300_000]
        assert ours.encode(text, disallowed_special=()) == hf.encode(text, add_special_tokens=False).ids


def test_gpt2s_pre_tokenizer_equals_transformers_gguf_tokenizer(reference, trained, tmp_path, corpora_dir):
    """transformers reads the same file to the same ids (it builds every GGUF byte-level BPE with
    GPT-2's pattern, whatever tokenizer.ggml.pre says: for "smollm" and "llama-bpe" the pipelines
    above are the references)."""
    path = write(tmp_path / "t.gguf", trained, "gpt-2")
    ours = minigpt.Tokenizer.from_pretrained(path)
    tf = reference.transformers.AutoTokenizer.from_pretrained(tmp_path, gguf_file=path.name)
    texts = CRAFTED + FRAGMENTS + sample_corpus(seed=3, n=200)
    texts.append((corpora_dir / "gutenberg" / "pg2701.txt").read_text(encoding="utf-8")[:200_000])
    for text in texts:
        assert ours.encode(text, allowed_special="all") == tf(text, add_special_tokens=False)["input_ids"], text[:80]


def test_smollms_digits_come_first(pair):
    ours, _, pre = pair
    words = ours.pre_tokenize("a \n1 x² 23")
    assert words == {"smollm": ["a", " \n", "1", " x", "²", " ", "2", "3"],
                     "gpt-2": ["a", " ", "\n", "1", " x", "²", " 23"],
                     "llama-bpe": ["a", " \n", "1", " x", "²", " ", "23"]}[pre]


def test_llama3s_pre_tokenizer_takes_whole_words_from_the_vocabulary_and_adds_bos(pair):
    ours, _, pre = pair
    assert ours.ignore_merges == (pre == "llama-bpe") and ours.add_bos_token == (pre == "llama-bpe")


def test_control_tokens_are_special_and_user_defined_ones_are_matched_whole(trained, tmp_path, reference):
    """Control tokens are special (minigpt: an error in text unless allowed), user-defined ones are
    matched whole in any text by their literal text, as llama.cpp's converter writes them ("a b"
    with its space). transformers agrees on a token spelled in the byte alphabet ("<tag>"); one
    with a space it respells as "aĠb", which text never holds: there it never matches."""
    fields = gpt2_style_tokenizer(trained, pre="gpt-2", bos="<|endoftext|>", types={"the": 3})
    fields["tokens"] += ["<tag>", "a b"]
    fields["token_type"] += [4, 4]
    tensors, config = weights(len(fields["tokens"]))
    path = write_llama_gguf(tmp_path / "u.gguf", tensors, config, tokenizer=fields)
    ours = minigpt.Tokenizer.from_pretrained(path)
    assert "the" in ours.special_tokens and set(ours.added_tokens) == {"<tag>", "a b"}
    with pytest.raises(ValueError, match="special token 'the'"):
        ours.encode("in the sea")
    tf = reference.transformers.AutoTokenizer.from_pretrained(tmp_path, gguf_file=path.name)
    for text in ["in the sea <tag>", "<tag><tag>x<tag>", "other text", "<ta", "there <tag>ab"]:
        ids = ours.encode(text, allowed_special="all")
        assert ids == tf(text, add_special_tokens=False)["input_ids"], text
        assert ours.decode(ids) == text
    n = len(fields["tokens"])
    assert ours.encode("x<tag>ya b") == ours.encode("x") + [n - 2] + ours.encode("y") + [n - 1]
    assert ours.decode(ours.encode("a b<tag>")) == "a b<tag>"


def test_bos_and_eos_come_from_the_ids(trained, tmp_path):
    path = write(tmp_path / "b.gguf", trained, "gpt-2", bos_token="<|endoftext|>")
    tok = minigpt.Tokenizer.from_pretrained(path)
    assert tok.bos_token_id == trained.vocab["<|endoftext|>"] == tok.eos_token_id


# --- vocabularies without a token for every byte --------------------------------------------------


# A dropped byte between symbols of one word that merge: they merge ("..\x04." is "...", not ".." "."). The
# bytes SmolLM2 lacks are controls and bytes of no or unassigned characters, never inside a run of
# letters (GPT-2's pattern cuts there): inside a run of punctuation they are.
DROPPED = ["\x04", "a\x04b", "..\x04.", "!\x04!.\x1d..", " the\x04\x06 w\x1dhale\x04", "\U00050000", "\xc0\xf5"]
SMOLLM2_MISSING = bytes([0x04, 0x06, 0x13, 0x14, 0x16, 0x1D, 0xC0, 0xC1, 0xF1, 0xF2, *range(0xF5, 0x100)])


def without_bytes(tok):
    """The tokenizer's vocabulary without the tokens of the bytes SmolLM2's vocabulary has none
    for (those no merge of this vocabulary uses), ids 0..n-1."""
    alphabet = byte_alphabet()
    used = {ch for pair in tok.ranks for s in pair for ch in s}
    gone = {alphabet[b] for b in SMOLLM2_MISSING} - used
    assert len(gone) >= 15 and alphabet[0xF1] in gone and alphabet[0x04] in gone
    kept = [t for t, _ in sorted(tok.vocab.items(), key=lambda kv: kv[1]) if t not in gone]
    return minigpt.Tokenizer({t: i for i, t in enumerate(kept)}, sorted(tok.ranks, key=tok.ranks.get))


@settings(max_examples=200, deadline=None)
@given(text=TEXTS | st.sampled_from(CRAFTED + DROPPED))
def test_a_byte_without_a_token_is_dropped_as_tokenizers_drops_it(trained, text):
    ours = without_bytes(trained)
    text = ordinary(text, "gpt-2")
    assert ours.encode(text) == pipeline(ours, "gpt-2").encode(text, add_special_tokens=False).ids
    assert set(ours.missing_bytes) <= set(SMOLLM2_MISSING) and 0x04 in ours.missing_bytes


def test_the_byte_is_dropped_not_the_character(trained):
    """U+50000 is F1 90 80 80: without a token for F1, its three continuation bytes stay, and
    decode to three U+FFFD; the neighbours of a dropped byte may merge (as tokenizers does)."""
    ours = without_bytes(trained)
    ids = ours.encode("x\U00050000y")
    assert ours.decode(ids) == "x\ufffd\ufffd\ufffdy" and len(ours.decode_bytes(ids)) == 5
    assert ours.decode(ours.encode("the\x04 whale")) == "the whale"
    assert ours.encode("..\x04.") == ours.encode("...") == [ours.vocab["..."]]


def test_tokenizer_json_without_every_byte_loads_too(trained, tmp_path):
    ours = without_bytes(trained)
    hf = pipeline(ours, "gpt-2")
    hf.save(str(tmp_path / "tokenizer.json"))
    loaded = minigpt.Tokenizer.from_pretrained(tmp_path)
    for text in CRAFTED:
        assert loaded.encode(text) == hf.encode(text, add_special_tokens=False).ids


def test_a_tokenizer_json_with_smollms_pre_tokenizer_reads_as_smollm(trained, tmp_path):
    hf = pipeline(trained, "smollm")
    hf.save(str(tmp_path / "tokenizer.json"))
    loaded = minigpt.Tokenizer.from_pretrained(tmp_path)
    assert loaded.pattern == "smollm"
    for text in CRAFTED:
        assert loaded.encode(text) == hf.encode(text, add_special_tokens=False).ids


# --- refusals ----------------------------------------------------------------------------------


@pytest.mark.parametrize("changes,match", [
    ({"model": "bert"}, "tokenizer.ggml.model is 'bert'; minigpt reads byte-level BPE vocabularies (\"gpt2\") and "
                        "SentencePiece-style ones (\"llama\")"),
    ({"pre": "default"}, "tokenizer.ggml.pre is 'default', a pre-tokenizer minigpt does not know"),
    ({"pre": None}, "no tokenizer.ggml.pre; minigpt needs the pre-tokenizer named"),
    ({"bos": 10**6}, "tokenizer.ggml.bos_token_id is 1000000, past the {n} tokens"),
    ({"merges": "a bad second"}, "tokenizer.ggml.merges[1]: 'zz' is not in the vocabulary"),
    ({"merges": ["Ġt"]}, "tokenizer.ggml.merges[0]: \"\\u0120t\" (expected two symbols"),
    ({"token_type": [6]}, "has type 6 (a byte token of a SentencePiece vocabulary)"),
    ({"token_type": [1] * 3}, "tokenizer.ggml.token_type has 3 entries for {n} tokens"),
])
def test_metadata_a_tokenizer_cannot_be_built_from_is_refused_by_key(trained, tmp_path, changes, match):
    n = trained.vocab_size
    if changes.get("token_type") == [6]:
        changes = {"token_type": [6] + [1] * (n - 1)}
    if changes.get("merges") == "a bad second":
        changes = {"merges": [" ".join(min(trained.ranks, key=trained.ranks.get)), "zz q"]}
    path = write(tmp_path / "r.gguf", trained, **{"pre": "gpt-2", **changes})
    with pytest.raises(TokenizerError) as info:
        minigpt.Tokenizer.from_pretrained(path)
    assert str(info.value).startswith(str(path)) and "\n" not in str(info.value)
    assert match.format(n=n) in str(info.value), str(info.value)


def test_repeated_tokens_are_refused(trained, tmp_path):
    fields = gpt2_style_tokenizer(trained, pre="gpt-2", bos="<|endoftext|>")
    fields["tokens"][5] = fields["tokens"][4]
    tensors, config = weights(len(fields["tokens"]))
    path = write_llama_gguf(tmp_path / "d.gguf", tensors, config, tokenizer=fields)
    with pytest.raises(TokenizerError, match=r"tokenizer.ggml.tokens\[5\] .* repeats token 4"):
        minigpt.Tokenizer.from_pretrained(path)


def test_handmade_vocabulary_round_trips_through_a_gguf(tmp_path):
    tok = handmade_tokenizer()
    path = write(tmp_path / "h.gguf", tok, "gpt-2")
    loaded = minigpt.Tokenizer.from_pretrained(path)
    assert loaded.vocab == tok.vocab and loaded.ranks == tok.ranks and loaded.encode("the abab") == tok.encode("the abab")
