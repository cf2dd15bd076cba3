"""Loading: folders, names, dtypes, and every way a checkpoint or config can be wrong.

Checkpoints here are written with the `safetensors` package itself (an independent writer of the
format) or byte by byte, so these tests need no torch.
"""

import json
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from conftest import config_dict, random_state_dict
from minigpt import GPT2, CheckpointError, ConfigError, GPT2Config
from minigpt.weights import read_safetensors

CONFIG = GPT2Config(n_layer=2, n_head=2, n_embd=8, n_positions=6, vocab_size=11)
TOKENS = np.array([[1, 2, 3, 4], [5, 6, 7, 8]])


def hf_config_dict(**overrides):
    return config_dict(CONFIG, **overrides)


def write_folder(folder: Path, tensors: dict, config: dict | None = None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(config or hf_config_dict()))
    save_file(tensors, folder / "model.safetensors")
    return folder


def write_raw_safetensors(path: Path, header: dict, data: bytes) -> Path:
    """A safetensors file byte by byte: u64 header length, JSON header, data."""
    head = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(head)) + head + data)
    return path


@pytest.fixture
def state():
    return random_state_dict(CONFIG, seed=0)


# --- what loads, and what it computes -------------------------------------------------------


@pytest.mark.parametrize("prefix", ["", "transformer."])
def test_bare_and_prefixed_names_load_to_the_same_model(tmp_path, state, prefix):
    write_folder(tmp_path, {prefix + k: v for k, v in state.items()})
    np.testing.assert_array_equal(GPT2.from_pretrained(tmp_path)(TOKENS), GPT2(CONFIG, state)(TOKENS))


def test_mask_buffers_are_ignored_whatever_their_dtype_and_lm_head_is_tied(tmp_path, state):
    extra = {"h.0.attn.bias": np.tril(np.ones((1, 1, 6, 6), np.float32)),
             "h.1.attn.bias": np.tril(np.ones((1, 1, 6, 6), np.uint8)),
             "h.0.attn.masked_bias": np.array(-1e4, np.float32),
             "h.1.attn.masked_bias": np.array(-1e4, np.float64),
             "lm_head.weight": np.zeros_like(state["wte.weight"])}
    write_folder(tmp_path, {**state, **extra})
    model = GPT2.from_pretrained(tmp_path)
    # GPT-2 ties the unembedding to wte, as transformers does: a stored lm_head is not used.
    np.testing.assert_array_equal(model(TOKENS), GPT2(CONFIG, state)(TOKENS))


def test_float32_weights_are_zero_copy_read_only_maps(tmp_path, state):
    write_folder(tmp_path, state)
    model = GPT2.from_pretrained(tmp_path)
    for w in (model.wte, model.wpe, model.h[1]["mlp"]["c_fc"]["weight"]):
        assert w.dtype == np.float32 and not w.flags.owndata and not w.flags.writeable
    with pytest.raises(ValueError, match="read-only"):
        model.wte[0, 0] = 1.0


def test_reader_agrees_with_the_safetensors_package(tmp_path):
    rng = np.random.default_rng(1)
    tensors = {"a": rng.normal(size=(3, 5)).astype(np.float32),
               "b": rng.normal(size=(7,)).astype(np.float16),
               "scalar": np.array(2.5, np.float32), "empty": np.zeros((0, 4), np.float32)}
    path = tmp_path / "t.safetensors"
    save_file(tensors, path)
    ours, theirs = read_safetensors(path), load_file(path)
    assert set(ours) == set(theirs)
    for name in tensors:
        assert ours[name].dtype == np.float32 and ours[name].shape == theirs[name].shape
        np.testing.assert_array_equal(ours[name], theirs[name].astype(np.float32))


def test_bfloat16_is_widened_bit_exactly(tmp_path):
    # bfloat16 bits -> the float32 whose top 16 bits they are.
    cases = {0x3F80: 1.0, 0xC020: -2.5, 0x4049: 3.140625, 0x0001: 2.0**-133,
             0x7F80: np.inf, 0xFF80: -np.inf, 0x8000: -0.0, 0x7F7F: 3.3895313892515355e38}
    bits = np.array(list(cases), dtype="<u2")
    path = write_raw_safetensors(tmp_path / "bf.safetensors",
                                 {"x": {"dtype": "BF16", "shape": [len(cases)], "data_offsets": [0, bits.nbytes]}},
                                 bits.tobytes())
    x = read_safetensors(path)["x"]
    assert x.dtype == np.float32
    np.testing.assert_array_equal(x, np.array(list(cases.values()), np.float32))
    assert np.signbit(x[6])


