"""GGUF model files (llama.cpp's format): files written as llama.cpp's converter writes them,
by gguf-py's writer and quantizers (tests/gguf_models.py), load to the weights of the checkpoint
they came from and run as transformers runs it; every type gguf-py dequantizes loads equal to
its own dequantization, rows un-permuted; lazy weights give the float32 policy's floats bit for
bit; rope scaling as llama.cpp applies it; and the refusals (types, architectures, hostile
headers, within 2 s and 200 MB)."""

import dataclasses
import math
import struct

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import actadd
import minigpt
import minigpt.weights
from conftest import assert_close, handmade_tokenizer, max_abs, record_parity
from gguf_models import (T, gguf, gpt2_style_tokenizer, hf_tensors, llama3_rope_freqs, llama_cpp_permute,
                         stored_raw, write_llama_gguf)
from hostile import bounded
from minigpt import CheckpointError, ConfigError, Llama
from minigpt.generate import left_pad
from minigpt.gguf import GGUFError, GGUFTensor, dequantizable, read_gguf
from minigpt.weights import LazyTensor

# A LLaMA whose every matrix row is a whole number of 256-number blocks (the K-quants' size).
FIELDS = dict(vocab_size=262, hidden_size=256, num_attention_heads=4, num_key_value_heads=2, intermediate_size=512,
              num_hidden_layers=2, max_position_embeddings=64, rope_theta=10000.0, rms_norm_eps=1e-5,
              tie_word_embeddings=False)
TOK = handmade_tokenizer()
ALL_TYPES = [t.name for t in T if t in gguf.GGML_QUANT_SIZES]
READABLE = [k for k in ALL_TYPES if dequantizable(k)]
REFUSED = [k for k in ALL_TYPES if not dequantizable(k)]


def hf_llama(reference, folder, fields=FIELDS, seed=0):
    from test_llama import write_llama

    return write_llama(reference, folder, dict(fields), seed=seed)


def one_line(outcome, path, *parts):
    assert isinstance(outcome, (CheckpointError, ConfigError)), repr(outcome)
    text = str(outcome)
    assert text.startswith(str(path)) and "\n" not in text and all(p in text for p in parts), text


@pytest.fixture(scope="module")
def checkpoint(reference, tmp_path_factory):
    """(HF folder, transformers model, its tensors) of a random LLaMA."""
    folder = tmp_path_factory.mktemp("hf")
    hf = hf_llama(reference, folder)
    return folder, hf, hf_tensors(hf)


def test_the_types_are_what_gguf_py_says():
    """The issue's list is readable; those gguf-py has no dequantizer for are not."""
    for kind in ("F32", "F16", "BF16", "Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K"):
        assert kind in READABLE
    for kind in ("Q8_1", "Q8_K", "I8", "I16", "I32", "I64", "F64"):
        assert kind in REFUSED


# --- the converter's file is the checkpoint ----------------------------------------------------


