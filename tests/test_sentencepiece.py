"""SentencePiece-style BPE (minigpt/tokenizer.py's SentencePieceTokenizer) against Hugging Face tokenizers on a
vocabulary trained here: tokenizer.json as Gemma writes it (Replace " " -> "▁", no pre-split), as
Llama 2 writes it (Metaspace "first", a Strip decoder) and in its older form (Prepend + Replace),
and "always"; byte fallback for characters the vocabulary lacks, added and special tokens; GGUF
files of the "llama" tokenizer model (merges derived from the scores) against transformers' GGUF
tokenizer; near-linear cost on a paragraph with no pre-split; refusals."""

import json
import time

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import minigpt
from minigpt.tokenizer import SentencePieceTokenizer, derived_merges
from minigpt.tokenizer import TokenizerError
from test_gguf_tokenizer import CRAFTED
from test_tokenizer import FRAGMENTS, sample_corpus

SPECIAL = ["<pad>", "<eos>", "<bos>", "<unk>", "<start_of_turn>"]
ADDED = ["\n", "\n\n", "<b>", "</b>"]
STYLES = ("gemma", "llama2", "legacy", "always")
TEXTS = st.lists(st.one_of(st.text(st.characters(codec="utf-8")), st.sampled_from(FRAGMENTS + SPECIAL + ADDED + [" ", "  "])),
                 max_size=16).map("".join)
MORE = CRAFTED + ["", " ", "  two", "x  ", "<b>bold</b>\n\nnext", "<bos>after a special", "a<start_of_turn> b",
                  "日本語のテキスト 😀", "\x00\x01\x7f", "ǅ ﬁ Ünïcödé", "\n", " \n ", "🐳" * 40]


@pytest.fixture(scope="module")
def trained():
    """(vocab, merges) of a BPE trained on the test corpus with "▁" for spaces, then the 256
    <0xXX> byte tokens: the layout of Llama 2's and Gemma's vocabularies."""
    from tokenizers import Tokenizer, models, normalizers, trainers

    t = Tokenizer(models.BPE(byte_fallback=True, unk_token="<unk>"))
    t.normalizer = normalizers.Replace(" ", "▁")
    t.add_special_tokens(SPECIAL)
    t.train_from_iterator(sample_corpus(), trainers.BpeTrainer(vocab_size=700, special_tokens=SPECIAL, show_progress=False))
    model = json.loads(t.to_str())["model"]
    vocab = dict(model["vocab"])
    for b in range(256):
        vocab.setdefault(f"<0x{b:02X}>", len(vocab))
    for token in ADDED:
        vocab.setdefault(token, len(vocab))
    return vocab, [tuple(m) if isinstance(m, list) else tuple(m.split(" ")) for m in model["merges"]]


def reference_pipeline(trained, style: str):
    from tokenizers import AddedToken, Tokenizer, decoders, models, normalizers, pre_tokenizers

    vocab, merges = trained
    hf = Tokenizer(models.BPE(vocab, merges, byte_fallback=True, unk_token="<unk>", fuse_unk=True))
    decode = [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()]
    if style == "gemma":
        hf.normalizer = normalizers.Replace(" ", "▁")
        hf.pre_tokenizer = pre_tokenizers.Split(" ", "merged_with_previous")
    elif style == "legacy":
        hf.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    else:
        hf.pre_tokenizer = pre_tokenizers.Metaspace("▁", prepend_scheme="first" if style == "llama2" else "always",
                                                    split=False)
    if style != "gemma":
        decode.append(decoders.Strip(" ", 1, 0))
    hf.decoder = decoders.Sequence(decode)
    hf.add_special_tokens([AddedToken(t, normalized=False, special=True) for t in SPECIAL])
    hf.add_tokens([AddedToken(t, normalized=False, special=False) for t in ADDED])
    return hf


