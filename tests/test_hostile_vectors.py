"""Hostile steering-vector files, safetensors and GGUF: non-finite values refused on save and on
load (naming file and tensor), shapes llama.cpp would refuse, manifest and metadata fields of the
wrong JSON type, unreadable metadata; and fuzzes of the manifest and of GGUF bytes that end in a
correct, finite vector or a one-line VectorFileError, never a traceback."""

import json
from dataclasses import replace

import gguf
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors import safe_open
from safetensors.numpy import save_file

import actadd
from actadd.cli import main
from actadd.vector_io import VectorFileError, export_gguf, import_gguf
from conftest import handmade_tokenizer, random_model
from hostile import bounded, mutate
from minigpt import GPT2Config

TOK = handmade_tokenizer()
CONFIG = GPT2Config(n_layer=4, n_head=2, n_embd=16, n_positions=32, vocab_size=262)
PAIRS = [("the ab", "ab"), (" the", "abab the")]


@pytest.fixture(scope="module")
def model():
    return random_model(CONFIG, seed=5)


@pytest.fixture(scope="module")
def vectors(model):
    matrix = actadd.steering_vector(model, actadd.x_vector(TOK, "the ab", "", 2.5, 1))
    direction = actadd.mean_of_pairs(model, TOK, PAIRS, 2.5, [2, 3], reading="last", positions="all")
    return matrix, direction


def refused(outcome, path, *parts):
    assert isinstance(outcome, VectorFileError), repr(outcome)
    text = str(outcome)
    assert text.startswith(str(path)) and "\n" not in text and all(p in text for p in parts), text


def with_value(array, index, value):
    out = array.copy()
    out[index] = value
    return out


@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
def test_non_finite_vectors_are_refused_on_save(vectors, tmp_path, value):
    matrix, direction = vectors
    bad = replace(matrix, activations=(with_value(matrix.activations[0], (1, 3), value),) + matrix.activations[1:])
    refused(bounded(actadd.save, bad, tmp_path / "m.safetensors")[0], tmp_path / "m.safetensors",
            "tensor addition.0 holds 1 non-finite values (NaN or inf), the first at (1, 3)")
    bad = replace(direction, directions=(direction.directions[0], with_value(direction.directions[1], 5, value)))
    for name in ("d.safetensors", "d.gguf"):
        refused(bounded(actadd.save, bad, tmp_path / name)[0], tmp_path / name, "tensor resid.3 holds 1 non-finite")
    assert sorted(p.name for p in tmp_path.iterdir()) == []                 # nothing written, not even half


def test_non_finite_vectors_written_by_others_are_refused_on_load(model, vectors, tmp_path):
    matrix, _ = vectors
    good = actadd.save(matrix, tmp_path / "good.safetensors")
    with safe_open(str(good), "numpy") as f:
        meta, tensors = f.metadata(), {k: f.get_tensor(k) for k in f.keys()}
    tensors["addition.1"] = with_value(tensors["addition.1"], (0, 0), np.nan)
    save_file(tensors, tmp_path / "nan.safetensors", metadata=meta)
    refused(bounded(actadd.load, tmp_path / "nan.safetensors", model)[0], tmp_path / "nan.safetensors",
            "tensor addition.1 holds 1 non-finite values")
    path = gguf_file(tmp_path / "inf.gguf", {"direction.2": np.full(16, np.inf, np.float32)})
    refused(bounded(import_gguf, path, model)[0], path, "tensor direction.2 holds 16 non-finite values")


def test_actadd_steer_with_a_nan_vector_exits_2_saying_so(tmp_path, capsys):
    """It used to exit 0 with a column of <|endoftext|>."""
    assert main(["steer", "--model", "tiny-books", "--prompt", "In the morning we", "--plus", "whale", "--minus", "",
                 "--layer", "0", "--coeff", "4", "-n", "1", "--max-new-tokens", "2",
                 "--save", str(tmp_path / "v.safetensors")]) == 0
    with safe_open(str(tmp_path / "v.safetensors"), "numpy") as f:
        meta, tensors = f.metadata(), {k: f.get_tensor(k) for k in f.keys()}
    tensors["addition.0"] = with_value(tensors["addition.0"], (1, 7), np.nan)
    save_file(tensors, tmp_path / "nan.safetensors", metadata=meta)
    capsys.readouterr()
    assert main(["steer", "--model", "tiny-books", "--prompt", "In the morning we",
                 "--vector", str(tmp_path / "nan.safetensors")]) == 2
    assert "tensor addition.0 holds 1 non-finite values (NaN or inf), the first at (1, 7)" in capsys.readouterr().err


def gguf_file(path, tensors: dict, strings: dict | None = None):
    writer = gguf.GGUFWriter(str(path), "controlvector")
    writer.add_string("controlvector.model_hint", "gpt2")
    writer.add_int32("controlvector.layer_count", len(tensors))
    for key, value in (strings or {}).items():
        writer.add_string(key, value)
    for name, array in tensors.items():
        writer.add_tensor(name, array)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def test_a_two_dimensional_direction_is_refused_as_llama_cpp_does(model, tmp_path):
    path = gguf_file(tmp_path / "2d.gguf", {"direction.2": np.ones((1, 16), np.float32)})
    refused(bounded(import_gguf, path, model)[0], path, "tensor direction.2 is F32 of shape [16, 1]; expected F32 of "
            "shape [16]")