@pytest.mark.parametrize("tied", [False, True])
def test_a_float32_gguf_is_the_checkpoint_it_was_converted_from(reference, tmp_path, tied):
    """llama.cpp interleaves each head's q/k rows; minigpt undoes it: the same parameters bit for
    bit as loading the Hugging Face folder, the same floats at every hook, and transformers' logits."""
    import torch

    hf = hf_llama(reference, tmp_path / "hf", {**FIELDS, "tie_word_embeddings": tied}, seed=3)
    path = write_llama_gguf(tmp_path / "m.gguf", hf_tensors(hf), {**FIELDS, "tie_word_embeddings": tied})
    ours, folder = minigpt.from_pretrained(path), minigpt.from_pretrained(tmp_path / "hf")
    assert isinstance(ours, Llama)
    # the same config, but that GGUF stores eps as float32 (9.99999974e-06, which float32 arithmetic
    # makes of 1e-5 anyway) and writes no head_dim where it is width / heads
    assert dataclasses.replace(ours.config, rms_norm_eps=1e-5, head_dim=64) == folder.config
    a, b = ours.state_dict(), folder.state_dict()
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)
    tokens, mask = left_pad([[1, 5, 9, 2, 7, 30, 200], [7, 7, 3]])
    logits, cache = ours.run_with_cache(tokens, attention_mask=mask)
    logits_folder, cache_folder = folder.run_with_cache(tokens, attention_mask=mask)
    assert all(np.array_equal(cache[n], cache_folder[n]) and cache[n].dtype == np.float32 for n in cache)
    with torch.no_grad():
        ref = hf(torch.tensor(tokens), attention_mask=torch.tensor(mask),
                 position_ids=torch.tensor(np.maximum(mask.cumsum(1) - 1, 0))).logits.numpy()
    real = mask.astype(bool)
    err = assert_close(logits[real], ref[real], "GGUF logits")
    record_parity("LLaMA from GGUF (F32, llama.cpp's q/k order) vs transformers", logits=max_abs(logits[real], ref[real]),
                  scaled=err)


def test_a_quantized_gguf_runs_as_transformers_gguf_loader_runs_it(reference, checkpoint, tmp_path):
    """Matrices quantized by gguf-py (Q8_0, Q5_1, Q4_0, Q4_1): the logits of transformers' own GGUF
    loader (gguf-py's dequantization, its reverse permutation) on the same file."""
    import torch

    _, _, tensors = checkpoint
    tok = gpt2_style_tokenizer(TOK, bos="<|endoftext|>")
    kinds = {"token_embd": "Q8_0", "output": "Q5_1", "ffn_down": "Q4_0"}
    path = write_llama_gguf(tmp_path / "q.gguf", tensors, FIELDS, tokenizer=tok,
                            kinds=lambda name, shape: kinds.get(name.split(".")[-2], "Q4_1"),
                            metadata={"general.name": "tiny"})
    hf = reference.transformers.AutoModelForCausalLM.from_pretrained(tmp_path, gguf_file=path.name,
                                                                      dtype=torch.float32).eval()
    ours = minigpt.from_pretrained(path)
    prompt = [1, 5, 9, 2, 7, 30, 200, 261]
    with torch.no_grad():
        ref = hf(torch.tensor([prompt])).logits[0].numpy()
    got = ours([prompt])[0]
    err = assert_close(got, ref, "quantized GGUF logits")
    record_parity("LLaMA from GGUF (Q4_0/Q4_1/Q5_1/Q8_0) vs transformers' GGUF loader", logits=max_abs(got, ref), scaled=err)


# --- every type ------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", READABLE)
def test_every_type_loads_equal_to_gguf_pys_dequantization(checkpoint, tmp_path, kind):
    """Each matrix stored as `kind` (gguf-py's quantizer, or random blocks where it has none)
    loads to gguf-py's own dequantization of the stored bytes, q/k rows un-permuted by the
    converter's formula; lazily held, every slab and row lookup gives those floats too."""
    _, _, tensors = checkpoint
    path = write_llama_gguf(tmp_path / "k.gguf", tensors, FIELDS, kinds=lambda name, shape: kind, seed=7)
    eager = minigpt.from_pretrained(path, weights="float32")
    lazy = minigpt.from_pretrained(path, weights="lazy")
    reader = gguf.GGUFReader(str(path))
    stored = {t.name: t for t in reader.tensors}
    for name, gname, heads in (("layers.1.self_attn.q_proj.weight", "blk.1.attn_q.weight", 4),
                               ("layers.0.self_attn.k_proj.weight", "blk.0.attn_k.weight", 2),
                               ("layers.0.mlp.down_proj.weight", "blk.0.ffn_down.weight", None),
                               ("embed_tokens.weight", "token_embd.weight", None)):
        t = stored[gname]
        expected = gguf.quants.dequantize(t.data, t.tensor_type).reshape(tensors["model." + name].shape)
        if heads:        # the converter's permutation, undone by applying its inverse index
            index = llama_cpp_permute(np.arange(expected.shape[0]), heads)
            expected = expected[np.argsort(index)]
        assert np.array_equal(eager.state_dict()[name], expected, equal_nan=True), (kind, name)
        held = lazy.state_dict()[name]
        if kind != "F32":
            assert isinstance(held, LazyTensor) and held.kind == kind
            assert np.array_equal(held.widen(), expected, equal_nan=True)
            assert np.array_equal(held[[5, 0, 5]], expected[[5, 0, 5]], equal_nan=True)
            out = np.empty((3, expected.shape[1]), np.float32)
            assert np.array_equal(held.widen_into(out, slice(2, 5)), expected[2:5], equal_nan=True)
    assert np.array_equal(eager.state_dict()["norm.weight"], tensors["model.norm.weight"])   # F32 vectors as written


