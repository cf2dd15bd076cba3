"""Generation: the KV cache, left padding, hooks during decoding, sampling, and the CLI.

Cache tolerance: cached and padded decoding against recomputing each row alone in full, both
minigpt float32, differ only by the summation order of different matmul shapes; the scaled error
(conftest.scaled_error) is at most 6.5e-7 over 30 random configs x 10 steps, so 1e-5 leaves a
15x margin while any indexing mistake (a wrong position id, a key from another row) is >1e-2.
"""

import json
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import (configs, decode_with_cache, handmade_tokenizer, random_model, scaled_error, write_model_folder,
                      write_tokenizer_files)
from minigpt import GPT2Config, Sampling, generate, stream
from minigpt.cli import main
from minigpt.generate import left_pad

CACHE_TOL = 1e-5


@st.composite
def batches(draw, max_rows=3):
    """A random model, prompts of different lengths, and how many steps to decode."""
    config = draw(configs(max_positions=24, min_positions=2))
    steps = draw(st.integers(1, min(8, config.n_positions - 1)))
    rows = draw(st.integers(1, max_rows))
    lengths = [draw(st.integers(1, config.n_positions - steps)) for _ in range(rows)]
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    prompts = [rng.integers(0, config.vocab_size, n).tolist() for n in lengths]
    return random_model(config, seed=draw(st.integers(0, 999))), prompts, steps, rng


@settings(max_examples=60)
@given(batches())
def test_cached_padded_decoding_equals_recomputing_each_row_alone(case):
    model, prompts, steps, rng = case
    logits, seqs = decode_with_cache(model, prompts, steps, rng)
    for step, step_logits in enumerate(logits):
        for i, seq in enumerate(seqs):
            full = model(seq[:len(prompts[i]) + step])[0, -1]
            assert step_logits.dtype == np.float32
            assert scaled_error(step_logits[i], full) <= CACHE_TOL, (step, i)


@settings(max_examples=30)
@given(batches())
def test_padded_prefill_rows_equal_unpadded_runs_at_every_position(case):
    model, prompts, _, _ = case
    tokens, mask = left_pad(prompts)
    batched = model(tokens, attention_mask=mask)
    for i, p in enumerate(prompts):
        alone = model(p)[0]
        assert scaled_error(batched[i, tokens.shape[1] - len(p):], alone) <= CACHE_TOL
        assert np.isfinite(batched[i]).all()  # padding positions too: no NaN anywhere


@settings(max_examples=30)
@given(batches())
def test_greedy_rows_of_a_batch_generate_what_they_would_alone(case):
    model, prompts, steps, _ = case
    together = generate(model, prompts, max_new_tokens=steps, temperature=0)
    for i, p in enumerate(prompts):
        alone = generate(model, [p], max_new_tokens=steps, temperature=0).tokens[0]
        seq = list(p)
        for t_batch, t_alone in zip(together.tokens[i], alone):
            if t_batch != t_alone:  # acceptable only on a float tie
                top2 = np.sort(model(seq)[0, -1])[-2:]
                assert top2[1] - top2[0] < 1e-4
                break
            seq.append(t_alone)


# --- hooks during decoding -------------------------------------------------------------------


def test_hooks_see_positions_of_each_pass():
    model = random_model(GPT2Config(n_layer=1, n_head=1, n_embd=8, n_positions=16, vocab_size=20))
    seen = []

    def record(x, hook):
        seen.append((hook.name, hook.start, hook.positions.tolist(), x.dtype))

    g = generate(model, [[1, 2, 3], [4]], max_new_tokens=3, temperature=0, fwd_hooks=[("blocks.0.hook_resid_pre", record)])
    assert len(g.tokens[0]) == 3
    assert seen == [
        ("blocks.0.hook_resid_pre", 0, [[0, 1, 2], [-1, -1, 0]], np.float32),  # prompt pass, left-padded
        ("blocks.0.hook_resid_pre", 3, [[3], [1]], np.float32),                 # decode steps
        ("blocks.0.hook_resid_pre", 4, [[4], [2]], np.float32),
    ]


