"""minigpt against transformers (PyTorch, CPU) on the same checkpoint files.

The tolerance, and why it is what it is, is in conftest.py (`assert_close`).
"""

import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import assert_close, assert_same_argmax, configs, max_abs, record_parity
from minigpt import GPT2, GPT2Config


@st.composite
def cases(draw):
    config = draw(configs(max_positions=32))
    batch = draw(st.integers(1, 3))
    seq = draw(st.integers(1, config.n_positions))
    tokens = np.array(draw(st.lists(st.integers(0, config.vocab_size - 1),
                                    min_size=batch * seq, max_size=batch * seq))).reshape(batch, seq)
    return config, tokens, draw(st.integers(0, 2**31 - 1))


def check_against_reference(reference, dtype, layout, case, test):
    config, tokens, seed = case
    with tempfile.TemporaryDirectory() as folder:
        reference.write_checkpoint(Path(folder), config, seed, dtype=dtype, layout=layout)
        ref_logits, ref_hidden, ref_acts = reference.reference_run(Path(folder), tokens)
        model = GPT2.from_pretrained(folder)
        logits, cache = model.run_with_cache(tokens)

    errors = [assert_close(logits, ref_logits, "logits")]
    # hidden_states[L] is resid_pre of block L; the last one has ln_f (gain and bias) applied.
    ours_hidden = [cache[f"blocks.{L}.hook_resid_pre"] for L in range(config.n_layer)]
    ours_hidden.append(cache["ln_final.hook_normalized"] * model.ln_f["weight"] + model.ln_f["bias"])
    assert len(ours_hidden) == len(ref_hidden) == config.n_layer + 1
    for L, (ours, ref) in enumerate(zip(ours_hidden, ref_hidden)):
        errors.append(assert_close(ours, ref, f"hidden_states[{L}]"))
    # Every hook point that transformers exposes, under its TransformerLens name.
    assert set(ref_acts) <= set(cache)
    for name, ref in ref_acts.items():
        errors.append(assert_close(cache[name], ref, name))
    assert_same_argmax(logits, ref_logits)

    record_parity(test, logits=max_abs(logits, ref_logits),
                  hidden_states=max(max_abs(o, r) for o, r in zip(ours_hidden, ref_hidden)),
                  hooks=max(max_abs(cache[n], r) for n, r in ref_acts.items()), scaled=max(errors))


@settings(max_examples=200)
@given(case=cases())
def test_float32_checkpoint_matches_transformers(reference, case):
    check_against_reference(reference, "float32", "prefixed", case, "hypothesis float32 prefixed")


@pytest.mark.parametrize("dtype,layout", [
    ("float16", "prefixed"),
    ("bfloat16", "prefixed"),
    ("float32", "bare"),       # the hub's gpt2 layout, with attn.bias buffers
    ("bfloat16", "bare"),
    ("float32", "sharded"),
])
@settings(max_examples=40)
@given(case=cases())
def test_other_dtypes_and_layouts_match_transformers(reference, dtype, layout, case):
    check_against_reference(reference, dtype, layout, case, f"hypothesis {dtype} {layout}")


def test_gpt2_shape_matches_transformers(reference, tmp_path):
    """The real gpt2 shape (12 x 768, vocab 50257, 1024 positions) on random weights."""
    config = GPT2Config()  # the defaults are gpt2's
    reference.write_checkpoint(tmp_path, config, seed=1, layout="bare")
    tokens = np.random.default_rng(0).integers(0, config.vocab_size, (2, 64))
    ref_logits, ref_hidden, _ = reference.reference_run(tmp_path, tokens)
    model = GPT2.from_pretrained(tmp_path)
    logits, cache = model.run_with_cache(tokens, names=lambda n: n.endswith("hook_resid_pre"))
    errors = [assert_close(logits, ref_logits, "logits")]
    for L in range(config.n_layer):
        errors.append(assert_close(cache[f"blocks.{L}.hook_resid_pre"], ref_hidden[L], f"hidden_states[{L}]"))
    assert_same_argmax(logits, ref_logits)
    record_parity("gpt2 shape (12 x 768), float32 bare", logits=max_abs(logits, ref_logits),
                  hidden_states=max(max_abs(cache[f"blocks.{L}.hook_resid_pre"], ref_hidden[L])
                                    for L in range(config.n_layer)), scaled=max(errors))