@pytest.mark.parametrize("kinds", [("Q4_1", "Q8_0"), ("Q6_K", "Q4_K"), ("BF16", "F16"), ("Q5_0", "IQ4_NL")])
@pytest.mark.parametrize("slab_bytes", [3000, minigpt.weights.SLAB_BYTES])
def test_lazy_quantized_weights_give_the_float32_floats_at_every_hook(checkpoint, tmp_path, monkeypatch, kinds,
                                                                      slab_bytes):
    """3000-byte slabs: every product in ragged slabs of 2-3 rows, q/k slabs gathered across the
    interleaved rows; the defaults: a slab each. Bit for bit, the unembedding included."""
    monkeypatch.setattr(minigpt.weights, "SLAB_BYTES", slab_bytes)
    _, _, tensors = checkpoint
    path = write_llama_gguf(tmp_path / "l.gguf", tensors, FIELDS, seed=2,
                            kinds=lambda name, shape: kinds[0] if "attn" in name or "token" in name else kinds[1])
    eager, lazy = minigpt.from_pretrained(path, weights="float32"), minigpt.from_pretrained(path, weights="lazy")
    auto = minigpt.from_pretrained(path)
    assert lazy.lazy_weights and not eager.lazy_weights and not auto.lazy_weights       # small: float32
    assert "weights='lazy'" in repr(lazy)
    tokens, mask = left_pad([[1, 5, 9, 2, 7], [7, 7]])
    logits, cache = lazy.run_with_cache(tokens, attention_mask=mask)
    ref_logits, ref_cache = eager.run_with_cache(tokens, attention_mask=mask)
    assert np.array_equal(logits, ref_logits, equal_nan=True)
    assert all(np.array_equal(cache[n], ref_cache[n], equal_nan=True) for n in cache)
    held = [t for t in lazy.state_dict().values() if isinstance(t, LazyTensor)]
    assert {t.kind for t in held} == set(kinds) and all(len(t.shape) == 2 for t in held)
    named = "float16/bfloat16" if set(kinds) == {"BF16", "F16"} else "/".join(sorted(kinds))
    assert f" of {named} matrices read from the mapped file a slab at a time" in lazy.memory_report()


def test_a_lazy_quantized_decode_step_allocates_nothing_of_a_matrixs_size(checkpoint, tmp_path):
    import tracemalloc

    _, _, tensors = checkpoint
    path = write_llama_gguf(tmp_path / "d.gguf", tensors, FIELDS, kinds=lambda name, shape: "Q4_1")
    lazy = minigpt.from_pretrained(path, weights="lazy")
    cache = lazy.new_cache(1, 16)
    lazy([[1, 2, 3]], cache=cache)
    largest = max(math.prod(t.shape) * 4 for t in lazy.state_dict().values())
    tracemalloc.start()
    lazy([[4]], cache=cache, last_only=True)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    # dequantizing a slab makes gguf-py's temporaries of the slab's size: a whole matrix at this
    # size (one slab), never the model's
    assert peak < 8 * largest, f"{peak:,} bytes for a decode step; the largest matrix is {largest:,} in float32"


