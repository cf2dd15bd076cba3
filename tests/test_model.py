"""Properties of the forward pass and its hook points, on random models (NumPy only, no torch)."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import configs, random_model
from minigpt import GPT2Config, hook_names


@st.composite
def model_and_tokens(draw, min_seq=1, max_batch=3):
    config = draw(configs())
    batch = draw(st.integers(1, max_batch))
    seq = draw(st.integers(min(min_seq, config.n_positions), config.n_positions))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    tokens = rng.integers(0, config.vocab_size, (batch, seq))
    return random_model(config, seed=draw(st.integers(0, 1000))), tokens


def expected_shape(name, config, batch, seq):
    D, H, dh = config.n_embd, config.n_head, config.d_head
    if name.endswith("hook_scale"):
        return (batch, seq, 1)
    if name.split(".")[-1] in ("hook_q", "hook_k", "hook_v", "hook_z"):
        return (batch, seq, H, dh)
    if name.endswith(("hook_attn_scores", "hook_pattern")):
        return (batch, H, seq, seq)
    if name.endswith(("mlp.hook_pre", "mlp.hook_post")):
        return (batch, seq, config.d_mlp)
    return (batch, seq, D)


@settings(max_examples=40)
@given(model_and_tokens())
def test_every_hook_sees_float32_of_the_documented_shape_in_forward_order(mt):
    model, tokens = mt
    seen = []
    model.run_with_hooks(tokens, fwd_hooks=[(lambda n: True, lambda x, name: seen.append((name, x)))])
    assert [name for name, _ in seen] == hook_names(model.config.n_layer)
    for name, x in seen:
        assert x.dtype == np.float32, name
        assert x.shape == expected_shape(name, model.config, *tokens.shape), name
    assert model(tokens).dtype == np.float32


@settings(max_examples=40)
@given(model_and_tokens())
def test_residual_stream_decomposes_exactly(mt):
    model, tokens = mt
    _, cache = model.run_with_cache(tokens)
    for L in range(model.config.n_layer):
        b = f"blocks.{L}."
        pre, attn, mid, mlp, post = (cache[b + n] for n in (
            "hook_resid_pre", "hook_attn_out", "hook_resid_mid", "hook_mlp_out", "hook_resid_post"))
        np.testing.assert_array_equal(mid, pre + attn)
        np.testing.assert_array_equal(post, mid + mlp)
        np.testing.assert_array_equal(post, pre + attn + mlp)
        if L + 1 < model.config.n_layer:
            np.testing.assert_array_equal(cache[f"blocks.{L + 1}.hook_resid_pre"], post)
    np.testing.assert_array_equal(cache["blocks.0.hook_resid_pre"], cache["hook_embed"] + cache["hook_pos_embed"])


@settings(max_examples=30)
@given(model_and_tokens())
def test_hook_meanings(mt):
    """LayerNorm hooks are before gain and bias; the pattern is the softmax of the masked scores."""
    model, tokens = mt
    eps = model.config.layer_norm_epsilon
    _, cache = model.run_with_cache(tokens)
    for ln, resid in (("blocks.0.ln1", "blocks.0.hook_resid_pre"), ("blocks.0.ln2", "blocks.0.hook_resid_mid")):
        x = cache[resid].astype(np.float64)
        centred = x - x.mean(-1, keepdims=True)
        scale = np.sqrt((centred**2).mean(-1, keepdims=True) + eps)
        np.testing.assert_allclose(cache[ln + ".hook_scale"], scale, rtol=1e-5)
        np.testing.assert_allclose(cache[ln + ".hook_normalized"], centred / scale, rtol=1e-4, atol=1e-5)
    scores, pattern = cache["blocks.0.attn.hook_attn_scores"], cache["blocks.0.attn.hook_pattern"]
    seq = tokens.shape[1]
    future = np.triu(np.ones((seq, seq), dtype=bool), k=1)
    assert np.isneginf(scores[..., future]).all() and np.isfinite(scores[..., ~future]).all()
    assert (pattern[..., future] == 0).all()
    np.testing.assert_allclose(pattern.sum(-1), 1.0, rtol=1e-5)
    e = np.exp(scores.astype(np.float64) - scores.max(-1, keepdims=True))
    np.testing.assert_allclose(pattern, e / e.sum(-1, keepdims=True), rtol=1e-5, atol=1e-7)


@settings(max_examples=30)
@given(model_and_tokens(min_seq=2), st.data())
def test_prefix_invariance(mt, data):
    """Causality: logits of a prefix are the prefix of the logits."""
    model, tokens = mt
    k = data.draw(st.integers(1, tokens.shape[1]))
    np.testing.assert_allclose(model(tokens[:, :k]), model(tokens)[:, :k], rtol=1e-5, atol=1e-5)


@settings(max_examples=30)
@given(model_and_tokens())
def test_batch_rows_equal_unbatched_runs(mt):
    model, tokens = mt
    batched = model(tokens)
    for i, row in enumerate(tokens):
        np.testing.assert_allclose(batched[i], model(row)[0], rtol=1e-5, atol=1e-5)


@settings(max_examples=20)
@given(model_and_tokens())
def test_identity_hooks_change_nothing(mt):
    model, tokens = mt
    plain = model(tokens)
    hooked = model.run_with_hooks(tokens, fwd_hooks=[(lambda n: True, lambda x, name: x),
                                                    (lambda n: True, lambda x, name: None)])
    np.testing.assert_array_equal(hooked, plain)


@settings(max_examples=30)
@given(model_and_tokens(), st.data())
def test_resid_pre_hook_changes_only_what_flows_into_that_block(mt, data):
    """What ActAdd relies on: editing blocks.L.hook_resid_pre at position t leaves every earlier
    block and every earlier position as it was, and does change block L onward."""
    model, tokens = mt
    L = data.draw(st.integers(0, model.config.n_layer - 1))
    t = data.draw(st.integers(0, tokens.shape[1] - 1))
    delta = np.zeros((model.config.n_embd,), np.float32)
    delta[0] = 10.0

    def add(x, name):
        x = x.copy()
        x[:, t] += delta
        return x

    clean_logits, clean = model.run_with_cache(tokens)
    logits, steered = _cache_with_hooks(model, tokens, [(f"blocks.{L}.hook_resid_pre", add)])
    for name in clean:
        layer = int(name.split(".")[1]) if name.startswith("blocks.") else None
        if name.startswith("hook_") or (layer is not None and layer < L):
            np.testing.assert_array_equal(steered[name], clean[name], err_msg=name)
    np.testing.assert_array_equal(steered[f"blocks.{L}.hook_resid_pre"][:, t],
                                  clean[f"blocks.{L}.hook_resid_pre"][:, t] + delta)
    np.testing.assert_allclose(logits[:, :t], clean_logits[:, :t], rtol=1e-5, atol=1e-5)
    assert not np.allclose(logits[:, t], clean_logits[:, t])


def test_a_replacement_at_every_hook_point_flows_on():
    """Each point's returned array is what the rest of the pass uses (TransformerLens semantics:
    e.g. LayerNorm divides by the hooked scale). The edit varies along the last axis, since
    LayerNorm would cancel a uniform scale and shift."""
    model = random_model(GPT2Config(n_layer=2, n_head=2, n_embd=8, n_positions=6, vocab_size=11), seed=3)
    tokens = np.array([[1, 2, 3, 4, 5]])
    clean = model(tokens)
    for name in model.hook_names:
        logits = model.run_with_hooks(
            tokens, [(name, lambda x, n: x * 3.0 + np.linspace(0, 1, x.shape[-1], dtype=np.float32))])
        assert not np.allclose(logits, clean, rtol=1e-4, atol=1e-4), name


def test_layer_norm_divides_by_the_hooked_scale():
    model = random_model(GPT2Config(n_layer=1, n_head=2, n_embd=8, n_positions=6, vocab_size=11))
    tokens = np.array([[1, 2, 3]])
    _, clean = model.run_with_cache(tokens)
    seen = {}
    model.run_with_hooks(tokens, [("blocks.0.ln1.hook_scale", lambda x, n: x * np.float32(2.0)),
                                  ("blocks.0.ln1.hook_normalized", lambda x, n: seen.setdefault(n, x.copy()))])
    np.testing.assert_allclose(seen["blocks.0.ln1.hook_normalized"], clean["blocks.0.ln1.hook_normalized"] / 2,
                               rtol=1e-6)


def _cache_with_hooks(model, tokens, fwd_hooks):
    """Run hooks and record every point after them (the cache sees what flows on)."""
    cache = {}
    record = [(lambda n: True, lambda x, name: cache.__setitem__(name, x.copy()))]
    logits = model.run_with_hooks(tokens, fwd_hooks=list(fwd_hooks) + record)
    return logits, cache


def test_in_place_hook_edits_flow_on_and_weights_stay_untouched():
    """ActAdd's original hook adds in place; that must act like a replacement, and an in-place
    edit of the embeddings must not reach the (read-only, memory-mapped) weights."""
    model = random_model(GPT2Config(n_layer=2, n_head=2, n_embd=8, n_positions=6, vocab_size=11))
    tokens = np.array([[1, 2, 3, 4]])
    wte, wpe = model.wte.copy(), model.wpe.copy()

    def add_in_place(x, name):
        x[:, :2] += 1.0

    def add_copy(x, name):
        return x + np.float32(1.0) * (np.arange(x.shape[1]) < 2)[None, :, None].astype(np.float32)

    for name in ("hook_embed", "hook_pos_embed", "blocks.1.hook_resid_pre"):
        np.testing.assert_array_equal(model.run_with_hooks(tokens, [(name, add_in_place)]),
                                      model.run_with_hooks(tokens, [(name, add_copy)]))
    np.testing.assert_array_equal(model.wte, wte)
    np.testing.assert_array_equal(model.wpe, wpe)


def test_run_with_cache_filters_names_and_keeps_logits():
    model = random_model(GPT2Config(n_layer=3, n_head=2, n_embd=8, n_positions=6, vocab_size=11))
    tokens = np.array([[1, 2, 3]])
    logits, full = model.run_with_cache(tokens)
    assert list(full) == model.hook_names
    np.testing.assert_array_equal(logits, model(tokens))
    _, one = model.run_with_cache(tokens, names="blocks.1.hook_resid_pre")
    assert list(one) == ["blocks.1.hook_resid_pre"]
    np.testing.assert_array_equal(one["blocks.1.hook_resid_pre"], full["blocks.1.hook_resid_pre"])
    _, some = model.run_with_cache(tokens, names=["blocks.2.hook_mlp_out", "hook_embed"])
    assert list(some) == ["hook_embed", "blocks.2.hook_mlp_out"]  # forward order
    _, pred = model.run_with_cache(tokens, names=lambda n: n.endswith("hook_pattern"))
    assert list(pred) == [f"blocks.{L}.attn.hook_pattern" for L in range(3)]


def test_several_hooks_on_one_point_run_in_order():
    model = random_model(GPT2Config(n_layer=1, n_head=1, n_embd=4, n_positions=4, vocab_size=5))
    order = []
    model.run_with_hooks([1, 2], [("blocks.0.hook_resid_pre", lambda x, n: order.append("a")),
                                  ("blocks.0.hook_resid_pre", lambda x, n: order.append("b"))])
    assert order == ["a", "b"]


def test_one_dimensional_tokens_give_a_batch_of_one():
    model = random_model(GPT2Config(n_layer=1, n_head=1, n_embd=4, n_positions=4, vocab_size=5))
    np.testing.assert_array_equal(model([1, 2, 3]), model(np.array([[1, 2, 3]])))
    assert model([4]).shape == (1, 1, 5)


# --- bad input -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def small():
    return random_model(GPT2Config(n_layer=2, n_head=2, n_embd=8, n_positions=6, vocab_size=11))


@pytest.mark.parametrize("tokens,error,match", [
    ([1, 11], ValueError, r"token id 11 at batch row 0, position 1 is outside the vocabulary \[0, 11\)"),
    ([[1, 2], [3, -1]], ValueError, r"token id -1 at batch row 1, position 1"),
    ([1.0, 2.0], TypeError, "must be integer ids, got dtype float64"),
    ([True, False], TypeError, "dtype bool"),
    ([], ValueError, "tokens is empty"),
    ([[]], ValueError, "tokens is empty"),
    ([[[1]]], ValueError, r"shape \[seq\] or \[batch, seq\], got shape \(1, 1, 1\)"),
    (5, ValueError, r"got shape \(\)"),
    ([[1, 2], [3]], ValueError, "rectangular"),
    (list(range(7)), ValueError, "sequence of 7 tokens is longer than n_positions=6"),
])
def test_bad_tokens_are_refused_with_the_reason(small, tokens, error, match):
    with pytest.raises(error, match=match):
        small(tokens)


def test_unknown_hook_names_are_refused_listing_the_valid_pattern(small):
    for bad in ("blocks.0.hook_resid_pr", "resid_pre", "blocks.x.hook_resid_pre", "blocks.0.attn.hook_result"):
        with pytest.raises(ValueError, match=r"unknown hook name .*valid names: hook_embed"):
            small.run_with_hooks([1], [(bad, lambda x, n: None)])
        with pytest.raises(ValueError, match="unknown hook name"):
            small.run_with_cache([1], names=[bad])
    with pytest.raises(ValueError, match=r"'blocks.2.hook_resid_pre': this model has blocks 0 to 1"):
        small.run_with_hooks([1], [("blocks.2.hook_resid_pre", lambda x, n: None)])
    with pytest.raises(TypeError, match="not a function"):
        small.run_with_hooks([1], [("hook_embed", 3)])


@pytest.mark.parametrize("replacement,match", [
    (lambda x: x.astype(np.float64), r"returned ndarray float64 \(1, 2, 8\); expected ndarray float32 \(1, 2, 8\)"),
    (lambda x: x[:, :1], r"returned ndarray float32 \(1, 1, 8\)"),
    (lambda x: x.tolist(), "returned list"),
])
def test_hook_replacements_of_another_dtype_or_shape_are_refused(small, replacement, match):
    def bad_hook(x, name):
        return replacement(x)

    with pytest.raises(ValueError, match=r"hook 'bad_hook' on 'blocks.1.hook_resid_pre' " + match):
        small.run_with_hooks([1, 2], [("blocks.1.hook_resid_pre", bad_hook)])


# ---------------------------------------------------------------------------------------------
# Fast paths against the plain computation they replace


def test_gelu_gives_the_floats_of_its_formula_written_out():
    """gelu_new works step by step in one buffer; it must round exactly as the one-line formula."""
    import math

    from minigpt.model import gelu_new

    rng = np.random.default_rng(0)
    x = np.concatenate([np.linspace(-12, 12, 20001, dtype=np.float32),
                        (rng.standard_normal(20000) * 3).astype(np.float32)])
    c = np.float32(math.sqrt(2.0 / math.pi))
    formula = 0.5 * x * (1.0 + np.tanh(c * (x + 0.044715 * (x * x * x))))
    assert formula.dtype == np.float32
    np.testing.assert_array_equal(gelu_new(x), formula)


def test_mean_last_gives_the_floats_of_mean():
    from minigpt.model import mean_last

    rng = np.random.default_rng(1)
    for width in (1, 3, 64, 768, 1600, 4096):
        x = (rng.standard_normal((300, width)) * rng.uniform(0.01, 100, (300, 1))).astype(np.float32)
        got = mean_last(x)
        assert got.dtype == np.float32
        np.testing.assert_array_equal(got, x.mean(axis=-1, keepdims=True))


@st.composite
def padded_batches(draw):
    """A model, a left-padded batch longer than the attention block, a block size, a split."""
    config = draw(configs(max_positions=40, min_positions=2))
    seq = draw(st.integers(2, config.n_positions))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    tokens = rng.integers(0, config.vocab_size, (draw(st.integers(1, 3)), seq))
    mask = np.arange(seq)[None] >= rng.integers(0, seq, len(tokens))[:, None]   # left padding
    return (random_model(config, seed=draw(st.integers(0, 1000))), tokens, mask,
            draw(st.integers(1, 9)), draw(st.integers(1, seq - 1)))


@settings(max_examples=60)
@given(padded_batches())
def test_causal_attention_by_blocks_equals_the_full_square(case):
    """With no hook on the scores or pattern, attention runs by blocks of queries against the
    keys they can see (`causal_attention`); hooking the pattern forces the full square. Both must
    give the same logits and z, on padded batches, with and without a KV cache.

    Tolerance: the two differ only in the length of the rows summed (a row's invisible keys add
    exact zeros); the largest scaled error over 300 such cases was 5.8e-7, and 1e-5 is the cache
    tolerance of test_generate.py. A misplaced block or key range is off by > 1e-2."""
    from unittest import mock

    from conftest import scaled_error
    from minigpt import model as model_module

    model, tokens, mask, block, split = case
    with mock.patch.object(model_module, "ATTENTION_BLOCK", block):
        full_logits, full = model.run_with_cache(tokens, attention_mask=mask)   # every hook: the full square
        fast_logits, fast = model.run_with_cache(tokens, names=lambda n: n.endswith("hook_z"), attention_mask=mask)
        cache = model.new_cache(len(tokens), tokens.shape[1])
        first = model(tokens[:, :split], attention_mask=mask[:, :split], cache=cache)
        rest = model(tokens[:, split:], attention_mask=mask[:, split:], cache=cache)
    real = mask[:, :, None]  # padding positions are free to differ: nothing reads them
    assert scaled_error(np.where(real, fast_logits, 0), np.where(real, full_logits, 0)) <= 1e-5
    cached = np.concatenate([first, rest], axis=1)
    assert scaled_error(np.where(real, cached, 0), np.where(real, full_logits, 0)) <= 1e-5
    for name, z in fast.items():
        assert scaled_error(np.where(real[..., None], z, 0), np.where(real[..., None], full[name], 0)) <= 1e-5, name


def test_hooking_the_pattern_is_what_forces_the_full_square(monkeypatch):
    """The block path must not run where someone looks at scores or pattern (they would get
    nothing), and must run otherwise (else long prompts pay for the whole square)."""
    from minigpt import model as model_module

    config = GPT2Config(n_layer=2, n_head=2, n_embd=8, n_positions=16, vocab_size=20)
    model = random_model(config)
    tokens = np.arange(16) % 20
    calls = []
    real = model_module.causal_attention
    monkeypatch.setattr(model_module, "causal_attention", lambda *a, **k: calls.append(1) or real(*a, **k))
    model(tokens)
    assert len(calls) == 2
    _, cache = model.run_with_cache(tokens, names="blocks.1.attn.hook_pattern")
    assert len(calls) == 3 and cache["blocks.1.attn.hook_pattern"].shape == (1, 2, 16, 16)
    model.run_with_hooks(tokens, [("blocks.0.attn.hook_attn_scores", lambda x, hook: None)])
    assert len(calls) == 4


# ---------------------------------------------------------------------------------------------
# Starting at a layer


@settings(max_examples=40)
@given(padded_batches(), st.data())
def test_starting_at_a_layer_from_its_cached_resid_pre_gives_the_same_floats(case, data):
    """What sweeps do: the blocks before L are skipped, their output taken from a cached
    unsteered pass. With hooks at L and after, the logits must be those of the whole pass, to
    the bit (the same operations on the same inputs)."""
    model, tokens, mask, _, _ = case
    L = data.draw(st.integers(0, model.config.n_layer - 1))
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1)))
    delta = rng.standard_normal((*tokens.shape, model.config.n_embd)).astype(np.float32)
    hooks = [(f"blocks.{L}.hook_resid_pre", lambda x, hook: x + delta),
             (f"blocks.{model.config.n_layer - 1}.hook_mlp_out", lambda x, hook: x * np.float32(0.5))]
    whole = model.run_with_hooks(tokens, hooks, attention_mask=mask)
    _, cache = model.run_with_cache(tokens, names=f"blocks.{L}.hook_resid_pre", attention_mask=mask)
    resumed = model.run_with_hooks(tokens, hooks, attention_mask=mask, start_at_layer=L,
                                   resid_pre=cache[f"blocks.{L}.hook_resid_pre"])
    np.testing.assert_array_equal(resumed, whole)
    seen = []
    model.run_with_hooks(tokens, [(lambda n: True, lambda x, hook: seen.append(str(hook)))], attention_mask=mask,
                         start_at_layer=L, resid_pre=cache[f"blocks.{L}.hook_resid_pre"])
    assert seen[0] == f"blocks.{L}.hook_resid_pre"   # nothing of the skipped blocks runs


@pytest.mark.parametrize("kwargs,match", [
    ({"start_at_layer": 3}, "start_at_layer=3: this model has blocks 0 to 1 \\(2: the final norm and unembedding only\\)"),
    ({"start_at_layer": 2}, "needs resid_pre, the activation at blocks.1.hook_resid_post \\(after the last block\\)"),
    ({"start_at_layer": -1}, "start_at_layer=-1"),
    ({"start_at_layer": 1}, "needs resid_pre, the activation at blocks.1.hook_resid_pre"),
    ({"start_at_layer": 1, "resid_pre": np.zeros((1, 5, 8), np.float64)}, "float64 \\(1, 5, 8\\); expected ndarray float32"),
    ({"start_at_layer": 1, "resid_pre": np.zeros((1, 4, 8), np.float32)}, "expected ndarray float32 \\(1, 5, 8\\)"),
    ({"start_at_layer": 1, "resid_pre": [[0.0] * 8] * 5}, "resid_pre is list"),
])
def test_bad_start_at_layer_is_refused(kwargs, match):
    model = random_model(GPT2Config(n_layer=2, n_head=2, n_embd=8, n_positions=8, vocab_size=10))
    with pytest.raises(ValueError, match=match):
        model(np.arange(5), **kwargs)
    resid = np.zeros((1, 5, 8), np.float32)
    np.testing.assert_array_equal(model(np.arange(5), start_at_layer=np.int64(1), resid_pre=resid),
                                  model(np.arange(5), start_at_layer=1, resid_pre=resid))  # numpy ints, as sweeps pass
    with pytest.raises(ValueError, match="start_at_layer cannot fill a KV cache"):
        model(np.arange(5), start_at_layer=1, resid_pre=np.zeros((1, 5, 8), np.float32), cache=model.new_cache(1, 8))


def test_stop_at_layer_returns_the_stream_there_and_runs_nothing_after():
    """As TransformerLens's stop_at_layer: the residual stream entering block L (L = n_layer:
    leaving the last block), equal to what a full pass caches there, with no later hook run."""
    model = random_model(GPT2Config(n_layer=3, n_head=2, n_embd=8, n_positions=8, vocab_size=10))
    tokens, mask = np.array([[0, 1, 2, 3], [4, 5, 6, 7]]), np.array([[0, 1, 1, 1], [1, 1, 1, 1]])
    _, cache = model.run_with_cache(tokens, attention_mask=mask)
    for L in range(3):
        np.testing.assert_array_equal(model(tokens, attention_mask=mask, stop_at_layer=L), cache[f"blocks.{L}.hook_resid_pre"])
    np.testing.assert_array_equal(model(tokens, attention_mask=mask, stop_at_layer=3), cache["blocks.2.hook_resid_post"])
    np.testing.assert_array_equal(model(tokens, attention_mask=mask, start_at_layer=1, stop_at_layer=2,
                                        resid_pre=cache["blocks.1.hook_resid_pre"]), cache["blocks.2.hook_resid_pre"])
    seen = []
    model.run_with_hooks(tokens, [(lambda n: True, lambda x, hook: seen.append(hook.name))], stop_at_layer=1)
    assert seen[-1] == "blocks.0.hook_resid_post" and "blocks.1.hook_resid_pre" not in seen
    for kwargs, match in (({"stop_at_layer": 4}, "stop_at_layer=4: expected 0"),
                          ({"stop_at_layer": 1, "start_at_layer": 2, "resid_pre": cache["blocks.2.hook_resid_pre"]},
                           "expected 2 \\(start_at_layer\\)"),
                          ({"stop_at_layer": 1, "last_only": True}, "cannot fill a KV cache .* or unembed"),
                          ({"stop_at_layer": 1, "cache": model.new_cache(2, 8)}, "cannot fill a KV cache")):
        with pytest.raises(ValueError, match=match):
            model(tokens, attention_mask=mask, **kwargs)