@settings(max_examples=40)
@given(batches(), st.data())
def test_a_prompt_positions_hook_gives_the_same_logits_cached_or_recomputed(case, data):
    """The pattern ActAdd needs: add a vector at each row's first k positions. With the cache the
    prompt pass is steered once and decode steps read its keys; recomputing the whole sequence
    each step (no cache) re-steers the same positions. Both must give the same logits."""
    model, prompts, steps, rng = case
    layer = data.draw(st.integers(0, model.config.n_layer - 1))
    k = data.draw(st.integers(1, min(len(p) for p in prompts)))
    vector = rng.normal(0, 2.0, model.config.n_embd).astype(np.float32)

    def steer(x, hook):
        front = ((hook.positions >= 0) & (hook.positions < k))[..., None]   # [batch, pos, 1]
        return x + np.where(front, vector, np.float32(0))

    hooks = [(f"blocks.{layer}.hook_resid_pre", steer)]
    cached, seqs = decode_with_cache(model, prompts, steps, rng, hooks)
    for step, step_logits in enumerate(cached):
        for i, seq in enumerate(seqs):
            full = model.run_with_hooks(seq[:len(prompts[i]) + step], hooks)[0, -1]
            assert scaled_error(step_logits[i], full) <= CACHE_TOL, (step, i)
    unsteered, _ = decode_with_cache(model, prompts, 0, rng)
    assert not np.allclose(unsteered[0], cached[0])  # the hook did something


@settings(max_examples=20)
@given(batches(max_rows=2))
def test_every_hook_sees_float32_while_decoding(case):
    model, prompts, steps, _ = case
    dtypes = set()
    generate(model, prompts, max_new_tokens=steps, fwd_hooks=[(lambda n: True, lambda x, h: dtypes.add(x.dtype))])
    assert dtypes == {np.dtype(np.float32)}


# --- sampling on crafted logits -----------------------------------------------------------------


def crafted(*probs):
    return np.log(np.array([probs], dtype=np.float64)).astype(np.float32)  # [1, vocab]


NO_COUNTS = np.zeros((1, 4))


def kept(sampling, logits, counts=NO_COUNTS):
    return set(np.flatnonzero(np.isfinite(sampling.filter(logits, counts)[0])).tolist())


def test_top_p_keeps_the_smallest_prefix_reaching_p():
    logits = crafted(0.15, 0.5, 0.05, 0.3)  # sorted: token 1 (0.5), 3 (0.3), 0 (0.15), 2 (0.05)
    assert kept(Sampling(top_p=0.1), logits) == {1}
    assert kept(Sampling(top_p=0.45), logits) == {1}
    assert kept(Sampling(top_p=0.6), logits) == {1, 3}
    assert kept(Sampling(top_p=0.9), logits) == {1, 3, 0}
    assert kept(Sampling(top_p=0.97), logits) == {0, 1, 2, 3}
    assert kept(Sampling(top_p=1.0), logits) == {0, 1, 2, 3}
    # top-p applies after temperature: at T=0.5 the probabilities are squared and renormalised,
    # token 1 alone holds 0.25 / 0.365 = 0.685, and p=0.6 that kept {1, 3} at T=1 keeps {1}.
    assert kept(Sampling(temperature=0.5, top_p=0.6), logits) == {1}
    assert kept(Sampling(temperature=0.5, top_p=0.7), logits) == {1, 3}


@settings(max_examples=300)
@given(st.integers(0, 2**32 - 1), st.integers(1, 6), st.integers(8, 300), st.integers(2, 40),
       st.sampled_from([0.05, 0.3, 0.5, 0.9, 0.999, 1.0]), st.sampled_from(["normal", "ties", "flat"]))
def test_top_p_from_candidates_equals_sorting_everything_bit_for_bit(seed, batch, vocab, k, top_p, kind):
    """The NumPy fast path (a partition to k candidates, falling back to a whole sort where they
    do not decide) against the reference: the same array, -inf included, on logits with many
    ties (integers), flat rows, and k from 2 up, so that every fallback is taken."""
    from minigpt.generate import top_p_from_candidates, top_p_sorted

    rng = np.random.default_rng(seed)
    logits = {"normal": rng.normal(0, 3, (batch, vocab)), "ties": rng.integers(-3, 4, (batch, vocab)).astype(float),
              "flat": np.zeros((batch, vocab))}[kind]
    k = min(k, vocab)
    np.testing.assert_array_equal(top_p_from_candidates(logits, top_p, k), top_p_sorted(logits, top_p))