@pytest.fixture(scope="module", params=STYLES)
def pair(request, trained, tmp_path_factory):
    hf = reference_pipeline(trained, request.param)
    folder = tmp_path_factory.mktemp(request.param)
    hf.save(str(folder / "tokenizer.json"))
    (folder / "tokenizer_config.json").write_text(json.dumps({"bos_token": "<bos>", "eos_token": "<eos>"}))
    ours = minigpt.Tokenizer.from_pretrained(folder)
    assert isinstance(ours, SentencePieceTokenizer)
    return request.param, ours, hf


@settings(max_examples=150, deadline=None)
@given(text=TEXTS)
def test_ids_and_text_equal_hugging_face_tokenizers(pair, text):
    _, ours, hf = pair
    ids = ours.encode(text, allowed_special="all")
    assert ids == hf.encode(text, add_special_tokens=False).ids
    assert ours.decode(ids) == hf.decode(ids, skip_special_tokens=False)


def test_crafted_cases_and_the_corpora_equal_hugging_face_tokenizers(pair, corpora_dir):
    style, ours, hf = pair
    books = [p.read_text(encoding="utf-8", errors="replace")[:30000] for p in sorted((corpora_dir / "gutenberg").glob("*.txt"))[:3]]
    for text in MORE + books:
        ids = ours.encode(text, allowed_special="all")
        assert ids == hf.encode(text, add_special_tokens=False).ids, (style, text[:60])
        assert ours.decode(ids) == hf.decode(ids, skip_special_tokens=False), (style, text[:60])


def test_the_prefix_schemes_differ_where_they_should(pair):
    """The same text, three answers: Gemma puts no "▁" before it, Llama 2 one before the text, the
    older form one before every piece between added tokens."""
    style, ours, _ = pair
    words = ours.pre_tokenize("hello world")
    assert words == (["hello▁world"] if style == "gemma" else ["▁hello▁world"])
    ids = ours.encode("a<b>c", allowed_special="all")
    assert ours.token_str(ids[0]).startswith(" ") == (style != "gemma")
    assert ours.decode(ids) == ("a<b> c" if style in ("legacy", "always") else "a<b>c")


def test_characters_outside_the_vocabulary_fall_back_to_their_bytes(pair):
    _, ours, _ = pair
    ids = ours.encode("語", disallowed_special=())
    assert [ours.token_str(i) for i in ids][-3:] == ["\\xe8", "\\xaa", "\\x9e"]
    assert ours.decode(ids).endswith("語") and ours.missing_bytes == b""