def test_float16_checkpoint_computes_in_float32(tmp_path, state):
    write_folder(tmp_path, {k: v.astype(np.float16) for k, v in state.items()})
    model = GPT2.from_pretrained(tmp_path)
    widened = {k: v.astype(np.float16).astype(np.float32) for k, v in state.items()}
    assert model.wte.dtype == np.float32
    np.testing.assert_array_equal(model(TOKENS), GPT2(CONFIG, widened)(TOKENS))


def test_sharded_checkpoint_loads_all_shards(tmp_path, state):
    names = sorted(state)
    shards = {"model-00001-of-00002.safetensors": names[::2], "model-00002-of-00002.safetensors": names[1::2]}
    for file, keys in shards.items():
        save_file({k: state[k] for k in keys}, tmp_path / file)
    weight_map = {k: file for file, keys in shards.items() for k in keys}
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    (tmp_path / "config.json").write_text(json.dumps(hf_config_dict()))
    np.testing.assert_array_equal(GPT2.from_pretrained(tmp_path)(TOKENS), GPT2(CONFIG, state)(TOKENS))

    (tmp_path / "model-00002-of-00002.safetensors").unlink()
    with pytest.raises(CheckpointError, match="names shard 'model-00002-of-00002.safetensors', which is missing"):
        GPT2.from_pretrained(tmp_path)


# --- tensors that do not fit --------------------------------------------------------------------


def test_missing_tensor_is_named_with_its_expected_shape(tmp_path, state):
    del state["h.1.mlp.c_fc.bias"]
    write_folder(tmp_path, state)
    with pytest.raises(CheckpointError, match=r"model.safetensors: missing tensor\(s\) 'h.1.mlp.c_fc.bias \(32,\)'"):
        GPT2.from_pretrained(tmp_path)


def test_wrong_shape_names_tensor_expected_and_found(tmp_path, state):
    state = {"transformer." + k: v for k, v in state.items()}
    state["transformer.h.0.attn.c_attn.weight"] = np.zeros((8, 8), np.float32)
    write_folder(tmp_path, state)
    with pytest.raises(CheckpointError,
                       match=r"tensor 'transformer.h.0.attn.c_attn.weight' has shape \(8, 8\), expected \(8, 24\)"):
        GPT2.from_pretrained(tmp_path)


@pytest.mark.parametrize("extra,match", [
    ({"h.2.ln_1.weight": np.ones(8, np.float32)}, r"unexpected tensor\(s\) 'h.2.ln_1.weight' for a GPT-2 with n_layer=2"),
    ({"score.weight": np.ones((2, 8), np.float32)}, r"unexpected tensor\(s\) 'score.weight'"),
    ({"transformer.wte.weight": np.ones((11, 8), np.float32)}, r"'wte.weight' appears twice, as '(transformer\.)?wte.weight' and '(transformer\.)?wte.weight'"),
    ({"lm_head.weight": np.ones((11, 9), np.float32)}, r"'lm_head.weight' has shape \(11, 9\), expected \(11, 8\) \(it is tied"),
])
def test_unknown_duplicate_and_misshapen_extras_are_refused(tmp_path, state, extra, match):
    write_folder(tmp_path, {**state, **extra})
    with pytest.raises(CheckpointError, match=match):
        GPT2.from_pretrained(tmp_path)


@pytest.mark.parametrize("dtype,stored", [(np.float64, "F64"), (np.int64, "I64")])
def test_parameters_of_other_dtypes_are_refused_not_narrowed(tmp_path, state, dtype, stored):
    """Refused from the file's header, before the tensor is read."""
    state["h.0.ln_1.weight"] = state["h.0.ln_1.weight"].astype(dtype)
    write_folder(tmp_path, state)
    with pytest.raises(CheckpointError, match=f"tensor 'h.0.ln_1.weight' is {stored}; expected F32, F16, BF16"):
        GPT2.from_pretrained(tmp_path)


def test_state_dict_passed_directly_is_checked_too(state):
    state["wpe.weight"] = state["wpe.weight"].astype(np.float64)
    with pytest.raises(CheckpointError, match="state_dict: tensor 'wpe.weight' is ndarray float64"):
        GPT2(CONFIG, state)