# --- rope scaling as llama.cpp applies it -------------------------------------------------------


def test_the_rope_freqs_tensor_is_the_llama3_scaling_it_was_made_from(reference, tmp_path):
    """Llama 3.1's files carry "llama3" scaling as one divisor per frequency (rope_freqs); the
    same logits as transformers with rope_scaling on the checkpoint (positions past the original
    context, where the scaling matters)."""
    import torch

    scaling = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
               "original_max_position_embeddings": 16}
    fields = {**FIELDS, "rope_theta": 500000.0, "rope_scaling": scaling, "max_position_embeddings": 128}
    hf = hf_llama(reference, tmp_path / "hf", fields, seed=4)
    path = write_llama_gguf(tmp_path / "r.gguf", hf_tensors(hf), fields, rope_freqs=llama3_rope_freqs(fields))
    ours = minigpt.from_pretrained(path)
    assert ours.config.rope_freq_factors is not None and max(ours.config.rope_freq_factors) == 8.0
    prompt = (np.arange(90) * 7 % 262).tolist()
    with torch.no_grad():
        ref = hf(torch.tensor([prompt])).logits[0].numpy()
    err = assert_close(ours([prompt])[0], ref, "llama3-scaled GGUF logits")
    without = write_llama_gguf(tmp_path / "plain.gguf", hf_tensors(hf), fields)
    assert max_abs(minigpt.from_pretrained(without)([prompt])[0], ref) > 100 * max(err, 1e-6)   # it mattered
    record_parity("LLaMA from GGUF with rope_freqs (llama3 scaling) vs transformers", scaled=err)


def test_linear_rope_scaling_is_read_from_the_metadata(reference, tmp_path):
    import torch

    fields = {**FIELDS, "rope_scaling": {"rope_type": "linear", "factor": 4.0}}
    hf = hf_llama(reference, tmp_path / "hf", fields, seed=6)
    path = write_llama_gguf(tmp_path / "lin.gguf", hf_tensors(hf), fields,
                            metadata={"llama.rope.scaling.type": "linear", "llama.rope.scaling.factor": 4.0})
    prompt = list(range(1, 40))
    with torch.no_grad():
        ref = hf(torch.tensor([prompt])).logits[0].numpy()
    assert_close(minigpt.from_pretrained(path)([prompt])[0], ref, "linear-scaled GGUF logits")


# --- refusals ----------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["Q8_1", "Q8_K", "I8", "I16", "I32", "I64", "F64"])
def test_types_gguf_py_cannot_dequantize_are_refused_by_name(checkpoint, tmp_path, kind):
    _, _, tensors = checkpoint
    path = write_llama_gguf(tmp_path / "t.gguf", tensors, FIELDS,
                            kinds=lambda name, shape: kind if name == "blk.1.ffn_up.weight" else "F32")
    outcome, _, _ = bounded(minigpt.from_pretrained, path, megabytes=200)
    one_line(outcome, path, f"tensor 'blk.1.ffn_up.weight' is {kind}, which gguf-py cannot dequantize")


@pytest.mark.parametrize("metadata,match", [
    ({"llama.expert_count": 8}, "llama.expert_count is 8: a mixture of experts"),
    ({"llama.rope.dimension_count": 32}, "llama.rope.dimension_count is 32, not the head size 64"),
    ({"llama.rope.scaling.type": "yarn"}, "llama.rope.scaling.type is 'yarn'"),
    ({"llama.block_count": None}, "no metadata key llama.block_count"),
    ({"llama.block_count": 10**6}, "the config's num_hidden_layers=1,000,000 blocks cannot be in a checkpoint of"),
    ({"llama.embedding_length": "wide"}, "llama.embedding_length is STRING 'wide' (expected an integer >= 1)"),
    ({"llama.attention.head_count": 3}, "llama.attention.head_count: 3 does not divide llama.embedding_length=256"),
    ({"llama.vocab_size": 300}, "llama.vocab_size is 300, but token_embd.weight has 262 rows"),
    ({"llama.attention.layer_norm_rms_epsilon": float("nan")}, "llama.attention.layer_norm_rms_epsilon is nan"),
])
def test_metadata_that_does_not_describe_the_tensors_is_refused_by_key(checkpoint, tmp_path, metadata, match):
    _, _, tensors = checkpoint
    path = write_llama_gguf(tmp_path / "m.gguf", tensors, FIELDS, metadata=metadata)
    outcome, _, _ = bounded(minigpt.from_pretrained, path, megabytes=200)
    one_line(outcome, path, match)