@pytest.mark.parametrize("key,value,message", [
    ("actadd.model", '"a string"', 'metadata actadd.model: "a string" is a string (expected an object'),
    ("actadd.model", "[1, 2]", "metadata actadd.model: [1, 2] is an array (expected an object"),
    ("actadd.model", "{", "metadata actadd.model: not valid JSON (Expecting property name"),
    ("actadd.model", "[" * 100 + "]" * 100, "metadata actadd.model: JSON nested deeper than 64 levels"),
    ("actadd.positions", "7", "metadata actadd.positions: 7 is an integer"),
    ("actadd.positions", '[1, "2"]', 'metadata actadd.positions: [1, "2"] (expected'),
    ("actadd.pairs", '[["a"]]', 'metadata actadd.pairs: [["a"]] (expected an array of [plus, minus] pairs)'),
    ("actadd.pairs", '{"a": "b"}', "metadata actadd.pairs: {\"a\": \"b\"} is an object"),
])
def test_our_gguf_metadata_of_the_wrong_type_is_refused_by_key(model, vectors, tmp_path, key, value, message):
    _, direction = vectors
    good = gguf.GGUFReader(str(export_gguf(direction, tmp_path / "good.gguf")))
    strings = {f.name: f.contents() for f in good.fields.values() if f.name.startswith("actadd.") and
               isinstance(f.contents(), str)}
    strings[key] = value
    tensors = {t.name: np.array(t.data, np.float32) for t in good.tensors}
    path = gguf_file(tmp_path / "bad.gguf", tensors, strings)
    writer_keys = gguf.GGUFReader(str(path))
    assert writer_keys.get_field(key).contents() == value
    refused(bounded(import_gguf, path, model, allow_other_weights=True)[0], path, message)


def test_gguf_metadata_that_is_not_utf8_names_the_file_and_key(model, tmp_path):
    path = gguf_file(tmp_path / "utf.gguf", {"direction.2": np.ones(16, np.float32)})
    data = path.read_bytes()
    at = data.index(b"gpt2")                                             # the model hint's bytes
    path.write_bytes(data[:at] + b"\xff\xfe\xfd\xfc" + data[at + 4:])
    refused(bounded(import_gguf, path, model)[0], path, "metadata controlvector.model_hint: not readable")


MANIFEST_PLACES = ["format", "format_version", "alignment", "padding", "model", "additions", ("additions", 0),
                   ("additions", 0, "tokens"), ("additions", 0, "coeff"), ("additions", 0, "layer"),
                   ("additions", 0, "prompt"), ("additions", 0, "hook_name"), ("additions", 0, "tensor")]
JSON_VALUES = st.recursive(st.none() | st.booleans() | st.integers(-3, 300) | st.floats() | st.text(max_size=5),
                           lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner,
                                                                                         max_size=3), max_leaves=8)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(changes=st.lists(st.tuples(st.sampled_from(MANIFEST_PLACES), JSON_VALUES), max_size=3))
def test_fuzzed_manifests_load_or_are_refused_in_one_line(model, vectors, tmp_path_factory, changes):
    matrix, _ = vectors
    folder = tmp_path_factory.mktemp("v")
    good = actadd.save(matrix, folder / "good.safetensors")
    with safe_open(str(good), "numpy") as f:
        manifest, tensors = json.loads(f.metadata()["actadd"]), {k: f.get_tensor(k) for k in f.keys()}
    for place, value in changes:
        mutate(manifest, place if isinstance(place, tuple) else (place,), value)
    path = folder / "bad.safetensors"
    save_file(tensors, path, metadata={"actadd": json.dumps(manifest)})
    outcome, _, _ = bounded(actadd.load, path, model, allow_other_weights=True)
    if isinstance(outcome, Exception):
        refused(outcome, path)
    else:
        assert all(np.isfinite(m).all() and m.shape[1] == 16 for m in outcome.activations)
        model.run_with_hooks([TOK.bos_token_id] + TOK.encode(" the abab the ab ab"), outcome.hooks())


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(flips=st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 255)), min_size=1, max_size=4),
       cut=st.none() | st.integers(0, 10**6))
def test_fuzzed_gguf_bytes_import_or_are_refused_in_one_line(model, vectors, tmp_path_factory, flips, cut):
    _, direction = vectors
    folder = tmp_path_factory.mktemp("g")
    data = bytearray(export_gguf(direction, folder / "good.gguf").read_bytes())
    for at, byte in flips:
        data[at % len(data)] = byte
    path = folder / "bad.gguf"
    path.write_bytes(bytes(data[:cut % len(data)] if cut is not None else data))
    outcome, _, _ = bounded(import_gguf, path, model, allow_other_weights=True)
    if isinstance(outcome, Exception):
        refused(outcome, path)
    else:
        assert all(np.isfinite(d).all() and d.shape == (16,) for d in outcome.directions)
