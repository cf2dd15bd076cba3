"""Hostile tokenizer files: tokenizer.json, tokenizer_config.json, vocab.json and merges.txt of
the wrong JSON shape, with missing or mistyped fields, nested too deep, not UTF-8, or with tens of
thousands of special tokens: a one-line error naming the file and the field, or a correct load in
time linear in the vocabulary. A fuzz of tokenizer.json holds every mutation to that."""

import json
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import handmade_tokenizer, write_tokenizer_files
from hostile import bounded, mutate
from minigpt import CheckpointError, Tokenizer, TokenizerError

BASE = handmade_tokenizer()
TEXT = " the abab the ab <|endoftext|> ba"


def tokenizer_json(**changes) -> dict:
    """A valid tokenizer.json of the handmade tokenizer (GPT-2's pre-tokenizer), changed."""
    doc = {"model": {"type": "BPE", "vocab": dict(BASE.vocab),
                     "merges": [f"{a} {b}" for a, b in sorted(BASE.ranks, key=BASE.ranks.get)]},
           "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": False, "use_regex": True},
           "added_tokens": [{"id": BASE.vocab["<|endoftext|>"], "content": "<|endoftext|>", "special": True}]}
    doc.update(changes)
    return doc


def load_json(tmp_path, doc, raw: bytes | None = None):
    path = tmp_path / "tokenizer.json"
    path.write_bytes(raw if raw is not None else json.dumps(doc).encode())
    return path, bounded(Tokenizer.from_tokenizer_json, path)[0]


def assert_refused(outcome, path, message):
    assert isinstance(outcome, TokenizerError), repr(outcome)
    assert str(outcome).startswith(f"{path}") and message in str(outcome) and "\n" not in str(outcome), str(outcome)


def test_the_valid_file_loads_and_encodes_as_the_handmade_tokenizer(tmp_path):
    _, tok = load_json(tmp_path, tokenizer_json())
    assert tok.encode(TEXT, allowed_special="all") == BASE.encode(TEXT, allowed_special="all")


@pytest.mark.parametrize("doc,message", [
    ([1, 2], "an array (expected a JSON object with a model)"),
    ("tokenizer", "a string (expected a JSON object with a model)"),
    (tokenizer_json(model="BPE"), 'model: type "BPE" (expected a byte-level BPE'),
    (tokenizer_json(model={"type": "WordPiece", "vocab": {}}), 'model: type "WordPiece"'),
    (tokenizer_json(pre_tokenizer="ByteLevel"), 'pre_tokenizer: "ByteLevel" is a string (expected an object)'),
    (tokenizer_json(pre_tokenizer={"type": "Sequence", "pretokenizers": "ByteLevel"}),
     "pre_tokenizer.pretokenizers: a string (expected an array)"),
    (tokenizer_json(added_tokens={"id": 1}), "added_tokens: an object (expected an array of tokens)"),
    (tokenizer_json(added_tokens=[{"id": 261}]), 'added_tokens[0]: {"id": 261} (expected an object with a string content'),
    (tokenizer_json(added_tokens=[{"content": "<|endoftext|>"}]), "added_tokens[0]:"),
    (tokenizer_json(added_tokens=[{"content": "<x>", "id": "262"}]), "added_tokens[0]:"),
    (tokenizer_json(added_tokens=["<x>"]), 'added_tokens[0]: "<x>" (expected an object'),
    (tokenizer_json(model={**tokenizer_json()["model"], "merges": [["a"]]}), 'model.merges[0]: ["a"] (expected two symbols'),
    (tokenizer_json(model={**tokenizer_json()["model"], "merges": "a b"}), "model.merges: a string (expected an array)"),
    (tokenizer_json(model={**tokenizer_json()["model"], "ignore_merges": "false"}),
     'model.ignore_merges: "false" is a string (expected true or false)'),
])
def test_tokenizer_json_of_the_wrong_shape_is_refused_by_field(tmp_path, doc, message):
    path, outcome = load_json(tmp_path, doc)
    assert_refused(outcome, path, message)


def test_tokenizer_json_nested_too_deep_or_not_utf8(tmp_path):
    path, outcome = load_json(tmp_path, None, b'{"model": ' + b"[" * 100_000 + b"]" * 100_000 + b"}")
    assert_refused(outcome, path, "JSON nested deeper than 64 levels")
    path, outcome = load_json(tmp_path, None, b'{"model":\n {"type": "BPE\xc3("}}')
    assert_refused(outcome, path, ":2: not UTF-8 text (byte 0xc3 at offset 24)")