def test_a_long_paragraph_costs_near_linear_time(pair):
    """No pre-split: a paragraph is one word. A naive BPE (rescan every pair after each merge) is
    quadratic; the heap's cost per character may grow with log n only. Time is compared as a
    ratio of two runs, never against a number of seconds."""
    _, ours, _ = pair
    rng = np.random.default_rng(0)
    words = "the whale ship sea captain love hate Ishmael Ahab morning evening quickly".split()
    text = " ".join(rng.choice(words, 40_000))
    short, long = text[:len(text) // 16], text

    def per_char(t):
        ours._cache.clear()
        start = time.perf_counter()
        ours.encode(t, disallowed_special=())
        return (time.perf_counter() - start) / len(t)

    ratio = min(per_char(long) for _ in range(2)) / min(per_char(short) for _ in range(3))
    assert ratio < 3, f"per-character cost grew {ratio:.1f}x from {len(short):,} to {len(long):,} characters"


def test_merges_are_derived_in_transformers_order(reference, trained):
    from transformers.tokenization_utils_base import generate_merges

    vocab, _ = trained
    tokens = sorted(vocab, key=vocab.get)
    rng = np.random.default_rng(1)
    for priority in ([-i for i in range(len(tokens))], rng.integers(-5, 5, len(tokens)).tolist()):
        ref = generate_merges(vocab, dict(zip(tokens, priority)))
        assert derived_merges(tokens, priority) == ref


# --- GGUF ----------------------------------------------------------------------------------------


def gguf_tokenizer_fields(trained, prefix: bool):
    vocab, merges = trained
    tokens = sorted(vocab, key=vocab.get)
    rank = {a + b: i for i, (a, b) in enumerate(merges)}                   # a token's score: earlier merges higher
    types = [3 if t in SPECIAL else 6 if t.startswith("<0x") else 4 if t in ADDED else 1 for t in tokens]
    return {"model": "llama", "tokens": tokens, "token_type": types, "merges": None,
            "scores": [0.0 if len(t) == 1 else -float(rank.get(t, len(rank))) for t in tokens],
            "bos": vocab["<bos>"], "eos": vocab["<eos>"], "unk": vocab["<unk>"], "add_bos": True,
            "add_space_prefix": prefix}


def write_spm_gguf(trained, path, prefix: bool):
    from gguf_models import write_llama_gguf
    from test_gguf_tokenizer import weights

    fields = gguf_tokenizer_fields(trained, prefix)
    tensors, config = weights(len(fields["tokens"]))
    return write_llama_gguf(path, tensors, config, tokenizer=fields)


def test_a_gguf_llama_vocabulary_equals_transformers_gguf_tokenizer(reference, trained, tmp_path):
    path = write_spm_gguf(trained, tmp_path / "spm.gguf", prefix=True)
    ours = minigpt.Tokenizer.from_pretrained(path)
    hf = reference.transformers.AutoTokenizer.from_pretrained(tmp_path, gguf_file="spm.gguf")
    assert (ours.bos_token, ours.eos_token, ours.add_bos_token, ours.prefix) == ("<bos>", "<eos>", True, "first")
    for text in MORE + sample_corpus(n=200):
        ids = ours.encode(text, allowed_special="all")
        assert ids == hf.encode(text, add_special_tokens=False), text[:60]
        assert ours.decode(ids) == hf.decode(ids), text[:60]


def test_add_space_prefix_false_puts_no_space_before_the_text(trained, tmp_path):
    """As llama.cpp reads the key (transformers' GGUF loader ignores it for Llama-style files and
    always prefixes; Gemma's files say false and get none there either)."""
    spaced = minigpt.Tokenizer.from_pretrained(write_spm_gguf(trained, tmp_path / "a.gguf", prefix=True))
    bare = minigpt.Tokenizer.from_pretrained(write_spm_gguf(trained, tmp_path / "b.gguf", prefix=False))
    assert bare.prefix == "never"
    for text in sample_corpus(n=100):
        text = text.lstrip(" ")
        assert bare.encode(" " + text) == spaced.encode(text) != bare.encode(text), text


@pytest.mark.parametrize("change,match", [
    ({"scores": None}, "no tokenizer.ggml.merges, and tokenizer.ggml.scores is missing"),
    ({"unk": 10**6}, "tokenizer.ggml.unknown_token_id is 1000000, past the"),
    ({"token_type": [1, 1]}, "tokenizer.ggml.token_type has 2 entries for"),
])
def test_llama_vocabularies_that_cannot_be_built_are_refused_by_key(trained, tmp_path, change, match):
    from gguf_models import write_llama_gguf
    from test_gguf_tokenizer import weights

    fields = {**gguf_tokenizer_fields(trained, True), **change}
    tensors, config = weights(len(fields["tokens"]))
    path = write_llama_gguf(tmp_path / "bad.gguf", tensors, config, tokenizer=fields)
    with pytest.raises(TokenizerError) as info:
        minigpt.Tokenizer.from_pretrained(path)
    assert str(info.value).startswith(str(path)) and match in str(info.value) and "\n" not in str(info.value)


def test_tokenizer_json_of_an_unknown_kind_is_refused_naming_its_steps(trained, tmp_path):
    from tokenizers import normalizers

    hf = reference_pipeline(trained, "gemma")
    hf.normalizer = normalizers.Lowercase()
    hf.save(str(tmp_path / "tokenizer.json"))
    with pytest.raises(TokenizerError) as info:
        minigpt.Tokenizer.from_pretrained(tmp_path)
    assert "normalizer ['Lowercase'] with pre-tokenizer ['Split'] is not a SentencePiece-style BPE" in str(info.value)