# --- files that are not valid safetensors -------------------------------------------------------


@pytest.mark.parametrize("make,match", [
    (lambda p: p.write_bytes(b"\x01\x02"), r"2 bytes; a safetensors file starts with an 8-byte header length"),
    (lambda p: p.write_bytes(struct.pack("<Q", 1000) + b"{}"), "header length 1000 runs past the end of the file"),
    (lambda p: p.write_bytes(struct.pack("<Q", 3) + b"{x}"), r"header: not valid JSON .* at column 2"),
    (lambda p: p.write_bytes(struct.pack("<Q", 2) + b"[]"), "header is not a JSON object"),
    (lambda p: write_raw_safetensors(p, {"w": {"dtype": "F32", "shape": [2]}}, b""),
     "tensor 'w': header entry needs dtype, shape and data_offsets"),
    (lambda p: write_raw_safetensors(p, {"w": {"dtype": "F8_E4M3", "shape": [2], "data_offsets": [0, 2]}}, b"ab"),
     "tensor 'w' has dtype F8_E4M3, which minigpt cannot read"),
    (lambda p: write_raw_safetensors(p, {"w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}, b"abcd"),
     r"tensor 'w': data_offsets \[0, 8\] outside the 4 data bytes"),
    (lambda p: write_raw_safetensors(p, {"w": {"dtype": "F32", "shape": [3], "data_offsets": [0, 8]}}, bytes(8)),
     r"tensor 'w': shape \[3\] of F32 needs 12 bytes, data_offsets give 8"),
    (lambda p: write_raw_safetensors(p, {"w": {"dtype": "F32", "shape": [-1], "data_offsets": [0, 4]}}, bytes(4)),
     r"shape \[-1\] is not a list of non-negative integers"),
])
def test_corrupt_safetensors_files_are_refused_naming_file_and_tensor(tmp_path, make, match):
    path = tmp_path / "model.safetensors"
    make(path)
    with pytest.raises(CheckpointError, match=match) as info:
        read_safetensors(path)
    assert str(path) in str(info.value)


def test_tensor_in_two_shards_is_refused(tmp_path, state):
    save_file(state, tmp_path / "a.safetensors")
    save_file({"wte.weight": state["wte.weight"]}, tmp_path / "b.safetensors")
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps(
        {"weight_map": {**{k: "a.safetensors" for k in state}, "wte.weight": "b.safetensors"}}))
    (tmp_path / "config.json").write_text(json.dumps(hf_config_dict()))
    with pytest.raises(CheckpointError, match="tensor 'wte.weight' is in both .*a.safetensors and .*b.safetensors"):
        GPT2.from_pretrained(tmp_path)


@pytest.mark.parametrize("index,match", [
    ("not json", "expected JSON with a 'weight_map' object"),
    (json.dumps({"weight_map": {}}), "'weight_map' is empty"),
    (json.dumps({"weight_map": {"wte.weight": "../evil.safetensors"}}), "shard name '../evil.safetensors' is not"),
    (json.dumps({"weight_map": {"wte.weight": "pytorch_model-1.bin"}}), "is not a .safetensors file name"),
])
def test_bad_shard_index_is_refused(tmp_path, index, match):
    (tmp_path / "config.json").write_text(json.dumps(hf_config_dict()))
    (tmp_path / "model.safetensors.index.json").write_text(index)
    with pytest.raises(CheckpointError, match=match):
        GPT2.from_pretrained(tmp_path)


# --- folders and paths ------------------------------------------------------------------------


class _Exploit:
    """Unpickling this creates a file: proof that a pickle was opened."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))


@pytest.mark.parametrize("name", ["pytorch_model.bin", "model.pt", "model.ckpt", "model.pth"])
def test_pickled_checkpoints_are_refused_and_never_opened(tmp_path, name):
    marker = tmp_path / "unpickled"
    (tmp_path / "config.json").write_text(json.dumps(hf_config_dict()))
    (tmp_path / name).write_bytes(pickle.dumps(_Exploit(marker)))
    for target in (tmp_path, tmp_path / name):
        with pytest.raises(CheckpointError, match=rf"refusing to load .*{name}: pickled checkpoints .* "
                                                  r"unpickling can run arbitrary code. .*save_pretrained"):
            GPT2.from_pretrained(target)
    assert not marker.exists()


def test_folder_paths_that_do_not_fit(tmp_path, state):
    with pytest.raises(CheckpointError, match="no config.json"):
        GPT2.from_pretrained(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps(hf_config_dict()))
    with pytest.raises(CheckpointError, match="no model.safetensors and no model.safetensors.index.json"):
        GPT2.from_pretrained(tmp_path)
    save_file(state, tmp_path / "model.safetensors")
    with pytest.raises(CheckpointError, match="is a file, and not a GGUF file; pass a GGUF model file, or the folder"):
        GPT2.from_pretrained(tmp_path / "model.safetensors")
    with pytest.raises(CheckpointError, match="no such folder, and not a hub id"):
        GPT2.from_pretrained(str(tmp_path / "missing"))
    with pytest.raises(CheckpointError, match="no such folder, and not a hub id"):
        GPT2.from_pretrained("./gpt2 copy")
    with pytest.raises(ValueError, match="revision='main' applies to hub ids, but .* is a local folder"):
        GPT2.from_pretrained(tmp_path, revision="main")


# --- config.json --------------------------------------------------------------------------------


@pytest.mark.parametrize("overrides,match", [
    ({"model_type": "llama"}, 'model_type: "llama" \\(expected "gpt2"\\)'),
    ({"model_type": None}, 'model_type: null \\(expected "gpt2"\\)'),
    ({"activation_function": "relu"}, 'activation_function: "relu" is not supported \\(GPT-2 uses the tanh GELU'),
    ({"activation_function": "gelu"}, 'activation_function: "gelu"'),
    ({"n_head": 3}, "n_head: 3 does not divide n_embd=8"),
    ({"n_layer": 0}, "n_layer: 0 \\(expected a positive integer\\)"),
    ({"n_embd": "8"}, 'n_embd: "8" is a string \\(expected a positive integer\\)'),
    ({"vocab_size": 11.0}, "vocab_size: 11.0 is a number \\(expected a positive integer\\)"),
    ({"n_inner": -4}, "n_inner: -4"),
    ({"layer_norm_epsilon": 0}, "layer_norm_epsilon: 0 \\(expected a finite number in \\(0, 1\\)\\)"),
    ({"scale_attn_weights": False}, "scale_attn_weights: false is not supported"),
    ({"scale_attn_by_inverse_layer_idx": True}, "scale_attn_by_inverse_layer_idx: true is not supported"),
    ({"tie_word_embeddings": False}, "tie_word_embeddings: false is not supported"),
    ({"tie_word_embeddings": "false"}, 'tie_word_embeddings: "false" is not supported \\(GPT-2 uses true\\)'),
    ({"add_cross_attention": True}, "add_cross_attention: true is not supported"),
    ({"n_ctx": 7}, "n_ctx: 7 differs from n_positions=6"),
])
def test_configs_that_are_not_a_runnable_gpt2_are_refused_by_field(tmp_path, state, overrides, match):
    write_folder(tmp_path, state, hf_config_dict(**overrides))
    with pytest.raises(ConfigError, match=match) as info:
        GPT2.from_pretrained(tmp_path)
    assert "config.json" in str(info.value)


def test_config_json_that_is_not_a_config(tmp_path):
    path = tmp_path / "config.json"
    path.write_text("{")
    with pytest.raises(ConfigError, match="not valid JSON"):
        GPT2Config.from_json(path)
    path.write_text("[]")
    with pytest.raises(ConfigError, match=r"an array \(expected a JSON object\)"):
        GPT2Config.from_json(path)
    path.write_text(json.dumps({"model_type": "gpt2", "n_layer": 2}))
    with pytest.raises(ConfigError, match="missing field"):
        GPT2Config.from_json(path)


def test_config_reads_the_fields_and_defaults_of_a_real_gpt2_config():
    # The fields of the hub's gpt2 config.json that matter (others, like dropout, are ignored).
    raw = {"activation_function": "gelu_new", "architectures": ["GPT2LMHeadModel"], "attn_pdrop": 0.1,
           "bos_token_id": 50256, "eos_token_id": 50256, "layer_norm_epsilon": 1e-05, "model_type": "gpt2",
           "n_ctx": 1024, "n_embd": 768, "n_head": 12, "n_layer": 12, "n_positions": 1024,
           "vocab_size": 50257, "task_specific_params": {"text-generation": {"do_sample": True}}}
    config = GPT2Config.from_dict(raw)
    assert config == GPT2Config()
    assert (config.d_head, config.d_mlp) == (64, 3072)