@settings(max_examples=200, deadline=None)
@given(st.integers(0, 2**32 - 1), st.integers(1, 8), st.integers(2, 40), st.sampled_from([0.05, 0.3, 0.9, 1.0]),
       st.sampled_from([0.0, 1.0]), st.sampled_from([1.0, 0.7]))
def test_sampling_draws_among_candidates_the_token_of_the_whole_vocabulary(seed, batch, k, top_p, penalty,
                                                                           temperature):
    """Sampling.sample's NumPy path draws each decided row among its k candidates and sorts the
    rest whole: every row's token equals the reference draw (the cumulative sum over the whole
    filtered vocabulary), on rows of normal, tied and flat logits mixed in one batch."""
    import importlib

    g = importlib.import_module("minigpt.generate")      # the module (minigpt.generate is also the function)
    rng = np.random.default_rng(seed)
    vocab = 4 * k + int(rng.integers(0, 50))
    kinds = [rng.normal(0, 3, vocab), rng.integers(-3, 4, vocab).astype(float), np.zeros(vocab)]
    logits = np.stack([kinds[int(rng.integers(0, 3))] for _ in range(batch)]).astype(np.float32)
    counts = rng.integers(0, 3, (batch, vocab))
    uniforms = rng.random(batch)
    sampling = Sampling(temperature=temperature, top_p=top_p, freq_penalty=penalty)
    reference = g._draw(g.top_p_sorted(sampling._penalized(logits, counts), top_p), uniforms)
    old = g.TOP_P_CANDIDATES
    try:
        g.TOP_P_CANDIDATES = k
        assert sampling._candidates(logits)
        np.testing.assert_array_equal(sampling.sample(logits, counts, uniforms), reference)
    finally:
        g.TOP_P_CANDIDATES = old


@settings(max_examples=200, deadline=None)
@given(st.integers(0, 2**32 - 1), st.integers(1, 8), st.sampled_from([None, 1.0, 0.3]),
       st.sampled_from([0.0, 1.0, 0.37]), st.sampled_from([0.0, 0.5]), st.sampled_from([1.0, 0.7]))
def test_sampling_with_seen_ids_and_a_workspace_draws_the_reference_token(seed, batch, top_p, freq, presence,
                                                                           temperature):
    """The decoding loop's path (penalties only where a row has seen an id, given with repeats;
    the draw in a reused float64 buffer, found by binary search) gives the token of the reference:
    the dense penalties over every count, then the cumulative sum over the whole vocabulary."""
    import importlib

    g = importlib.import_module("minigpt.generate")
    rng = np.random.default_rng(seed)
    vocab = 1100 + int(rng.integers(0, 50))               # >= 4 x 256: top-p takes its candidates path
    kinds = [rng.normal(0, 3, vocab), rng.integers(-3, 4, vocab).astype(float), np.zeros(vocab)]
    logits = np.stack([kinds[int(rng.integers(0, 3))] for _ in range(batch)]).astype(np.float32)
    ids = rng.integers(0, 30, (batch, 12))                # each row's history, repeats and all
    counts = np.zeros((batch, vocab), dtype=np.int64)
    for row, history in zip(counts, ids):
        np.add.at(row, history, 1)
    uniforms = rng.random(batch)
    sampling = Sampling(temperature=temperature, top_p=top_p, freq_penalty=freq, presence_penalty=presence)
    reference = g._draw(sampling.filter(logits, counts), uniforms)
    workspace = np.full((batch, vocab), np.nan)           # stale contents must not matter
    seen = (np.arange(batch)[:, None], ids)
    np.testing.assert_array_equal(sampling._penalized(logits, counts, seen, np.full((batch, vocab), np.nan)),
                                  sampling._penalized(logits, counts))   # bit for bit, not only the tokens
    np.testing.assert_array_equal(sampling.sample(logits, counts, uniforms, seen, workspace), reference)


def test_top_p_takes_the_fast_path_on_a_large_vocabulary_and_keeps_the_same_tokens():
    """On GPT-2's vocabulary size Sampling.filter partitions; the kept set equals a plain
    stable sort written out here (cumulative mass before each token at most p)."""
    rng = np.random.default_rng(7)
    logits = rng.normal(0, 4, (3, 50257)).astype(np.float32)
    got = Sampling(temperature=1.0, top_p=0.3).filter(logits, np.zeros((3, 50257)))
    for row, x in zip(got, logits.astype(np.float64)):
        order = np.argsort(-x, kind="stable")
        p = np.exp(x[order] - x[order[0]])
        before = np.concatenate([[0.0], np.cumsum(p)[:-1]]) / p.sum()
        assert set(np.flatnonzero(np.isfinite(row))) == set(order[before <= 0.3])


