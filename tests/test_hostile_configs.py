"""Hostile config.json files and checkpoints, for each family: every field refused by name with
the JSON type transformers writes and a value in range, a config checked against the files'
headers before any array is made, nothing allocated in proportion to a config number the files
do not back, and a fuzz of config.json and of the safetensors header that ends in a load or a
one-line error naming the file, never a traceback, within 1 s and 100 MB."""

import json
import math
import re
import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import minigpt
from hostile import CONFIGS, LAYERS_FIELD, bounded, write_tiny
from minigpt import CheckpointError, ConfigError
from minigpt.weights import read_header

INF, NAN = float("inf"), float("nan")
LLAMA3 = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
          "original_max_position_embeddings": 8192}

# (family, fields changed, the error after "config.json: "). Each is a field of the list
# or of its kind; the message names the field, what it holds, and what was expected.
CASES = [
    ("llama", {"rms_norm_eps": INF}, r"rms_norm_eps: Infinity \(expected a finite number in \(0, 1\)\)"),
    ("llama", {"rms_norm_eps": 0}, r"rms_norm_eps: 0 \(expected a finite number in \(0, 1\)\)"),
    ("llama", {"rope_theta": INF}, r"rope_theta: Infinity \(expected a finite number > 0\)"),
    ("llama", {"rope_theta": "1e4"}, r'rope_theta: "1e4" is a string \(expected a finite number > 0\)'),
    ("llama", {"rope_scaling": {**LLAMA3, "factor": 0}}, r"rope_scaling.factor: 0 \(expected a finite number > 0\)"),
    ("llama", {"rope_scaling": {**LLAMA3, "factor": NAN}}, r"rope_scaling.factor: NaN \(expected"),
    ("llama", {"rope_scaling": {**LLAMA3, "factor": -8.0}}, r"rope_scaling.factor: -8.0 \(expected"),
    ("llama", {"rope_scaling": {**LLAMA3, "factor": "8"}}, r'rope_scaling.factor: "8" is a string'),
    ("llama", {"rope_parameters": {**LLAMA3, "factor": 0}}, r"rope_parameters.factor: 0 \(expected"),
    ("llama", {"rope_scaling": {**LLAMA3, "original_max_position_embeddings": 0}},
     r"rope_scaling.original_max_position_embeddings: 0 \(expected a positive integer\)"),
    ("llama", {"rope_scaling": {**LLAMA3, "low_freq_factor": 0}}, r"rope_scaling.low_freq_factor: 0 \(expected"),
    ("llama", {"rope_scaling": {**LLAMA3, "high_freq_factor": 0}}, r"rope_scaling.high_freq_factor: 0 \(expected"),
    ("llama", {"rope_scaling": {**LLAMA3, "high_freq_factor": 1.0}},
     r"rope_scaling.high_freq_factor: 1.0 \(expected more than low_freq_factor=1.0\)"),
    ("llama", {"rope_scaling": {**LLAMA3, "rope_type": "yarn"}}, r'rope_scaling.rope_type: "yarn" is not supported'),
    ("llama", {"rope_scaling": "llama3"}, r'rope_scaling: "llama3" \(expected an object or null\)'),
    ("llama", {"rope_scaling": {"rope_type": "llama3"}}, r'rope_scaling: rope type "llama3" needs factor, low_freq_factor'),
    ("llama", {"tie_word_embeddings": "false"}, r'tie_word_embeddings: "false" is a string \(expected true or false\)'),
    ("llama", {"attention_bias": 1}, r"attention_bias: 1 is an integer \(expected true or false\)"),
    ("llama", {"num_key_value_heads": 0}, r"num_key_value_heads: 0 \(expected a positive integer\)"),
    ("llama", {"num_key_value_heads": 3}, r"num_key_value_heads: 3 does not divide num_attention_heads=2"),
    ("llama", {"hidden_size": None}, r"hidden_size: null \(expected a positive integer\)"),
    ("llama", {"num_hidden_layers": 2.0}, r"num_hidden_layers: 2.0 is a number \(expected a positive integer\)"),
    ("llama", {"head_dim": 3}, r"head_dim: 3 is odd"),
    ("llama", {"max_position_embeddings": None}, r"max_position_embeddings: null \(expected a positive integer\)"),
    ("llama", {"hidden_act": "gelu"}, r'hidden_act: "gelu" is not supported \(LLaMA uses "silu"\)'),
    ("opt", {"tie_word_embeddings": "false"}, r'tie_word_embeddings: "false" is a string \(expected true or false\)'),
    ("opt", {"do_layer_norm_before": None}, r"do_layer_norm_before: null \(expected true or false\)"),
    ("opt", {"enable_bias": "yes"}, r'enable_bias: "yes" is not supported \(OPT uses true\)'),
    ("opt", {"hidden_size": True}, r"hidden_size: true is a boolean \(expected a positive integer\)"),
    ("opt", {"ffn_dim": -1}, r"ffn_dim: -1 \(expected a positive integer\)"),
    ("opt", {"word_embed_proj_dim": [8]}, r"word_embed_proj_dim: \[8\] is an array \(expected a positive integer\)"),
    ("gpt2", {"layer_norm_epsilon": NAN}, r"layer_norm_epsilon: NaN \(expected a finite number in \(0, 1\)\)"),
    ("gpt2", {"tie_word_embeddings": "false"}, r'tie_word_embeddings: "false" is not supported \(GPT-2 uses true\)'),
    ("gpt2", {"n_embd": None}, r"n_embd: null \(expected a positive integer\)"),
    ("gpt2", {"n_head": {"heads": 2}}, r'n_head: \{"heads": 2\} is an object \(expected a positive integer\)'),
    ("gpt2", {"model_type": "GPT2"}, r'model_type: "GPT2" is not supported \(minigpt runs "gpt2", "opt", "llama", "gemma3_text"\)'),
    ("gpt2", {"model_type": ["gpt2"]}, r'model_type: \["gpt2"\] is not supported'),
]


