"""The lazy weight policy in every family: float16/bfloat16 matrices left in the mapped file and
widened a slab at a time where they are multiplied (minigpt.weights.matmul) give the float32
policy's floats bit for bit, at every hook, without allocating anything of a matrix's size; and
grouped-query attention reads each key/value head where the cache holds it."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest

import minigpt
import minigpt.weights
from minigpt import GPT2Config
from minigpt.generate import left_pad
from minigpt.weights import HalfTensor


def write_family(reference, folder, family, dtype, **sizes):
    """A random model of `family`, written by transformers in `dtype`."""
    import torch

    if family == "gpt2":
        config = GPT2Config(**{**dict(vocab_size=96, n_positions=32, n_embd=32, n_layer=2, n_head=4), **sizes})
        reference.write_checkpoint(folder, config, seed=5, dtype=dtype)
        return
    from test_llama import write_llama
    from test_opt import write_opt

    if family == "opt":
        fields = dict(vocab_size=96, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, ffn_dim=40,
                      max_position_embeddings=32, word_embed_proj_dim=16, tie_word_embeddings=False)
        hf = write_opt(reference, folder / "f32", {**fields, **sizes}, seed=5)
    else:
        fields = dict(vocab_size=96, hidden_size=32, num_attention_heads=4, num_key_value_heads=2,
                      intermediate_size=40, num_hidden_layers=2, max_position_embeddings=32, tie_word_embeddings=False)
        hf = write_llama(reference, folder / "f32", {**fields, **sizes}, seed=5)
    hf.to(getattr(torch, dtype)).save_pretrained(folder)


CASES = [("gpt2", "float16"), ("gpt2", "bfloat16"), ("opt", "float16"), ("opt", "bfloat16"),
         ("llama", "bfloat16"), ("llama", "float16")]


@pytest.mark.parametrize("family,dtype", CASES)
@pytest.mark.parametrize("slab_bytes", [500, minigpt.weights.SLAB_BYTES])
def test_lazy_weights_give_the_float32_floats_at_every_hook(reference, tmp_path, monkeypatch, family, dtype,
                                                             slab_bytes):
    """500-byte slabs: every product runs in ragged slabs of 1-3 columns (the float32 policy's
    too, so that both make the same BLAS calls); the default: one slab each at this size."""
    monkeypatch.setattr(minigpt.weights, "SLAB_BYTES", slab_bytes)
    write_family(reference, tmp_path, family, dtype)
    eager = minigpt.from_pretrained(tmp_path, weights="float32")
    lazy = minigpt.from_pretrained(tmp_path, weights="lazy")
    assert lazy.lazy_weights and not eager.lazy_weights
    held = [t for t in lazy.state_dict().values() if isinstance(t, HalfTensor)]
    assert held and all(len(t.shape) == 2 for t in held)                 # every matrix stays in the file
    tokens, mask = left_pad([[1, 5, 9, 2, 7], [7, 7]], pad_id=0)
    logits, cache = lazy.run_with_cache(tokens, attention_mask=mask)
    ref_logits, ref_cache = eager.run_with_cache(tokens, attention_mask=mask)
    assert np.array_equal(logits, ref_logits) and logits.dtype == np.float32
    assert list(cache) == list(ref_cache) and len(cache) == len(lazy.hook_names)
    for name in cache:
        assert cache[name].dtype == np.float32, name
        assert np.array_equal(cache[name], ref_cache[name]), name
    sampled = [minigpt.generate(m, [[1, 5, 9], [7]], max_new_tokens=6, temperature=1.0, seed=3).tokens
               for m in (lazy, eager)]
    assert sampled[0] == sampled[1]


def test_a_lazy_pass_allocates_nothing_of_a_matrix_size(reference, tmp_path, monkeypatch):
    """With 16 KiB slabs, a lazy decode step's peak NumPy allocation stays under a quarter of the
    largest matrix in float32 (the 2,000 x 64 unembedding, 512 KB): matrices are widened a slab at
    a time into one reused buffer, never whole."""
    monkeypatch.setattr(minigpt.weights, "SLAB_BYTES", 16 << 10)
    write_family(reference, tmp_path, "gpt2", "bfloat16", vocab_size=2000, n_embd=64, n_layer=2, n_head=4)
    lazy = minigpt.from_pretrained(tmp_path, weights="lazy")
    largest = 2000 * 64 * 4
    cache = lazy.new_cache(1, 8)
    lazy(np.array([[1, 2, 3]]), cache=cache, last_only=True)
    tracemalloc.start()
    try:
        logits = lazy(np.array([[4]]), cache=cache, last_only=True)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert logits.shape == (1, 1, 2000)
    print(f"lazy decode step: peak allocation {peak:,} bytes; largest matrix in float32 {largest:,}")
    assert peak < largest / 4


def test_grouped_query_attention_reads_key_value_heads_in_place(reference, tmp_path):
    """8 query heads on 1 key/value head, 2 rows, 600 cached positions: one layer's keys are 154 KB,
    a copy for every query head 1.2 MB each for keys and values. A decode step's peak allocation
    stays under 0.5 MB, and its logits equal those of the same model written with the key/value
    head repeated for every query head (multi-head attention): up to float rounding, since the
    group's query rows are multiplied as one product (8 x 32 @ 32 x 602) where multi-head
    attention runs eight (1 x 32 @ 32 x 602), and q, k, v as one product of other rows; a query
    head attending to a wrong key/value head is off by order 1."""
    from minigpt import Llama, LlamaConfig

    fields = dict(vocab_size=96, hidden_size=256, num_attention_heads=8, num_key_value_heads=1,
                  intermediate_size=64, num_hidden_layers=2, max_position_embeddings=1024, tie_word_embeddings=False)
    write_family(reference, tmp_path, "llama", "bfloat16", **fields)
    gqa = minigpt.from_pretrained(tmp_path, weights="float32")
    weights = gqa.state_dict()
    for name in list(weights):
        if name.endswith(("k_proj.weight", "v_proj.weight")):
            weights[name] = np.tile(weights[name], (8, 1))               # the one head, for each query head
    mha = Llama(LlamaConfig(**{**fields, "num_key_value_heads": 8}), weights)
    rng = np.random.default_rng(0)
    prompt = rng.integers(0, 96, (2, 600))
    caches = [m.new_cache(2, 602) for m in (gqa, mha)]
    for m, c in zip((gqa, mha), caches):
        m(prompt, cache=c, last_only=True)
    assert caches[0].keys[0].shape == (2, 1, 602, 32)                   # the cache holds key/value heads only
    tracemalloc.start()
    try:
        step = gqa(np.array([[3], [4]]), cache=caches[0], last_only=True)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    print(f"GQA decode step, 600 cached positions: peak allocation {peak:,} bytes")
    assert peak < 0.5e6
    from conftest import scaled_error

    assert scaled_error(step, mha(np.array([[3], [4]]), cache=caches[1], last_only=True)) < 1e-5
    with_scores = gqa.run_with_cache(prompt[:, :9], names=lambda n: "pattern" in n or "attn_scores" in n)[1]
    assert with_scores["blocks.0.attn.hook_pattern"].shape == (2, 8, 9, 9)
    assert np.allclose(with_scores["blocks.0.attn.hook_pattern"].sum(-1), 1, atol=1e-6)


def test_widening_is_exact_for_every_half_precision_number():
    """All 65,536 float16 and bfloat16 bit patterns (signed zeros, subnormals, inf, NaN), widened
    into a buffer as a lazy product does, equal NumPy's own float16 cast and the bfloat16 rule
    (its bits on top of a float32), bit for bit. A tensor with no inf or NaN takes the fast float16
    path (3 vector passes); one with them, NumPy's cast."""
    bits = np.arange(65536, dtype=np.uint32).astype(np.uint16)
    half = bits.view(np.float16)
    finite = half[np.isfinite(half)]
    cases = [(finite.reshape(1, -1), "F16", True), (half.reshape(256, 256), "F16", False),
             (bits.reshape(256, 256), "BF16", None)]
    for raw, dtype, fast in cases:
        tensor = HalfTensor(raw, dtype)
        out = np.full(raw.shape, np.nan, np.float32)
        tensor.widen_into(out, (slice(None),))
        expected = (raw.astype(np.float32) if dtype == "F16" else (raw.astype(np.uint32) << 16).view(np.float32))
        assert np.array_equal(out.view(np.uint32), expected.view(np.uint32)), dtype
        assert tensor._finite is fast
        assert np.array_equal(tensor.widen().view(np.uint32), expected.view(np.uint32))