def test_top_k_keeps_the_k_largest_and_ties_with_the_kth():
    logits = crafted(0.1, 0.4, 0.2, 0.3)
    assert kept(Sampling(top_k=1), logits) == {1}
    assert kept(Sampling(top_k=2), logits) == {1, 3}
    assert kept(Sampling(top_k=10), logits) == {0, 1, 2, 3}
    assert kept(Sampling(top_k=2), crafted(0.3, 0.4, 0.3, 0.0001)) == {0, 1, 2}  # as TransformerLens


def test_temperature_and_penalties_in_transformerlens_order():
    logits = np.array([[2.0, 1.0, 0.5, -1.0]], dtype=np.float32)
    counts = np.array([[3, 0, 1, 0]])
    out = Sampling(temperature=0.5, freq_penalty=0.25, presence_penalty=0.5).filter(logits, counts)
    expected = logits / 0.5 - 0.25 * counts - 0.5 * (counts > 0)
    np.testing.assert_allclose(out, expected)


def test_frequency_penalty_counts_prompt_tokens():
    """Greedy-like sampling (tiny temperature) with a strong penalty avoids a token that only
    the prompt contains."""
    model = random_model(GPT2Config(n_layer=1, n_head=1, n_embd=8, n_positions=16, vocab_size=12), seed=5)
    favourite = int(model([3])[0, -1].argmax())
    plain = generate(model, [3], max_new_tokens=1, temperature=1e-3).tokens[0][0]
    penalised = generate(model, [favourite, 3], max_new_tokens=1, temperature=1e-3, freq_penalty=1e4).tokens[0][0]
    assert plain == favourite and penalised != favourite


def test_temperature_zero_is_argmax_of_the_raw_logits():
    logits = np.array([[0.1, 3.0, 2.9], [5.0, -1.0, 4.0]], dtype=np.float32)
    counts = np.array([[0, 100, 0], [0, 0, 0]])
    # Penalties do not apply at temperature 0 (TransformerLens returns the argmax first).
    assert Sampling(temperature=0, freq_penalty=1.0).sample(logits, counts, np.zeros(2)).tolist() == [1, 0]
    kept_sets = np.isfinite(Sampling(temperature=0, freq_penalty=1.0).filter(logits, counts))
    assert kept_sets.tolist() == [[False, True, False], [True, False, False]]


def test_row_i_draws_one_uniform_a_step_from_default_rng_seed_i():
    """The documented contract, against a loop written the plain way: recompute the whole
    sequence each step, call default_rng([seed, i]).random() once per step, and pick the first
    token whose cumulative probability exceeds it (np.searchsorted, side="right")."""
    model = random_model(GPT2Config(n_layer=2, n_head=2, n_embd=16, n_positions=32, vocab_size=40), seed=3)
    prompts, seed, steps = [[1, 2, 3], [4, 5], [6]], 9, 10
    sampling = Sampling(temperature=0.9, top_p=0.8, freq_penalty=0.3)
    got = generate(model, prompts, max_new_tokens=steps, seed=seed, temperature=0.9, top_p=0.8,
                   freq_penalty=0.3).tokens
    for i, prompt in enumerate(prompts):
        rng, ids = np.random.default_rng([seed, i]), list(prompt)
        for _ in range(steps):
            counts = np.bincount(ids, minlength=40)[None]
            filtered = sampling.filter(model(ids)[:, -1], counts)[0]
            cdf = np.cumsum(np.exp(filtered - filtered.max()))
            ids.append(int(np.searchsorted(cdf, rng.random() * cdf[-1], side="right")))
        assert got[i] == ids[len(prompt):], i