def test_primitives_match_torch_elementwise(reference):
    """GELU, softmax and LayerNorm's steps against transformers/torch on values across their whole range.

    Elementwise and tight (float32 ulps), so that a near miss such as erf-GELU for tanh-GELU
    (up to 5e-4 apart around |x| = 2), which random models exercise only weakly, fails here.
    """
    import torch
    import torch.nn.functional as F
    from transformers.activations import ACT2FN

    from minigpt.model import centre, gelu_new, rms_scale, softmax

    x = np.linspace(-12, 12, 24000, dtype=np.float32).reshape(3, -1)
    for name in ("gelu_new", "gelu_pytorch_tanh"):
        ref = ACT2FN[name](torch.from_numpy(x)).numpy()
        assert gelu_new(x).dtype == np.float32
        np.testing.assert_allclose(gelu_new(x), ref, rtol=1e-6, atol=2e-6, err_msg=name)

    rng = np.random.default_rng(0)
    scores = (rng.normal(size=(4, 7, 33)) * 20).astype(np.float32)
    scores[..., ::3] = -np.inf  # masked keys, as in causal attention
    np.testing.assert_allclose(softmax(scores), torch.softmax(torch.from_numpy(scores), -1).numpy(),
                               rtol=1e-6, atol=1e-7)

    h = (rng.normal(size=(5, 64)) * 50 + 3).astype(np.float32)
    scale = rms_scale(centre(h), 1e-5)
    normalized = centre(h) / scale
    t = torch.from_numpy(h)
    np.testing.assert_allclose(normalized, F.layer_norm(t, (64,), eps=1e-5).numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(scale, (t.var(-1, unbiased=False, keepdim=True) + 1e-5).sqrt().numpy(), rtol=1e-6)


@settings(max_examples=60)
@given(case=cases(), block=st.integers(1, 8))
def test_attention_by_blocks_matches_transformers(reference, case, block):
    """The forward pass as generation and measurement run it (no hook on scores or pattern, so
    attention goes by blocks of queries), with blocks small enough that these short sequences
    span several of them."""
    from unittest import mock

    from minigpt import model as model_module

    config, tokens, seed = case
    with tempfile.TemporaryDirectory() as folder:
        reference.write_checkpoint(Path(folder), config, seed)
        ref_logits, _, _ = reference.reference_run(Path(folder), tokens)
        model = GPT2.from_pretrained(folder)
        with mock.patch.object(model_module, "ATTENTION_BLOCK", block):
            logits = model(tokens)
    scaled = assert_close(logits, ref_logits, "logits")
    assert_same_argmax(logits, ref_logits)
    record_parity("hypothesis float32, attention by blocks", logits=max_abs(logits, ref_logits), scaled=scaled)


def test_gpt2_shape_long_prompt_matches_transformers(reference, tmp_path):
    """The gpt2 shape on 300 tokens: three blocks of the default 128 queries."""
    config = GPT2Config()
    reference.write_checkpoint(tmp_path, config, seed=2, layout="prefixed")
    tokens = np.random.default_rng(1).integers(0, config.vocab_size, (1, 300))
    ref_logits, _, _ = reference.reference_run(tmp_path, tokens)
    logits = GPT2.from_pretrained(tmp_path)(tokens)
    scaled = assert_close(logits, ref_logits, "logits")
    record_parity("gpt2 shape, 300 tokens, attention by blocks", logits=max_abs(logits, ref_logits), scaled=scaled)
