"""llama.cpp control vectors (GGUF): the layout llama.cpp documents, field by field, read back
with the `gguf` package's own reader; the layer numbering (direction.i after block i) checked
by applying a foreign file; the round trip; and the refusals."""

import sys
import warnings

import gguf  # a test dependency (the test extra): never skipped
import numpy as np
import pytest

import actadd
from actadd import pairs as P
from actadd.vector_io import VectorFileError, export_gguf, import_gguf
from conftest import handmade_tokenizer, random_model
from minigpt import GPT2Config

TOK = handmade_tokenizer()
CONFIG = GPT2Config(n_layer=4, n_head=2, n_embd=16, n_positions=32, vocab_size=262)
PAIRS = [("the ab", "ab"), (" the", "abab the")]


@pytest.fixture(scope="module")
def model():
    return random_model(CONFIG, seed=5)


def test_the_file_has_llama_cpps_layout_field_by_field(model, tmp_path):
    vector = P.mean_of_pairs(model, TOK, PAIRS, 2.5, [2, 3, 4], reading="last", positions="all")
    path = export_gguf(vector, tmp_path / "v.gguf")
    reader = gguf.GGUFReader(str(path))
    assert reader.get_field("general.architecture").contents() == "controlvector"
    assert reader.get_field("controlvector.model_hint").contents() == "gpt2"
    count = reader.get_field("controlvector.layer_count")
    assert count.contents() == 3 and count.types == [gguf.GGUFValueType.INT32]
    tensors = {t.name: t for t in reader.tensors}
    # direction.i is added to the output of block i: our layer i + 1 (layer 4 = after the last block)
    assert sorted(tensors) == ["direction.1", "direction.2", "direction.3"]
    for layer in (2, 3, 4):
        t = tensors[f"direction.{layer - 1}"]
        assert t.tensor_type == gguf.GGMLQuantizationType.F32 and list(t.shape) == [CONFIG.n_embd]
        np.testing.assert_array_equal(np.asarray(t.data), vector.direction(layer))   # the coefficient applied


def test_round_trip_keeps_arrays_and_metadata(model, tmp_path):
    vector = P.mean_of_pairs(model, TOK, PAIRS, 0.3, [2, 4], reading="mean", positions="all")
    back = actadd.load(actadd.save(vector, tmp_path / "v.gguf"), model)
    assert (back.layers, back.reading, back.coeff, back.positions, back.pairs) == ((2, 4), "mean", 0.3, "all", tuple(PAIRS))
    for a, b in zip(back.directions, vector.directions):
        np.testing.assert_array_equal(a, b)
    native = actadd.load(actadd.save(vector, tmp_path / "v.safetensors"), model)
    assert (native.layers, native.coeff, native.positions) == ((2, 4), 0.3, "all")
    for a, b in zip(native.directions, vector.directions):
        np.testing.assert_array_equal(a, b)
    other = random_model(CONFIG, seed=6)
    with pytest.raises(VectorFileError, match="made on weights"):
        actadd.load(tmp_path / "v.gguf", other)


def write_foreign(path, directions: dict, hint="gpt2", dtype=np.float32):
    """A control vector as llama.cpp's cvector-generator and repeng write it: no actadd keys."""
    writer = gguf.GGUFWriter(str(path), "controlvector")
    writer.add_string("controlvector.model_hint", hint)
    writer.add_int32("controlvector.layer_count", len(directions))
    for i, d in directions.items():
        writer.add_tensor(f"direction.{i}", np.asarray(d, dtype=dtype))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def test_a_foreign_control_vector_adds_direction_i_after_block_i_at_every_token(model, tmp_path):
    rng = np.random.default_rng(0)
    d1, d3 = (rng.normal(0, 2, CONFIG.n_embd).astype(np.float32) for _ in range(2))
    vector = import_gguf(write_foreign(tmp_path / "f.gguf", {1: d1, 3: d3}), model)
    assert (vector.layers, vector.positions, vector.reading) == ((2, 4), "all", "gguf")
    seq = actadd.tokens_with_bos(TOK, " the abab the ab")

    def after_block(d):                             # llama.cpp: cur = block_i(...) + direction.i
        return lambda x, hook: x + d
    by_hand = model.run_with_hooks(seq, [("blocks.1.hook_resid_post", after_block(d1)),
                                         ("blocks.3.hook_resid_post", after_block(d3))])
    ours = model.run_with_hooks(seq, vector.hooks())
    np.testing.assert_array_equal(ours, by_hand)
    assert np.abs(ours - model(seq)).max() > 1e-2


def test_refusals(model, tmp_path, monkeypatch):
    matrix = P.mean_of_pairs(model, TOK, PAIRS, 2.0, 2)
    with pytest.raises(VectorFileError, match="per-position matrix .* cannot be one"):
        actadd.save(matrix, tmp_path / "m.gguf")
    assert not (tmp_path / "m.gguf").exists()
    low = P.mean_of_pairs(model, TOK, PAIRS, 2.0, [1, 2], reading="last", positions="all")
    with pytest.raises(VectorFileError, match=r"layer\(s\) \[1\] cannot be a llama.cpp control vector"):
        export_gguf(low, tmp_path / "low.gguf")
    prompt_only = P.mean_of_pairs(model, TOK, PAIRS, 2.0, 2, reading="last")
    with pytest.warns(UserWarning, match="every token, generated ones included"):
        export_gguf(prompt_only, tmp_path / "p.gguf")
    with pytest.raises(VectorFileError, match=r"expected F32 of shape \[16\]"):
        import_gguf(write_foreign(tmp_path / "w.gguf", {1: np.zeros(8)}), model)
    with pytest.raises(VectorFileError, match="F16"):
        import_gguf(write_foreign(tmp_path / "h.gguf", {1: np.zeros(16)}, dtype=np.float16), model)
    with pytest.raises(VectorFileError, match="expected direction.1 to direction.3"):
        import_gguf(write_foreign(tmp_path / "n.gguf", {4: np.zeros(16)}), model)
    for index in ("²", "٣"):                  # digits to str.isdigit; int() refused the first (a bare ValueError)
        with pytest.raises(VectorFileError, match=f"u.gguf: tensor direction.{index}: expected direction.1"):
            import_gguf(write_foreign(tmp_path / "u.gguf", {index: np.zeros(16)}), model)
    with pytest.raises(VectorFileError, match="for 'llama' models, and this is a 'gpt2' model"):
        import_gguf(write_foreign(tmp_path / "l.gguf", {1: np.zeros(16)}, hint="llama"), model)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert import_gguf(tmp_path / "l.gguf", model, allow_other_weights=True).layers == (2,)
    (tmp_path / "junk.gguf").write_bytes(b"GGUF not really")
    with pytest.raises(VectorFileError, match="not a readable GGUF file"):
        import_gguf(tmp_path / "junk.gguf", model)
    monkeypatch.setitem(sys.modules, "gguf", None)
    with pytest.raises(VectorFileError, match=r"pip install 'minigpt-actadd\[gguf\]'"):
        export_gguf(P.mean_of_pairs(model, TOK, PAIRS, 2.0, 2, reading="last", positions="all"), tmp_path / "x.gguf")