def test_other_architectures_are_refused_naming_those_supported(checkpoint, tmp_path):
    _, _, tensors = checkpoint
    path = write_llama_gguf(tmp_path / "q.gguf", tensors, FIELDS, architecture="qwen2")
    one_line(bounded(minigpt.from_pretrained, path)[0], path, "general.architecture is 'qwen2', which minigpt does "
             "not run (it runs 'llama', 'gemma3')")


def test_missing_and_unexpected_tensors_are_refused_by_name(checkpoint, tmp_path):
    _, _, tensors = checkpoint
    fewer = {k: v for k, v in tensors.items() if k != "model.layers.1.mlp.up_proj.weight"}
    path = write_llama_gguf(tmp_path / "few.gguf", fewer, FIELDS)
    one_line(bounded(minigpt.from_pretrained, path)[0], path, "missing tensor(s) 'layers.1.mlp.up_proj.weight (512, 256)'")
    more = {**tensors, "blk.0.attn_foo.weight": np.zeros((4, 32), np.float32)}
    path = write_llama_gguf(tmp_path / "more.gguf", more, FIELDS)
    one_line(bounded(minigpt.from_pretrained, path)[0], path, "unexpected tensor(s) 'blk.0.attn_foo.weight' for a LLaMA")
    biased = {**tensors, "model.layers.0.self_attn.q_proj.bias": np.zeros(256, np.float32)}   # q's bias alone
    path = write_llama_gguf(tmp_path / "bias.gguf", biased, FIELDS)
    one_line(bounded(minigpt.from_pretrained, path)[0], path, "missing tensor(s) 'layers.0.self_attn.k_proj.bias (128,)'")


def header(tensors=0, metadata=0, version=3, magic=b"GGUF"):
    return magic + struct.pack("<IQQ", version, tensors, metadata)


def kv_string(key, value: bytes, claimed=None):
    k = key.encode()
    return struct.pack("<Q", len(k)) + k + struct.pack("<I", 8) + struct.pack("<Q", len(value) if claimed is None
                                                                              else claimed) + value


