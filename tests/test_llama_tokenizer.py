"""LLaMA-3's tokenizer: a byte-level BPE trained here with `tokenizers`, LLaMA-3's pre-tokenizer
(its regex, then ByteLevel without one), its special tokens and `ignore_merges`, saved as
tokenizer.json. minigpt's ids equal `tokenizers`' and tiktoken's (with LLaMA-3's pattern string
and the same ranks) on hypothesis text and the shared corpora; decoding round-trips; GPT-2's
tokenization is untouched."""

import json
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import actadd
import minigpt
from minigpt.tokenizer import LLAMA3_PATTERN_STRING, PATTERNS, TokenizerError, byte_alphabet

SPECIALS = ["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"]
TEXTS = ["It's the whale's sea, THE WHALE'S SEA; they'll say 12345678 times.\n\n\n  Done!!  \r\n",
         "Numbers 1, 22, 333, 4444, 55555; émigré naïve café — “quotes” ‘here’ 東京 Ω ∑ 🐳🐳.",
         "    indented\tcode = x[0] + y**2  # comment\n\t\tmore\n", "a b  c   d\n\ne\n \n"] * 20


def train(folder, texts, vocab_size=400):
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE(ignore_merges=True))
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(LLAMA3_PATTERN_STRING), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=False)])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=2, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), special_tokens=[])
    tok.train_from_iterator(texts, trainer)
    tok.add_special_tokens(SPECIALS)
    folder.mkdir(parents=True, exist_ok=True)
    tok.save(str(folder / "tokenizer.json"))
    (folder / "tokenizer_config.json").write_text(json.dumps({"bos_token": "<|begin_of_text|>",
                                                              "eos_token": "<|end_of_text|>"}))
    return tok


def tiktoken_of(ours):
    import tiktoken

    unspell = {ch: b for b, ch in enumerate(byte_alphabet())}
    ranks = {bytes(unspell[c] for c in t): i for t, i in ours.vocab.items() if t not in ours.special_tokens}
    return tiktoken.Encoding("llama3-from-files", pat_str=LLAMA3_PATTERN_STRING, mergeable_ranks=ranks,
                             special_tokens=dict(ours.special_tokens))


@pytest.fixture(scope="module")
def trained(tmp_path_factory, request):
    folder = tmp_path_factory.mktemp("llama3-tok")
    hf = train(folder, TEXTS)
    return hf, minigpt.Tokenizer.from_pretrained(folder), folder


def test_it_reads_llama3s_tokenizer_json(trained):
    hf, ours, _ = trained
    assert ours.pattern == "llama3" and ours.ignore_merges
    assert ours.bos_token_id == hf.token_to_id("<|begin_of_text|>") and ours.eos_token_id == hf.token_to_id("<|end_of_text|>")
    assert set(SPECIALS) <= set(ours.special_tokens)
    assert actadd.tokens_with_bos(ours, "the whale")[0] == hf.token_to_id("<|begin_of_text|>")


@settings(max_examples=300, deadline=None)
@given(text=st.text(st.characters(codec="utf-8"), max_size=60) | st.sampled_from(TEXTS))
def test_ids_equal_tokenizers_and_tiktoken(trained, text):
    hf, ours, _ = trained
    ids = ours.encode(text)
    assert ids == hf.encode(text, add_special_tokens=False).ids
    assert ids == tiktoken_of(ours).encode_ordinary(text)
    assert ours.decode(ids) == text


def test_the_pattern_equals_tokenizers_pre_tokenizer_on_crafted_text():
    from tokenizers import Regex, pre_tokenizers

    split = pre_tokenizers.Split(Regex(LLAMA3_PATTERN_STRING), behavior="isolated", invert=False)
    full, bmp = PATTERNS["llama3"]
    for text in TEXTS[:4] + ["IT'S THEY'LL we'VE ſ's K's", "x\r\ny\r\n\r\n  z", "1234567890 ٣٤٥٦ ①②"]:
        words = [w for w, _ in split.pre_tokenize_str(text)]
        assert full.findall(text) == words
        if not re.search("[\U00010000-\U0010ffff]", text):
            assert bmp.findall(text) == words


def test_the_shared_corpora_tokenize_as_the_references(corpora_dir, tmp_path):
    texts = [p.read_text(encoding="utf-8") for p in sorted((corpora_dir / "gutenberg").glob("*.txt"))][:3]
    hf = train(tmp_path, [t[:200_000] for t in texts], vocab_size=2000)
    ours = minigpt.Tokenizer.from_pretrained(tmp_path)
    enc = tiktoken_of(ours)
    for t in texts:
        ids = ours.encode(t, disallowed_special=())
        assert ids == hf.encode(t, add_special_tokens=False).ids == enc.encode_ordinary(t)
        assert ours.decode(ids) == t


def test_gpt2_tokenization_is_unchanged(gpt2_tokenizer_dir):
    """A GPT-2 folder is still read from vocab.json + merges.txt with GPT-2's pattern."""
    tok = minigpt.Tokenizer.from_pretrained(gpt2_tokenizer_dir)
    assert tok.pattern == "gpt2" and not tok.ignore_merges
    assert tok.encode("Hello world, it's 12345") == [15496, 995, 11, 340, 338, 17031, 2231]


def test_unsupported_pre_tokenizers_are_refused(trained, tmp_path):
    _, _, folder = trained
    raw = json.loads((folder / "tokenizer.json").read_text())
    raw["pre_tokenizer"]["pretokenizers"][0]["pattern"]["Regex"] = r"\w+"
    (tmp_path / "tokenizer.json").write_text(json.dumps(raw))
    with pytest.raises(TokenizerError, match=r"splits on '\\\\w\+', which is neither GPT-2's nor LLaMA-3's"):
        minigpt.Tokenizer.from_pretrained(tmp_path)
    raw["pre_tokenizer"] = {"type": "Whitespace"}
    (tmp_path / "tokenizer.json").write_text(json.dumps(raw))
    with pytest.raises(TokenizerError, match=r"pre-tokenizer \['Whitespace'\] is not supported"):
        minigpt.Tokenizer.from_pretrained(tmp_path)


@pytest.mark.parametrize("ignore", [True, False])
def test_ignore_merges_takes_a_whole_word_from_the_vocabulary(trained, tmp_path, ignore):
    """With ignore_merges (LLaMA-3's setting), a word that is itself a token is that token even
    where no merge builds it; without, only the merges apply. As `tokenizers` does."""
    from tokenizers import Tokenizer as HFTokenizer

    _, _, folder = trained
    raw = json.loads((folder / "tokenizer.json").read_text())
    vocab = {ch: i for i, ch in enumerate(byte_alphabet())}
    vocab.update({"ab": 256, "abc": 257})
    raw["model"].update(vocab=vocab, merges=["a b"], ignore_merges=ignore)
    raw["added_tokens"] = [dict(t, id=258 + i) for i, t in enumerate(raw["added_tokens"])]
    (tmp_path / "tokenizer.json").write_text(json.dumps(raw))
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"bos_token": "<|begin_of_text|>"}))
    ours = minigpt.Tokenizer.from_pretrained(tmp_path)
    hf = HFTokenizer.from_file(str(tmp_path / "tokenizer.json"))
    for text in ["abc", "abcab xabc", "abcabc"]:
        assert ours.encode(text) == hf.encode(text, add_special_tokens=False).ids
    assert ours.encode("abc") == ([257] if ignore else [256, byte_alphabet().index("c")])