def test_stacked_projections_keep_the_names_and_one_copy(reference, tmp_path):
    """q/k/v and gate/up run as one product each: widened (float32 policy) their weights are
    views of one stacked matrix, so the parameters are held once under their checkpoint names;
    lazily they stack without a copy; a float32 file's mapped weights are not copied at all (and
    run one product each). The logits agree across the three, and with the unstacked products."""
    from minigpt.weights import StackedTensor, mapped

    fields = dict(vocab_size=96, hidden_size=64, num_attention_heads=4, num_key_value_heads=2, intermediate_size=96,
                  num_hidden_layers=2, max_position_embeddings=32, tie_word_embeddings=False)
    write_family(reference, tmp_path, "llama", "bfloat16", **fields)
    widened = minigpt.from_pretrained(tmp_path, weights="float32")
    lazy = minigpt.from_pretrained(tmp_path, weights="lazy")
    mapped_file = minigpt.from_pretrained(tmp_path / "f32")
    attn = widened.layers[0]["self_attn"]
    stacked, biases, widths = widened.products[0]["attn"][0]
    assert widths == [64, 32, 32] and biases is None and stacked.shape == (128, 64)
    assert all(np.shares_memory(attn[n]["weight"], stacked) for n in ("q_proj", "k_proj", "v_proj"))
    assert np.array_equal(stacked[64:96], attn["k_proj"]["weight"])
    assert isinstance(lazy.products[0]["mlp"][0][0], StackedTensor)
    assert lazy.products[0]["mlp"][0][0].parts[1] is lazy.layers[0]["mlp"]["up_proj"]["weight"]
    assert len(mapped_file.products[0]["attn"]) == 3 and mapped(mapped_file.layers[0]["self_attn"]["q_proj"]["weight"])
    tokens = [[1, 5, 9, 2, 7]]
    from conftest import scaled_error

    assert np.array_equal(widened(tokens), lazy(tokens))
    from minigpt import Llama

    owned = Llama(mapped_file.config, {k: np.array(v) for k, v in mapped_file.state_dict().items()})
    assert len(owned.products[0]["attn"]) == 1                           # the same float32 weights, stacked
    assert scaled_error(owned(tokens), mapped_file(tokens)) < 1e-5


def test_stacked_biases_are_copied_whatever_they_are_views_of():
    """Weights widened at load stack; their biases stack too even where they are views of a
    file (a float32 bias beside half-precision weights), one copy, under their names."""
    from minigpt.llama import stacked
    from minigpt.weights import mapped

    rng = np.random.default_rng(0)
    modules = [{"weight": rng.standard_normal((n, 8)).astype(np.float32),
                "bias": np.frombuffer(rng.standard_normal(n).astype(np.float32).tobytes(), np.float32)}
               for n in (4, 2, 2)]
    assert all(mapped(m["bias"]) for m in modules)
    biases = [m["bias"].copy() for m in modules]
    ((weight, bias, widths),) = stacked(modules, np)
    assert widths == [4, 2, 2] and np.array_equal(bias, np.concatenate(biases))
    assert all(np.shares_memory(m["bias"], bias) and np.array_equal(m["bias"], b) for m, b in zip(modules, biases))