@settings(max_examples=40)
@given(batches(), st.integers(1, 4))
def test_samples_share_one_prompt_pass_and_equal_repeated_rows(case, samples):
    """samples=k runs the prompt pass once per prompt and copies its keys and values to k rows:
    the same logits at every step as the prompts repeated k times (scaled error <= 1e-5; the
    prompt pass has fewer rows, which BLAS may round differently), and rows drawing from
    default_rng([seed, row]) as before, so the sampled tokens agree."""
    model, prompts, steps, _ = case
    kw = dict(max_new_tokens=steps, seed=5, temperature=1.0, top_p=0.9, freq_penalty=0.5, stop_at_eos=False)
    repeated = [p for p in prompts for _ in range(samples)]
    seen, steps_logits = {}, {"shared": [], "repeated": []}

    def spy(kind):
        def hook(x, hook):
            seen.setdefault(kind, []).append(x.shape[0])
            steps_logits[kind].append(x.copy())
        return hook
    shared = generate(model, prompts, samples=samples, fwd_hooks=[("ln_final.hook_normalized", spy("shared"))], **kw)
    plain = generate(model, repeated, fwd_hooks=[("ln_final.hook_normalized", spy("repeated"))], **kw)
    assert shared.prompts == plain.prompts == repeated
    assert seen["shared"][0] == len(prompts) and set(seen["shared"][1:]) <= {len(repeated)}
    first = np.repeat(steps_logits["shared"][0], samples, axis=0)
    assert scaled_error(first, steps_logits["repeated"][0]) <= CACHE_TOL
    for a, b in zip(steps_logits["shared"][1:], steps_logits["repeated"][1:]):
        assert scaled_error(a, b) <= CACHE_TOL
    assert shared.tokens == plain.tokens


def test_row_seeds_replace_the_default_seed_of_each_row():
    """Row r draws from default_rng(row_seeds[r]): the same tokens as a batch laid out so that
    default_rng([seed, r]) gives those seeds, and independent of which other rows are there."""
    model = random_model(GPT2Config(n_layer=2, n_head=2, n_embd=16, n_positions=32, vocab_size=40), seed=3)
    kw = dict(max_new_tokens=8, temperature=1.0, top_p=0.9, stop_at_eos=False)
    plain = generate(model, [[1, 2, 3]] * 3, seed=7, **kw).tokens
    assert generate(model, [[1, 2, 3]], samples=3, row_seeds=[[7, 0], [7, 1], [7, 2]], **kw).tokens == plain
    assert generate(model, [[1, 2, 3]], row_seeds=[[7, 2]], **kw).tokens == plain[2:]
    assert generate(model, [[1, 2, 3]], row_seeds=[[7, 0]], **kw).tokens != plain[2:]
    with pytest.raises(ValueError, match="2 row_seeds for 3 rows"):
        generate(model, [[1, 2, 3]], samples=3, row_seeds=[[7, 0], [7, 1]], **kw)
    with pytest.raises(ValueError, match="samples=0"):
        generate(model, [[1, 2, 3]], samples=0, **kw)


def test_draws_follow_the_filtered_softmax():
    """Chi-square goodness of fit of 20,000 draws (fixed seed) against softmax of the filtered
    logits. At T=0.8 the probabilities are p^1.25 renormalised (0.343, 0.233, 0.182, 0.109,
    0.066, 0.037, ...); the mass before the sixth is 0.932 > 0.9, so top-p keeps five tokens and
    the test has 4 degrees of freedom, whose 0.1% critical value is 18.467 (standard tables).
    The statistic is deterministic (fixed seed)."""
    logits = np.log(np.array([[0.30, 0.22, 0.18, 0.12, 0.08, 0.05, 0.03, 0.02]], np.float32))
    sampling = Sampling(temperature=0.8, top_p=0.9)
    filtered = sampling.filter(logits, np.zeros((1, 8)))[0]
    expected = np.exp(filtered - filtered.max())
    expected /= expected.sum()
    support = np.flatnonzero(expected)
    assert len(support) == 5
    uniforms = np.random.default_rng(2024).random((20000, 1))
    draws = np.array([sampling.sample(logits, np.zeros((1, 8)), u)[0] for u in uniforms])
    assert set(np.unique(draws)) <= set(support.tolist())
    observed = np.bincount(draws, minlength=8)[support]
    chi2 = float((((observed - 20000 * expected[support]) ** 2) / (20000 * expected[support])).sum())
    assert chi2 < 18.467, chi2


# --- stopping and bad input ---------------------------------------------------------------------