HOSTILE = {
    "magic": (b"GGML" + b"\0" * 40, "starts with b'GGML', not a GGUF file"),
    "version 1": (header(version=1) + b"\0" * 16, "GGUF version 1"),
    "big-endian": (b"GGUF" + struct.pack(">IQQ", 3, 0, 0) + b"\0" * 16, "big-endian GGUF file"),
    "short": (b"GGUF\3\0", "a GGUF file starts with 24 bytes"),
    "tensor count": (header(tensors=2**62) + b"\0" * 16, "claims 4,611,686,018,427,387,904 tensors"),
    "metadata count": (header(metadata=2**40) + b"\0" * 16, "claims 1,099,511,627,776 metadata entries"),
    "key length": (header(metadata=1) + struct.pack("<Q", 2**60) + b"\0" * 16, "metadata key #0 at byte 24 is"),
    "string length": (header(metadata=1) + kv_string("general.name", b"x", claimed=2**40), "the value of general.name"),
    "past the end": (header(metadata=1) + kv_string("general.name", b"abc", claimed=1000), "runs past the end"),
    "value type": (header(metadata=1) + struct.pack("<Q", 1) + b"k" + struct.pack("<I", 77) + b"\0" * 8,
                   "k has value type 77"),
    "nested arrays": (header(metadata=1) + struct.pack("<Q", 1) + b"k" + struct.pack("<IIQ", 9, 9, 1) + b"\0" * 8,
                      "k is an array of arrays"),
    "string array": (header(metadata=1) + struct.pack("<Q", 1) + b"k" + struct.pack("<IIQ", 9, 8, 2**50) + b"\0" * 8,
                     "k holds 1,125,899,906,842,624 strings"),
    "number array": (header(metadata=1) + struct.pack("<Q", 1) + b"k" + struct.pack("<IIQ", 9, 5, 2**30) + b"\0" * 8,
                     "k holds 1,073,741,824 numbers"),
    "bool": (header(metadata=1) + struct.pack("<Q", 1) + b"k" + struct.pack("<I", 7) + b"\7" + b"\0" * 8,
             "k is a BOOL of byte 7"),
    "duplicate key": (header(metadata=2) + 2 * kv_string("k", b"v") + b"\0" * 8, "metadata key k appears twice"),
    "alignment": (header(metadata=1) + struct.pack("<Q", 17) + b"general.alignment" + struct.pack("<II", 4, 3)
                  + b"\0" * 8, "general.alignment is 3 (expected a power of two)"),
}


def tensor_info(name, dims, kind, offset):
    n = name.encode()
    return struct.pack("<Q", len(n)) + n + struct.pack("<I", len(dims)) + struct.pack(f"<{len(dims)}Q", *dims) + \
        struct.pack("<IQ", kind, offset)


HOSTILE.update({
    "dims": (header(tensors=1) + tensor_info("w", [1, 2, 3, 4, 5], 0, 0), "tensor 'w' has 5 dimensions"),
    "huge tensor": (header(tensors=1) + tensor_info("w", [2**31, 2**31], 0, 0),
                    "tensor 'w' (F32 [2147483648, 2147483648]) needs 18,446,744,073,709,551,616 bytes, more than"),
    "tensor type": (header(tensors=1) + tensor_info("w", [4], 99, 0), "tensor 'w' has type 99"),
    "block rows": (header(tensors=1) + tensor_info("w", [33, 2], 2, 0), "rows of 33 numbers, not a multiple"),
    "misaligned": (header(tensors=1) + tensor_info("w", [4], 0, 3), "starts at offset 3, not a multiple"),
    "data past the end": (header(tensors=1) + tensor_info("w", [16], 0, 32) + b"\0" * 64,
                          "tensor 'w' (F32 [16], 64 bytes at byte 96) runs past the end of the file (121 bytes)"),
    "overlap": (header(tensors=2) + tensor_info("a", [16], 0, 0) + tensor_info("b", [16], 0, 32) + b"\0" * 256,
                "tensor 'b' overlaps tensor 'a'"),
    "long name": (header(tensors=1) + tensor_info("w" * 64, [4], 0, 0), "the name of tensor #0 at byte 24 is 64"),
})


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_hostile_headers_are_refused_in_one_line_within_the_memory_limit(tmp_path, case):
    data, match = HOSTILE[case]
    path = tmp_path / "h.gguf"
    path.write_bytes(data)
    outcome, _, _ = bounded(minigpt.load, path, megabytes=200)
    one_line(outcome, path, match)