@pytest.mark.parametrize("kind,change,message", CASES, ids=[f"{k}-{next(iter(c))}" for k, c, _ in CASES])
def test_each_bad_field_is_refused_by_name(tmp_path, kind, change, message):
    folder = write_tiny(kind, tmp_path, {**CONFIGS[kind], **change})
    error, _, _ = bounded(minigpt.load, folder)
    assert isinstance(error, ConfigError) and re.fullmatch(re.escape(str(folder / "config.json")) + ": " + message + ".*",
                                                           str(error)), str(error)
    assert "\n" not in str(error)


@pytest.mark.parametrize("kind", sorted(CONFIGS))
@pytest.mark.parametrize("layers", [10**6, 10**8])
def test_a_config_asking_for_more_blocks_than_the_files_hold_costs_nothing(tmp_path, kind, layers):
    """Before: one expected-shape entry per layer (17 s and 1.6 GB at 10^6; killed at 10^8)."""
    folder = write_tiny(kind, tmp_path, {**CONFIGS[kind], LAYERS_FIELD[kind]: layers})
    error, seconds, megabytes = bounded(minigpt.load, folder, megabytes=20)
    assert isinstance(error, CheckpointError), error
    assert f"{LAYERS_FIELD[kind]}={layers:,} blocks cannot be in a checkpoint of" in str(error)
    assert "(blocks 0 to 1)" in str(error)


def test_llama_rotary_tables_follow_the_positions_used_not_the_config(tmp_path):
    """max_position_embeddings is no weight's shape: 2^24 cost 1.5 GB and 10^10 asked for 37 GiB."""
    folder = write_tiny("llama", tmp_path, {**CONFIGS["llama"], "max_position_embeddings": 10**10})
    model, _, _ = bounded(minigpt.from_pretrained, folder, megabytes=20)
    assert model.config.n_positions == 10**10
    (_, seconds, megabytes) = bounded(model, [[1, 2, 3]], megabytes=20)
    assert model.cos.shape == (256, 4)                                   # rows for the positions used, rounded up
    model([list(range(300)) + [5] * 300])                               # 600 positions: the table grows once
    assert model.cos.shape == (1024, 4)