def test_stops_at_end_of_text_or_runs_to_max_new_tokens():
    model = random_model(GPT2Config(n_layer=1, n_head=1, n_embd=8, n_positions=32, vocab_size=12), seed=2)
    first = generate(model, [1, 2], max_new_tokens=5, temperature=0).tokens[0]
    eos = first[1]
    stop = first.index(eos)
    assert generate(model, [1, 2], max_new_tokens=5, temperature=0, eos_token_id=eos).tokens[0] == first[:stop + 1]
    assert generate(model, [1, 2], max_new_tokens=5, temperature=0, eos_token_id=eos, stop_at_eos=False).tokens[0] == first
    assert generate(model, [1, 2], max_new_tokens=0).tokens == [[]]


@pytest.fixture(scope="module")
def small():
    return random_model(GPT2Config(n_layer=1, n_head=1, n_embd=8, n_positions=10, vocab_size=12))


@pytest.mark.parametrize("kwargs,error,match", [
    (dict(prompts=[[]]), ValueError, "prompt 0 is empty"),
    (dict(prompts=[[1], [2, 12]]), ValueError, r"prompt 1: token id 12 at position 1 is outside the vocabulary \[0, 12\)"),
    (dict(prompts=[[1, -3]]), ValueError, "prompt 0: token id -3"),
    (dict(prompts=[[1.5]]), TypeError, "prompt 0 must be text or a list of integer token ids"),
    (dict(prompts=["text"]), ValueError, "prompt 0 is text; pass a tokenizer"),
    (dict(prompts=[]), ValueError, "no prompts given"),
    (dict(prompts=[[1] * 6], max_new_tokens=5), ValueError, "a prompt of 6 tokens plus max_new_tokens=5 is longer than n_positions=10"),
    (dict(max_new_tokens=-1), ValueError, "max_new_tokens=-1"),
    (dict(temperature=-0.5), ValueError, "temperature=-0.5: expected a finite number >= 0"),
    (dict(temperature=float("nan")), ValueError, "temperature=nan"),
    (dict(temperature=float("inf")), ValueError, "temperature=inf"),
    (dict(top_p=0.0), ValueError, r"top_p=0.0: expected a number in \(0, 1\]"),
    (dict(top_p=1.5), ValueError, "top_p=1.5"),
    (dict(top_p=float("nan")), ValueError, "top_p=nan"),
    (dict(top_k=0), ValueError, "top_k=0: expected a positive integer"),
    (dict(top_k=5, top_p=0.5), ValueError, "give top_k or top_p, not both"),
    (dict(freq_penalty=float("nan")), ValueError, "freq_penalty=nan"),
    (dict(prepend_bos=True), ValueError, "prepend_bos needs a tokenizer"),
])
def test_bad_arguments_are_refused_before_any_work(small, kwargs, error, match):
    kwargs = {"prompts": [[1, 2]], **kwargs}
    with pytest.raises(error, match=match):
        generate(small, kwargs.pop("prompts"), **kwargs)


def test_prompts_as_arrays_lists_and_batches(small):
    one = generate(small, [3, 4], max_new_tokens=2, temperature=0).tokens
    assert generate(small, np.array([3, 4]), max_new_tokens=2, temperature=0).tokens == one
    assert generate(small, np.array([[3, 4], [3, 4]]), max_new_tokens=2, temperature=0).tokens == one * 2
    assert generate(small, [[3, 4], [5]], max_new_tokens=2, temperature=0).prompts == [[3, 4], [5]]


def test_stream_checks_its_arguments_when_called_not_when_iterated(small):
    with pytest.raises(ValueError, match="longer than n_positions"):
        stream(small, [[1] * 9], max_new_tokens=2)


# --- text, streaming and the CLI -------------------------------------------------------------


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("generate")
    write_model_folder(folder, GPT2Config(n_layer=2, n_head=2, n_embd=16, n_positions=48, vocab_size=262), seed=9)
    return write_tokenizer_files(folder, handmade_tokenizer())