def test_the_most_strings_allowed_are_walked_within_the_memory_limit(tmp_path):
    """2,097,152 empty strings in one array (a 17 MB file): walked (their lengths only, nothing
    kept per string) within 200 MB, then the missing architecture is what is refused; one more
    string is refused from the count, before any is read. (0.20 s here: bench_gguf.py --header.)"""
    from minigpt.gguf import MAX_STRINGS

    data = header(metadata=1) + struct.pack("<Q", 1) + b"k" + struct.pack("<IIQ", 9, 8, MAX_STRINGS)
    path = tmp_path / "s.gguf"
    path.write_bytes(data + b"\0" * (8 * MAX_STRINGS))
    outcome, _, megabytes = bounded(minigpt.load, path, megabytes=200)
    one_line(outcome, path, "no metadata key general.architecture")
    assert megabytes < 20                                    # the strings' places are not kept one by one
    path.write_bytes(data.replace(struct.pack("<Q", MAX_STRINGS), struct.pack("<Q", MAX_STRINGS + 1)) + b"\0" * 8)
    one_line(bounded(minigpt.load, path)[0], path, f"k holds {MAX_STRINGS + 1:,} strings")


@pytest.fixture(scope="module")
def small_file(checkpoint, tmp_path_factory):
    """The bytes of a complete model file (a tokenizer too) to fuzz."""
    _, _, tensors = checkpoint
    path = tmp_path_factory.mktemp("fuzz") / "good.gguf"
    write_llama_gguf(path, tensors, FIELDS, tokenizer=gpt2_style_tokenizer(TOK, bos="<|endoftext|>"),
                     kinds=lambda name, shape: "Q8_0")
    return path.read_bytes()


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(flips=st.lists(st.tuples(st.integers(0, 4000), st.integers(0, 255)), min_size=1, max_size=4),
       cut=st.none() | st.integers(0, 10**7))
def test_fuzzed_model_files_load_or_are_refused_in_one_line(small_file, tmp_path_factory, flips, cut):
    """Bytes of the header (its first 4,000: counts, keys, types, lengths, tokens) changed, or the
    file cut short: it loads, or is refused in one line naming the file, within 200 MB."""
    data = bytearray(small_file)
    for at, byte in flips:
        data[at % len(data)] = byte
    path = tmp_path_factory.mktemp("f") / "bad.gguf"
    path.write_bytes(bytes(data[:cut % len(data)] if cut is not None else data))
    outcome, _, _ = bounded(minigpt.load, path, megabytes=200)
    if isinstance(outcome, Exception):
        one_line(outcome, path)
    else:
        model, tok = outcome
        assert model([[1, 2, 3]]).dtype == np.float32


def test_without_gguf_py_the_error_names_the_extra(checkpoint, tmp_path, monkeypatch):
    import sys

    _, _, tensors = checkpoint
    path = write_llama_gguf(tmp_path / "n.gguf", tensors, FIELDS)
    monkeypatch.setitem(sys.modules, "gguf", None)                      # as if not installed
    with pytest.raises(GGUFError, match=r"GGUF files need the gguf package .*pip install 'minigpt-actadd\[gguf\]'"):
        minigpt.load(path)


def test_a_vector_made_on_a_gguf_model_saves_loads_and_names_its_source(reference, tmp_path):
    """The config (with rope_freq_factors, a tuple) survives the vector file's JSON; the model
    records the file it came from, so that a Dask worker loads the same weights."""
    from actadd.provenance import ModelSource

    scaling = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
               "original_max_position_embeddings": 16}
    fields = {**FIELDS, "rope_scaling": scaling}
    hf = hf_llama(reference, tmp_path / "hf", fields, seed=2)
    path = write_llama_gguf(tmp_path / "v.gguf", hf_tensors(hf), fields, rope_freqs=llama3_rope_freqs(fields),
                            tokenizer=gpt2_style_tokenizer(TOK, bos="<|endoftext|>"))
    model, tok = minigpt.load(path)
    vector = actadd.steering_vector(model, actadd.x_vector(tok, "the ab", "abab", 2.0, 1))
    actadd.save(vector, tmp_path / "vec.safetensors")
    again = actadd.load(tmp_path / "vec.safetensors", model)
    assert np.array_equal(again.activations[0], vector.activations[0])
    assert model.loaded_from["name_or_path"] == str(path.resolve())
    copy, _ = ModelSource.of(model).load()
    assert np.array_equal(copy([[1, 2, 3]]), model([[1, 2, 3]]))
