"""minigpt and actadd on a device array library, through the same code as the NumPy path.

Every test taking `device` runs twice:
  - on the strict backend (tests/strict_backend.py), always, in CI: NumPy underneath, refusing
    what a GPU library refuses or would do behind the caller's back. Its results must equal the
    NumPy path's bit for bit (the same operations in the same order), and its transfer logs
    show exactly what crosses between host and device;
  - on CuPy where CuPy and a CUDA device are present, else skipped with the reason. There the
    results agree within conftest's TOL (cuBLAS and OpenBLAS round differently), and parity is
    also checked against transformers on the same GPU.
"""

import os
import subprocess
import sys
import tempfile
import unittest.mock
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import minigpt
import minigpt.model
from conftest import (TOL, assert_close, assert_same_argmax, configs, decode_with_cache, max_abs, random_model,
                      random_state_dict, record_parity, scaled_error)
from minigpt import GPT2, BackendError, GPT2Config, generate
from minigpt.backend import NUMPY, array_namespace, get_backend
from minigpt.generate import left_pad
from strict_backend import StrictArray, StrictError, strict_backend, xp as strict_xp

# ---------------------------------------------------------------------------------------------
# The two device backends


@pytest.fixture(scope="module", params=["strict", "cupy"])
def device(request):
    if request.param == "strict":
        return strict_backend()
    try:
        return get_backend("cupy")
    except BackendError as e:
        pytest.skip(f"no GPU backend here: {str(e).split('. ')[0]}")


def host(device, x) -> np.ndarray:
    out = device.to_host(x)
    assert type(out) is np.ndarray
    return out


def assert_matches(device, ours, ref, what):
    """Equal to the NumPy path's array: bit for bit on the strict backend, within TOL on a GPU."""
    assert array_namespace(ours) is device.xp, f"{what}: {type(ours).__name__}"
    assert ours.dtype == ref.dtype, f"{what}: {ours.dtype}, NumPy path {ref.dtype}"
    got = host(device, ours)
    if device.name == "strict":
        np.testing.assert_array_equal(got, ref, err_msg=what)
        return 0.0
    return assert_close(got, ref, what)


def reset_logs():
    strict_xp.to_device_log.clear()
    strict_xp.to_host_log.clear()


# ---------------------------------------------------------------------------------------------
# The strict backend is strict (else the tests below would prove nothing)


def test_the_strict_backend_refuses_what_a_gpu_library_would():
    b = strict_backend()
    x = b.to_device(np.arange(6, dtype=np.float32).reshape(2, 3))
    on_host = np.ones(3, np.float32)
    refused = {
        "np.asarray": lambda: np.asarray(x),
        "np.exp": lambda: np.exp(x),
        "np.zeros_like": lambda: np.zeros_like(x),
        "host + device": lambda: on_host + x,
        "device * host": lambda: x * on_host,
        "device += host": lambda: x.__iadd__(on_host),
        "host index": lambda: x[np.array([0, 1])],
        "host array into xp.where": lambda: b.xp.where(x > 1, x, on_host),
        "int(device)": lambda: int(x.sum()),
        "float(device)": lambda: float(x.max()),
        "bool(device)": lambda: bool((x > 0).sum()),
        "iterate": lambda: list(x),
        ".tolist()": lambda: x.tolist(),
        "boolean mask": lambda: x[x > 2],
        "xp.zeros without dtype": lambda: b.xp.zeros((2,)),
    }
    for what, act in refused.items():  # StrictError, or NumPy's TypeError for a ufunc (__array_ufunc__ = None)
        with pytest.raises(TypeError):
            act()
            pytest.fail(f"{what} was allowed")
    # What device code does do works, and stays on the device.
    y = b.xp.where(x > 1, x, b.xp.float32(0.0)) @ x.T + 1.0
    assert isinstance(y, StrictArray) and y.dtype == np.float32 and array_namespace(y) is b.xp
    np.testing.assert_array_equal(b.to_host(y), np.where(np.arange(6).reshape(2, 3) > 1,
                                                          np.arange(6).reshape(2, 3), 0) @ np.arange(6).reshape(2, 3).T + 1)


# ---------------------------------------------------------------------------------------------
# The forward pass