def test_a_checkpoint_dtype_is_refused_from_its_header(tmp_path):
    folder = write_tiny("gpt2", tmp_path)
    path = folder / "model.safetensors"
    data = bytearray(path.read_bytes())
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + n])
    header["h.0.ln_1.weight"]["dtype"] = "I32"                          # same size: only the header says so
    raw = json.dumps(header, separators=(",", ":")).encode().ljust(n)
    assert len(raw) == n
    path.write_bytes(data[:8] + raw + data[8 + n:])
    error, _, _ = bounded(minigpt.load, folder)
    assert isinstance(error, CheckpointError) and "tensor 'h.0.ln_1.weight' is I32; expected F32, F16, BF16" in str(error)


def test_json_nested_deeper_than_the_limit_is_an_error_not_a_recursion_error(tmp_path):
    folder = write_tiny("gpt2", tmp_path)
    for depth in (65, 100_000):
        (folder / "config.json").write_text("[" * depth + "]" * depth)
        error, _, _ = bounded(minigpt.load, folder)
        assert isinstance(error, ConfigError) and "JSON nested deeper than 64 levels" in str(error), error
    (folder / "config.json").write_bytes(b'{"model_type": "gpt2", "n_layer": \xff}')
    error, _, _ = bounded(minigpt.load, folder)
    assert isinstance(error, ConfigError) and ":1: not UTF-8 text (byte 0xff at offset 34)" in str(error)


# --- fuzz ---------------------------------------------------------------------------------------

JSON_VALUES = st.recursive(st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats() | st.text(max_size=8),
                           lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner,
                                                                                         max_size=3), max_leaves=10)
FIELDS = sorted({f for c in CONFIGS.values() for f in c} | {"rope_scaling", "rope_parameters", "rope_theta", "rms_norm_eps",
                                                             "head_dim", "tie_word_embeddings", "n_inner", "n_ctx",
                                                             "word_embed_proj_dim", "do_layer_norm_before", "hidden_act",
                                                             "layer_norm_epsilon", "activation_function",
                                                             "sliding_window", "sliding_window_pattern", "layer_types",
                                                             "query_pre_attn_scalar", "rope_local_base_freq",
                                                             "hidden_activation", "final_logit_softcapping"})


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(kind=st.sampled_from(sorted(CONFIGS)), changes=st.dictionaries(st.sampled_from(FIELDS), JSON_VALUES, max_size=4),
       dropped=st.sets(st.sampled_from(FIELDS), max_size=2))
def test_fuzzed_configs_load_or_are_refused_in_one_line(tmp_path_factory, kind, changes, dropped):
    folder = write_tiny(kind, tmp_path_factory.mktemp(kind))
    raw = {k: v for k, v in {**CONFIGS[kind], **changes}.items() if k not in dropped}
    (folder / "config.json").write_text(json.dumps(raw))
    outcome, _, _ = bounded(minigpt.load, folder)
    if isinstance(outcome, Exception):
        assert isinstance(outcome, (ConfigError, CheckpointError)), repr(outcome)
        assert str(outcome).startswith(str(folder)) and "\n" not in str(outcome), str(outcome)
    else:
        model, _ = outcome
        logits = model([[1, 2]])
        assert logits.shape == (1, 2, 300) and math.isfinite(float(logits.sum()))


HEADER_ENTRY = st.fixed_dictionaries({}, optional={
    "dtype": st.sampled_from(["F32", "F16", "BF16", "I8", "F64", "bogus"]) | JSON_VALUES,
    "shape": st.lists(st.integers(-2, 2**40), max_size=4) | JSON_VALUES,
    "data_offsets": st.lists(st.integers(-8, 2**62), min_size=2, max_size=2) | JSON_VALUES})


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(header=st.dictionaries(st.text(max_size=6), HEADER_ENTRY | JSON_VALUES, max_size=4),
       data=st.binary(max_size=64), length_delta=st.integers(-4, 4))
def test_fuzzed_safetensors_headers_read_or_are_refused_in_one_line(tmp_path_factory, header, data, length_delta):
    path = tmp_path_factory.mktemp("st") / "model.safetensors"
    raw = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", max(0, len(raw) + length_delta)) + raw + data)
    outcome, _, _ = bounded(read_header, path)
    if isinstance(outcome, Exception):
        assert isinstance(outcome, CheckpointError), repr(outcome)
        assert str(outcome).startswith(str(path)) and "\n" not in str(outcome), str(outcome)
    else:
        for h in outcome.values():                                       # what it accepted is inside the file
            assert h.offset + h.nbytes <= path.stat().st_size