def folder_with_config(tmp_path, config) -> object:
    write_tokenizer_files(tmp_path, BASE)
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(config) if not isinstance(config, bytes) else "")
    return bounded(Tokenizer.from_pretrained, tmp_path)[0]


@pytest.mark.parametrize("config,message", [
    (["bos_token"], "tokenizer_config.json: an array (expected a JSON object)"),
    ("</s>", "tokenizer_config.json: a string (expected a JSON object)"),
    ({"bos_token": 7}, "tokenizer_config.json: bos_token: 7 (expected a token string"),
    ({"eos_token": {"content": ["<|endoftext|>"]}}, "tokenizer_config.json: eos_token:"),
    ({"added_tokens_decoder": ["x"]}, "tokenizer_config.json: added_tokens_decoder: an array (expected an object"),
])
def test_tokenizer_config_of_the_wrong_shape_is_refused_by_field(tmp_path, config, message):
    outcome = folder_with_config(tmp_path, config)
    assert isinstance(outcome, TokenizerError) and message in str(outcome) and "\n" not in str(outcome), repr(outcome)


def test_a_bom_and_windows_line_ends_read_as_the_plain_files(tmp_path):
    write_tokenizer_files(tmp_path, BASE)
    vocab, merges = tmp_path / "vocab.json", tmp_path / "merges.txt"
    vocab.write_bytes(b"\xef\xbb\xbf" + vocab.read_bytes())
    merges.write_bytes(merges.read_bytes().replace(b"\n", b"\r\n"))
    tok = Tokenizer.from_pretrained(tmp_path)
    assert tok.vocab == BASE.vocab and tok.ranks == BASE.ranks


def test_loading_is_linear_in_the_special_tokens(tmp_path):
    """Before: 16k specials 1.13 s, 32k 4.52 s (quadratic); measured after: 0.03 s and 0.07 s."""
    times = {}
    for n in (4096, 32768):
        added = [{"id": len(BASE.vocab) + i, "content": f"<|reserved_{i}|>", "special": True} for i in range(n)]
        doc = tokenizer_json()
        doc["added_tokens"] += added
        path = tmp_path / f"t{n}.json"
        path.write_text(json.dumps(doc))
        best = float("inf")
        for _ in range(3):                          # best of three: one GC pause must not fail the test
            start = time.perf_counter()
            tok = Tokenizer.from_tokenizer_json(path)
            best = min(best, time.perf_counter() - start)
        times[n] = best
        assert len(tok.special_tokens) == n + 1
    # 8x the tokens: linear is ~8x the time, the quadratic loop it replaced was ~64x (a ratio of
    # two timings of one run; no fixed seconds, which a loaded machine exceeds)
    assert times[32768] < 24 * max(times[4096], 0.005), times


# --- fuzz ---------------------------------------------------------------------------------------

JSON_VALUES = st.recursive(st.none() | st.booleans() | st.integers(-5, 300) | st.floats() | st.text(max_size=6),
                           lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner,
                                                                                         max_size=3), max_leaves=8)
PLACES = [("model",), ("model", "type"), ("model", "vocab"), ("model", "merges"), ("model", "ignore_merges"),
          ("pre_tokenizer",), ("pre_tokenizer", "type"), ("pre_tokenizer", "use_regex"), ("added_tokens",),
          ("added_tokens", 0), ("added_tokens", 0, "id"), ("added_tokens", 0, "content"), ("model", "vocab", "Ġ"),
          ("model", "merges", 0)]


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(changes=st.lists(st.tuples(st.sampled_from(PLACES), JSON_VALUES), max_size=3))
def test_fuzzed_tokenizer_json_loads_or_is_refused_in_one_line(tmp_path_factory, changes):
    doc = tokenizer_json()
    for place, value in changes:
        mutate(doc, place, value)
    path, outcome = load_json(tmp_path_factory.mktemp("tok"), doc)
    if isinstance(outcome, Exception):
        assert isinstance(outcome, (TokenizerError, CheckpointError)), repr(outcome)
        assert str(outcome).startswith(str(path)) and "\n" not in str(outcome), str(outcome)
    else:
        ids = outcome.encode(" the ab", disallowed_special=())
        assert outcome.decode(ids) == " the ab"