@st.composite
def padded_cases(draw):
    config = draw(configs(max_positions=20))
    batch = draw(st.integers(1, 3))
    seq = draw(st.integers(1, config.n_positions))
    tokens = np.array(draw(st.lists(st.integers(0, config.vocab_size - 1), min_size=batch * seq,
                                    max_size=batch * seq))).reshape(batch, seq)
    lengths = [draw(st.integers(1, seq)) for _ in range(batch)]
    mask = np.arange(seq)[None] >= seq - np.array(lengths)[:, None]           # left padding
    return config, tokens, mask, draw(st.integers(0, 2**31 - 1))


@settings(max_examples=40, deadline=None)
@given(case=padded_cases(), block=st.integers(1, 5))
def test_logits_and_every_hook_equal_the_numpy_path(device, case, block):
    config, tokens, mask, seed = case
    state = random_state_dict(config, seed)
    ref_model, model = GPT2(config, state), GPT2(config, state, backend=device)
    ref_logits, ref_cache = ref_model.run_with_cache(tokens, attention_mask=mask)
    logits, cache = model.run_with_cache(tokens, attention_mask=mask)
    assert list(cache) == list(ref_cache) == model.hook_names
    errors = [assert_matches(device, logits, ref_logits, "logits")]
    for name in cache:
        errors.append(assert_matches(device, cache[name], ref_cache[name], name))
    # The fast path (attention by query blocks, when nothing reads scores or pattern).
    with unittest.mock.patch.object(minigpt.model, "ATTENTION_BLOCK", block):
        errors.append(assert_matches(device, model(tokens, attention_mask=mask), ref_model(tokens, attention_mask=mask),
                                     "logits, blocked attention"))
    if device.name != "strict":
        record_parity(f"{device.name} backend vs the NumPy path", logits=max_abs(host(device, logits), ref_logits),
                      hooks=max(max_abs(host(device, cache[n]), ref_cache[n]) for n in cache), scaled=max(errors))


def check_against_transformers(reference, device, config, tokens, seed, case):
    torch_device = "cpu" if device.name == "strict" else "cuda"
    if torch_device == "cuda" and not reference.torch.cuda.is_available():
        pytest.skip(f"torch {reference.torch.__version__} has no CUDA: the GPU parity reference is transformers on CUDA")
    with tempfile.TemporaryDirectory() as folder:
        reference.write_checkpoint(Path(folder), config, seed)
        ref_logits, _, ref_acts = reference.reference_run(Path(folder), tokens, device=torch_device)
        model, numpy_model = GPT2.from_pretrained(folder, backend=device), GPT2.from_pretrained(folder)
        logits, cache = model.run_with_cache(tokens)
        numpy_logits, numpy_cache = numpy_model.run_with_cache(tokens)
    assert_matches(device, logits, numpy_logits, "logits against the NumPy path")
    for name in numpy_cache:
        assert_matches(device, cache[name], numpy_cache[name], f"{name} against the NumPy path")
    logits = host(device, logits)
    errors = [assert_close(logits, ref_logits, "logits")]
    for name, ref in ref_acts.items():
        errors.append(assert_close(host(device, cache[name]), ref, name))
    assert_same_argmax(logits, ref_logits)
    record_parity(f"{device.name} backend vs transformers on {torch_device}: {case}", logits=max_abs(logits, ref_logits),
                  hooks=max(max_abs(host(device, cache[n]), r) for n, r in ref_acts.items()), scaled=max(errors))


@settings(max_examples=15, deadline=None)
@given(config=configs(max_positions=16), data=st.data())
def test_random_configs_match_transformers(reference, device, config, data):
    seq = data.draw(st.integers(1, config.n_positions))
    tokens = np.array(data.draw(st.lists(st.integers(0, config.vocab_size - 1), min_size=2 * seq,
                                         max_size=2 * seq))).reshape(2, seq)
    check_against_transformers(reference, device, config, tokens, data.draw(st.integers(0, 2**31 - 1)), "hypothesis")


def test_the_gpt2_shape_matches_transformers(reference, device):
    config = GPT2Config()  # 12 layers x 768, 50,257 tokens, 1,024 positions
    tokens = np.random.default_rng(0).integers(0, config.vocab_size, (1, 48))
    check_against_transformers(reference, device, config, tokens, 0, "gpt2 shape, 48 tokens")