def test_text_prompts_give_text_and_stream_agrees(folder):
    import minigpt

    model, tok = minigpt.load(folder)
    g = generate(model, ["the ab", " a"], tok, max_new_tokens=6, seed=3, top_p=0.8, prepend_bos=True)
    assert g.prompts == [[tok.bos_token_id] + tok.encode("the ab"), [tok.bos_token_id] + tok.encode(" a")]
    assert g.texts == [tok.decode(t) for t in g.tokens]
    steps = list(stream(model, g.prompts, max_new_tokens=6, sampling=Sampling(top_p=0.8), seed=3,
                        eos_token_id=tok.eos_token_id))
    assert [[s[i] for s in steps if s[i] is not None] for i in range(2)] == g.tokens


def test_cli_streams_one_sample_and_prints_batches(folder, capsys):
    import minigpt

    model, tok = minigpt.load(folder)
    assert main(["generate", "the ab", "--model", str(folder), "--max-new-tokens", "7", "--seed", "5",
                 "--top-p", "0.9", "--freq-penalty", "1", "--bos", "--no-stop"]) == 0
    expected = generate(model, "the ab", tok, max_new_tokens=7, seed=5, top_p=0.9, freq_penalty=1,
                        prepend_bos=True, stop_at_eos=False)
    assert capsys.readouterr().out == "the ab" + expected.texts[0] + "\n"

    batch = generate(model, ["the", "the", "ab", "ab"], tok, max_new_tokens=3)
    for spelling in ("-n", "--samples", "--num-samples"):                 # the last: deprecated, said on stderr
        assert main(["generate", "the", "ab", "--model", str(folder), "--max-new-tokens", "3", spelling, "2"]) == 0
        out, err = capsys.readouterr()
        for i, (j, text) in enumerate(zip([0, 0, 1, 1], batch.texts)):
            assert f"--- prompt {j}, sample {i % 2} ---\n{['the', 'ab'][j]}{text}\n" in out
        assert ("--num-samples is deprecated" in err) == (spelling == "--num-samples")
    assert main(["generate", "the", "ab", "--model", str(folder), "--max-new-tokens", "3", "-n", "2", "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert [(r["prompt"], r["sample"]) for r in printed] == [("the", 0), ("the", 1), ("ab", 0), ("ab", 1)]
    assert [r["tokens"] for r in printed] == batch.tokens and [r["text"] for r in printed] == batch.texts

    assert main(["generate", "x", "--model", str(folder), "--top-p", "2"]) == 2
    assert "top_p=2.0: expected a number in (0, 1]" in capsys.readouterr().err


def test_cli_streams_through_python_dash_m(folder):
    out = subprocess.run([sys.executable, "-m", "minigpt", "generate", "the", "--model", str(folder),
                          "--max-new-tokens", "4", "--temperature", "0"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("the")


# --- greedy decoding against transformers -----------------------------------------------------


@settings(max_examples=25)
@given(batches(), st.integers(0, 2**31 - 1))
def test_greedy_tokens_equal_transformers_generate(reference, case, seed):
    """Same random weights (written by transformers), same left-padded batch. Where the tokens
    differ, the reference's top two logits at that step must be within float noise (a tie)."""
    import tempfile
    from pathlib import Path

    from minigpt import GPT2

    model, prompts, steps, _ = case
    eos = model.config.vocab_size - 1
    with tempfile.TemporaryDirectory() as folder:
        reference.write_checkpoint(Path(folder), model.config, seed)
        theirs, their_logits = reference.greedy_generate(Path(folder), prompts, steps, eos)
        ours = generate(GPT2.from_pretrained(folder), prompts, max_new_tokens=steps, temperature=0,
                        eos_token_id=eos).tokens
    for i in range(len(prompts)):
        for step, (a, b) in enumerate(zip(ours[i], theirs[i])):
            if a != b:
                top2 = np.sort(their_logits[step][i])[-2:]
                assert top2[1] - top2[0] <= 1e-4 * (1 + abs(top2[1])), (i, step)
                break
        else:
            assert ours[i] == theirs[i]


def test_greedy_on_the_gpt2_shape_equals_transformers(reference, tmp_path):
    from minigpt import GPT2

    config = GPT2Config()
    reference.write_checkpoint(tmp_path, config, seed=3, layout="bare")
    prompts = [[464, 3290, 318], [15496, 995, 11, 314, 716]]
    theirs, _ = reference.greedy_generate(tmp_path, prompts, 12, eos_token_id=50256)
    ours = generate(GPT2.from_pretrained(tmp_path), prompts, max_new_tokens=12, temperature=0, eos_token_id=50256)
    assert ours.tokens == theirs