def assert_family_matches(device, cls, config, state, rng):
    """A family's model on the device against the same weights on NumPy: logits, every hook of a
    left-padded batch, and four cached decoding steps."""
    ref_model, model = cls(config, state), cls(config, state, backend=device)
    prompts = [rng.integers(0, config.vocab_size, rng.integers(1, 9)).tolist() for _ in range(2)]
    tokens, mask = left_pad(prompts)
    ref_logits, ref_cache = ref_model.run_with_cache(tokens, attention_mask=mask)
    logits, cache = model.run_with_cache(tokens, attention_mask=mask)
    assert list(cache) == list(ref_cache) == model.hook_names
    assert_matches(device, logits, ref_logits, f"{cls.__name__} logits")
    for name in cache:
        assert_matches(device, cache[name], ref_cache[name], f"{cls.__name__} {name}")
    for a, b in zip(decode_with_cache(model, prompts, 4, np.random.default_rng(1))[0],
                    decode_with_cache(ref_model, prompts, 4, np.random.default_rng(1))[0]):
        assert_matches(device, a, b, f"{cls.__name__} cached decoding")


@settings(max_examples=15, deadline=None)
@given(data=st.data())
def test_opt_equals_the_numpy_path(device, data):
    """OPT (pre- and post-LayerNorm, projected embeddings, untied head) on the device: logits,
    every hook and cached decoding equal the NumPy path's."""
    from minigpt import OPT, OPTConfig
    from minigpt.opt import expected_shapes

    heads = data.draw(st.integers(1, 3))
    hidden = heads * data.draw(st.integers(2, 6))
    config = OPTConfig(vocab_size=data.draw(st.integers(8, 40)), hidden_size=hidden, num_hidden_layers=data.draw(
        st.integers(1, 3)), num_attention_heads=heads, ffn_dim=data.draw(st.integers(4, 24)), max_position_embeddings=16,
        word_embed_proj_dim=data.draw(st.sampled_from([hidden, max(2, hidden // 2)])),
        do_layer_norm_before=data.draw(st.booleans()), tie_word_embeddings=data.draw(st.booleans()))
    rng = np.random.default_rng(data.draw(st.integers(0, 2**16)))
    state = {n: rng.normal(1.0 if n.endswith("layer_norm.weight") else 0.0, 0.3, shape).astype(np.float32)
             for n, shape in expected_shapes(config).items()}
    assert_family_matches(device, OPT, config, state, rng)


@settings(max_examples=15, deadline=None)
@given(data=st.data())
def test_llama_equals_the_numpy_path(device, data):
    """LLaMA (grouped-query attention, rotary embeddings with and without llama3 scaling) on the
    device: logits, every hook and cached decoding equal the NumPy path's."""
    from minigpt import Llama, LlamaConfig
    from minigpt.llama import RopeScaling, expected_shapes

    kv = data.draw(st.integers(1, 2))
    heads = kv * data.draw(st.sampled_from([1, 2, 4]))
    config = LlamaConfig(vocab_size=data.draw(st.integers(8, 40)), hidden_size=heads * 4, intermediate_size=data.draw(
        st.integers(4, 24)), num_hidden_layers=data.draw(st.integers(1, 3)), num_attention_heads=heads,
        num_key_value_heads=kv, max_position_embeddings=24, tie_word_embeddings=data.draw(st.booleans()),
        rope_scaling=data.draw(st.sampled_from([None, RopeScaling(8.0, 1.0, 4.0, 8)])))
    rng = np.random.default_rng(data.draw(st.integers(0, 2**16)))
    state = {n: rng.normal(1.0 if "norm" in n else 0.0, 0.3, shape).astype(np.float32)
             for n, shape in expected_shapes(config).items()}
    assert_family_matches(device, Llama, config, state, rng)


def test_device_token_ids_are_checked_on_the_host(device):
    config = GPT2Config(n_layer=1, n_head=2, n_embd=8, n_positions=8, vocab_size=10)
    model = random_model(config, 0, backend=device)
    ids = device.to_device(np.array([[1, 2, 3]]))
    assert_matches(device, model(ids), random_model(config, 0)([[1, 2, 3]]), "logits from device ids")
    with pytest.raises(ValueError, match="token id 10 at batch row 0, position 1"):
        model(device.to_device(np.array([[1, 10]])))


# ---------------------------------------------------------------------------------------------
# Caches and generation


def test_cached_decoding_equals_recomputation_and_the_numpy_path(device):
    config = GPT2Config(n_layer=3, n_head=2, n_embd=16, n_positions=24, vocab_size=50)
    model, ref_model = random_model(config, 4, backend=device), random_model(config, 4)
    prompts = [[1, 2, 3, 4], [5], [6, 7]]
    steps, seqs = decode_with_cache(model, prompts, 6, np.random.default_rng(1))
    ref_steps, _ = decode_with_cache(ref_model, prompts, 6, np.random.default_rng(1))
    for t, (got, ref) in enumerate(zip(steps, ref_steps)):
        assert_matches(device, got, ref, f"step {t}")
    for row, seq in enumerate(seqs):  # the last step against the whole sequence, recomputed
        full = host(device, model(seq))[0, -1]
        assert scaled_error(host(device, steps[-1])[row], full[None]) <= TOL


def generate_by_recomputing(model, prompt, seed, row, steps, sampling):
    """One row sampled the plain way, on the model's backend: the whole sequence recomputed
    each step (no cache), one default_rng([seed, row]).random() a step."""
    rng, ids = np.random.default_rng([seed, row]), list(prompt)
    for _ in range(steps):
        counts = model.backend.to_device(np.bincount(ids, minlength=model.config.vocab_size)[None])
        uniform = model.backend.to_device(np.array([rng.random()]))
        ids.append(int(host(model.backend, sampling.sample(model(ids)[:, -1], counts, uniform))[0]))
    return ids[len(prompt):]


@pytest.mark.parametrize("filters", [dict(top_p=0.9, freq_penalty=0.5),
                                     dict(temperature=0.7, top_k=5, presence_penalty=0.5)])
def test_generation_equals_recomputation_and_only_sampled_ids_cross_to_the_host(device, filters):
    config = GPT2Config(n_layer=2, n_head=2, n_embd=16, n_positions=32, vocab_size=40)
    model, ref_model = random_model(config, 6, backend=device), random_model(config, 6)
    prompts, steps = [[1, 2, 3], [4, 5], [6]], 9
    sampling = minigpt.Sampling(**filters)
    kwargs = dict(max_new_tokens=steps, seed=11, stop_at_eos=False, **filters)
    reset_logs()
    got = generate(model, prompts, **kwargs).tokens
    log_host, log_device = list(strict_xp.to_host_log), list(strict_xp.to_device_log)
    for row, prompt in enumerate(prompts):
        assert got[row] == generate_by_recomputing(model, prompt, 11, row, steps, sampling), row
    if device.name != "strict":
        return  # CuPy's sums round differently: a draw near a boundary may differ from NumPy's
    assert got == generate(ref_model, prompts, **kwargs).tokens
    B, P, V = len(prompts), 3, config.vocab_size
    assert log_host == [(B,)] * steps, "device -> host: one [batch] of sampled ids a step, nothing else"
    # host -> device: counts and every uniform once; then each pass's ids, mask and position ids.
    assert log_device == [(B, V), (B, steps)] + [(B, P)] * 3 + [(B, 1)] * 3 * (steps - 1)


def test_samples_sharing_a_prompt_pass_on_the_device(device):
    """samples=k on the device: the prompt pass once per prompt, its cache rows copied there
    (one [rows] index crosses, once), then the same steps as any batch of k x prompts rows."""
    config = GPT2Config(n_layer=2, n_head=2, n_embd=16, n_positions=32, vocab_size=40)
    model, ref_model = random_model(config, 6, backend=device), random_model(config, 6)
    prompts, k, steps = [[1, 2, 3], [4, 5]], 3, 6
    kwargs = dict(max_new_tokens=steps, seed=2, stop_at_eos=False, top_p=0.9, samples=k)
    reset_logs()
    got = generate(model, prompts, **kwargs).tokens
    log_host, log_device = list(strict_xp.to_host_log), list(strict_xp.to_device_log)
    for row in range(len(prompts) * k):
        prompt = prompts[row // k]
        assert got[row] == generate_by_recomputing(model, prompt, 2, row, steps, minigpt.Sampling(top_p=0.9)), row
    if device.name != "strict":
        return
    assert got == generate(ref_model, prompts, **kwargs).tokens
    R, B, P, V = len(prompts) * k, len(prompts), 3, config.vocab_size
    assert log_host == [(R,)] * steps
    assert log_device == [(R, V), (R, steps)] + [(B, P)] * 3 + [(R,)] + [(R, 1)] * 3 * (steps - 1)


def test_greedy_generation_equals_transformers_on_the_device(reference, device):
    config = GPT2Config(n_layer=2, n_head=2, n_embd=16, n_positions=32, vocab_size=40)
    prompts = [[1, 2, 3, 4], [5, 6]]
    with tempfile.TemporaryDirectory() as folder:
        reference.write_checkpoint(Path(folder), config, 3)
        ref_rows, _ = reference.greedy_generate(Path(folder), prompts, 10, eos_token_id=39)
        model = GPT2.from_pretrained(folder, backend=device)
    assert generate(model, prompts, max_new_tokens=10, temperature=0, eos_token_id=39).tokens == ref_rows


# ---------------------------------------------------------------------------------------------
# Hooks and ActAdd


def test_hooks_receive_device_arrays_and_a_numpy_call_in_a_hook_fails_loudly():
    b = strict_backend()
    model = random_model(GPT2Config(n_layer=1, n_head=2, n_embd=8, n_positions=8, vocab_size=10), backend=b)
    seen = []
    model.run_with_hooks([1, 2, 3], [(lambda n: True, lambda x, hook: seen.append((type(x), x.dtype)))])
    assert seen and set(seen) == {(StrictArray, np.dtype(np.float32))}
    with pytest.raises(StrictError, match="numpy.mean called on a device array"):
        model.run_with_hooks([1, 2, 3], [("blocks.0.hook_resid_pre", lambda x, hook: np.mean(x))])
    with pytest.raises(ValueError, match="returned ndarray float32"):  # a host array is no replacement
        model.run_with_hooks([1, 2, 3], [("blocks.0.hook_resid_pre", lambda x, hook: np.zeros(x.shape, np.float32))])


@pytest.fixture(scope="module")
def books_on(device):
    """tiny-books (shipped with the package) on the device and on NumPy."""
    return minigpt.load("tiny-books", backend=device), minigpt.load("tiny-books")


def test_steering_vectors_and_steered_logits_equal_the_numpy_path(device, books_on):
    import actadd

    (model, tok), (ref_model, _) = books_on
    additions = actadd.x_vector(tok, "whale", "", 4.0, 1)
    vector, ref_vector = actadd.steering_vector(model, additions), actadd.steering_vector(ref_model, additions)
    for m, ref in zip(vector.activations, ref_vector.activations):
        assert type(m) is np.ndarray  # a vector is host data, whatever the backend
        if device.name == "strict":
            np.testing.assert_array_equal(m, ref)
        else:
            assert_close(m, ref, "steering activations")
    ids = actadd.tokens_with_bos(tok, "In the morning we went down to the")
    for alignment in ("front", "mid", "back"):
        hooks = ref_vector.hooks(len(ids), alignment)
        assert_matches(device, model.run_with_hooks(ids, vector.hooks(len(ids), alignment)),
                       ref_model.run_with_hooks(ids, hooks), f"steered logits, {alignment}")
    reset_logs()
    side = actadd.generate(model, tok, "In the morning we", vector, n=2, seed=3, max_new_tokens=12)
    if device.name == "strict":
        assert side == actadd.generate(ref_model, tok, "In the morning we", ref_vector, n=2, seed=3, max_new_tokens=12)
        # Steering adds nothing to a decode step's crossings: the vector went over once, at prefill.
        assert strict_xp.to_host_log == [(2,)] * 12 * 2   # unsteered, then steered
        assert strict_xp.to_device_log[-3 * 11:] == [(2, 1)] * 3 * 11


def test_contrast_pair_instruments_equal_the_numpy_path(device, books_on):
    """Mean-of-pairs vectors (both readings), a direction at every position through a cached
    generation, the pair report and the logit lens: the device computes what NumPy does."""
    import actadd
    from actadd import interpret, pairs

    (model, tok), (ref_model, _) = books_on
    contrast = [("The whale swam in the sea", "The horse ran in the field"), ("the waves", "the hills")]
    prompt = "In the morning we went down to the harbour and"
    ids = actadd.tokens_with_bos(tok, prompt)
    for reading in ("actadd", "last"):
        v, ref = (pairs.mean_of_pairs(m, tok, contrast, 3.0, [1, 2], reading=reading, positions="all")
                  for m in (model, ref_model))
        for a, b in zip(getattr(v, "activations", None) or v.directions, getattr(ref, "activations", None) or ref.directions):
            assert type(a) is np.ndarray
            np.testing.assert_allclose(a, b, rtol=0, atol=1e-4 * (1 + np.abs(b).max()))
        assert_matches(device, model.run_with_hooks(ids, v.hooks(len(ids))), ref_model.run_with_hooks(ids, ref.hooks(len(ids))),
                       f"{reading} steered logits")
    if device.name == "strict":   # sampling on a device draws from other floats; the strict backend's are NumPy's
        assert (actadd.generate(model, tok, prompt, v, n=2, max_new_tokens=8)
                == actadd.generate(ref_model, tok, prompt, ref, n=2, max_new_tokens=8))
    metric, ref_metric = (pairs.effectiveness_metric(m, tok, prompt, tok.encode(" sea")) for m in (model, ref_model))
    report, ref_report = (pairs.pair_report(m, tok, contrast, 1, 3.0, mt) for m, mt in ((model, metric), (ref_model, ref_metric)))
    np.testing.assert_allclose(report.effect_alone + report.effect_without, ref_report.effect_alone + ref_report.effect_without,
                               atol=1e-3)
    lens, ref_lens = (interpret.lens(m, tok, v, prompt, k=5) for m in (model, ref_model))
    np.testing.assert_allclose(lens.heat, ref_lens.heat, atol=1e-3)


def test_measurements_equal_the_numpy_path(device, books_on):
    import actadd
    from actadd import measure

    (model, tok), (ref_model, _) = books_on
    texts = [("sea", actadd.tokens_with_bos(tok, t)) for t in (
        "The whale rose from the sea and the men cried out from the boat.",
        "She walked to the window and looked down at the garden below her.",
        "We sailed for three days before we saw the land again.")]
    grid = dict(plus="whale", minus="", layers=[0, 2], coeffs=[1.0, 4.0], alignments=("front", "back"),
                texts=texts, prompt="In the morning we", topic_tokens=tok.encode(" sea"), progress=False,
                batch_tokens=32)
    rows, ref_rows = measure.sweep(model, tok, **grid), measure.sweep(ref_model, tok, **grid)
    assert [list(r) for r in rows] == [list(r) for r in ref_rows]
    assert_same_records(device, rows, ref_rows)


def assert_same_records(device, records, ref_records):
    """Dicts of numbers equal the NumPy path's: exactly on the strict backend, floats within
    1e-3 relative on a GPU."""
    assert [sorted(r) for r in records] == [sorted(r) for r in ref_records]
    for row, ref in zip(records, ref_records):
        for key, value in ref.items():
            if device.name == "strict" or not isinstance(value, float):
                assert row[key] == value, (key, row, ref)
            else:
                assert abs(row[key] - value) <= 1e-3 * (1 + abs(value)), (key, row, ref)


def test_relevance_knowledge_and_row_steering_equal_the_numpy_path(device, books_on):
    """The likelihood tasks and a mixed-vector batch on the device: the NumPy path's figures
    (on the strict backend, to the last float)."""
    import actadd
    from actadd.experiments import data, likelihood

    (model, tok), (ref_model, _) = books_on
    docs = [("d0", "The whale rose from the sea and the men cried out from the boat. " * 6),
            ("d1", "She walked to the window and looked down at the garden below her. " * 6)]
    kw = dict(plus="whale", layer=1, coeff=2.0, words=["sea", "whale", "boat"], chunk_tokens=30, progress=False)
    ours, ref = likelihood.relevance(model, tok, docs, **kw), likelihood.relevance(ref_model, tok, docs, **kw)
    facts = [data.Fact(0, "f:1", "The captain looked out to", "sea", tok.encode(" sea")[0]),
             data.Fact(1, "f:2", "The men cried out from the", "boat", tok.encode(" boat")[0])]
    kf = dict(plus="whale", layer=1, coeff=2.0, progress=False)
    ours_k, ref_k = likelihood.knowledge(model, tok, facts, **kf), likelihood.knowledge(ref_model, tok, facts, **kf)
    assert_same_records(device, ours.records, ref.records)
    assert_same_records(device, ours_k.records, ref_k.records)
    ids = actadd.tokens_with_bos(tok, "In the morning we went down to the")
    unit = [actadd.steering_vector(m, actadd.x_vector(tok, "whale", "", 1.0, 2)) for m in (model, ref_model)]
    from actadd.measure import scaled

    rows = [[scaled(u, c) for c in (1.0, -2.0, 4.0)] + [None] for u in unit]
    got = model.run_with_hooks([ids] * 4, actadd.row_hooks(rows[0], prompt_lengths=len(ids)))
    want = ref_model.run_with_hooks([ids] * 4, actadd.row_hooks(rows[1], prompt_lengths=len(ids)))
    assert_matches(device, got, want, "row_hooks logits")


# ---------------------------------------------------------------------------------------------
# Without CuPy


def test_an_eval_run_on_the_device_equals_the_numpy_path(device, books_on):
    """actadd eval's generation, steering and fluency on the device: the records of the NumPy
    path (on the strict backend: the same tokens, fluency to the last float)."""
    from actadd.experiments import data, generation

    (model, tok), (ref_model, _) = books_on
    prompts = [data.Prompt(0, "The captain looked at the", "x"), data.Prompt(1, "In the morning we", "y")]
    kw = dict(layer=1, coeff=4.0, samples=3, max_new_tokens=10, progress=False, scorer="profanity")
    got = generation.toxicity(model, tok, prompts, **kw)
    want = generation.toxicity(ref_model, tok, prompts, **kw)
    if device.name == "strict":
        assert got.samples == want.samples and got.summary == want.summary
    else:
        same = sum(a["tokens"] == b["tokens"] for a, b in zip(got.samples, want.samples))
        assert same >= len(want.samples) - 1   # a draw within rounding of a boundary may differ


def test_asking_for_cupy_without_it_says_what_to_install(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "cupy", None)  # as if not installed
    with pytest.raises(BackendError, match=r"needs CuPy.*minigpt-actadd\[cuda12\].*CUDA 12.*\[cuda13\]"):
        get_backend("cupy")
    # Before any file is read: a missing CuPy is the error, not the missing folder.
    with pytest.raises(BackendError, match="needs CuPy"):
        GPT2.from_pretrained(tmp_path / "nothing-here", backend="cupy")
    with pytest.raises(ValueError, match=r"backend='torch': expected one of \('numpy', 'cupy'\)"):
        get_backend("torch")
    assert get_backend("numpy") is NUMPY and get_backend(NUMPY) is NUMPY


def test_the_clis_report_a_missing_cupy(monkeypatch, capsys):
    import actadd.cli
    import minigpt.cli

    monkeypatch.setitem(sys.modules, "cupy", None)
    assert minigpt.cli.main(["next", "--model", "tiny-books", "--backend", "cupy", "Hello"]) == 2
    assert "needs CuPy" in capsys.readouterr().err
    assert actadd.cli.main(["steer", "--model", "tiny-books", "--backend", "cupy", "--prompt", "In the morning we",
                            "--plus", "whale", "--minus", "", "--layer", "0", "--coeff", "4"]) == 2
    assert "needs CuPy" in capsys.readouterr().err


def test_importing_minigpt_and_actadd_never_imports_cupy(tmp_path):
    """With an importable (stand-in) cupy on the path, so that an import of it would succeed and
    show in sys.modules: importing and using the NumPy path must leave it alone."""
    (tmp_path / "cupy").mkdir()
    (tmp_path / "cupy" / "__init__.py").write_text("")
    code = ("import sys, minigpt, actadd, minigpt.cli, actadd.cli, actadd.measure\n"
            "model, tok = minigpt.load('tiny-books')\n"
            "minigpt.generate(model, 'In the', tok, max_new_tokens=2)\n"
            "assert 'cupy' not in sys.modules, 'cupy was imported'\n"
            "import cupy; assert 'cupy' in sys.modules  # the stand-in is importable\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert done.returncode == 0, done.stderr


def test_the_strict_namespace_allows_nothing_cupy_lacks():
    """Where CuPy is installed (a GPU is not needed for this): every function and method the
    strict backend lets minigpt and actadd use exists in CuPy too, so passing on the strict
    backend means no AttributeError on a GPU."""
    try:
        import cupy
    except ImportError as e:
        pytest.skip(f"CuPy is not installed ({e})")
    from strict_backend import StrictArray, StrictNamespace

    assert [f for f in sorted(StrictNamespace.FUNCTIONS) if not hasattr(cupy, f)] == []
    assert [m for m in sorted(StrictArray._METHODS) if not hasattr(cupy.ndarray, m)] == []
