"""Per-row steering (`row_hooks`): a batch whose rows carry different vectors, coefficients,
layers and alignments equals each row steered alone by its own vector, with left padding,
through the KV cache and in generation; and the sweep and eval grids built on it."""

import numpy as np
import pytest

import minigpt
from actadd import row_hooks, steering_vector, x_vector
from actadd.measure import scaled
from conftest import decode_with_cache, handmade_tokenizer, random_model
from minigpt import GPT2Config
from minigpt.generate import left_pad

TOK = handmade_tokenizer()
CONFIG = GPT2Config(n_layer=5, n_head=2, n_embd=16, n_positions=48, vocab_size=262)
PROMPTS = ["the abab the ab ba", " a b the ab ba", "the ba ab the abab the b a", "ab the abab ba the"]


@pytest.fixture(scope="module")
def model():
    return random_model(CONFIG, seed=3)


def bos(text):
    return [TOK.bos_token_id] + TOK.encode(text)


@pytest.fixture(scope="module")
def vectors(model):
    """Five rows' worth: coefficients 0.5..-3 at layer 2, one at layer 0 with back alignment, one
    at layer 4 with two additions, and None (unsteered)."""
    unit = steering_vector(model, x_vector(TOK, "the ab", " a", 1.0, 2))
    out = [scaled(unit, c) for c in (0.5, 2.0, -3.0)]
    out.append(steering_vector(model, x_vector(TOK, "ab", "", 4.0, 0), alignment="back"))
    out.append(steering_vector(model, x_vector(TOK, " b", "the", 1.5, 4)))
    out.append(None)
    return out


def one_at_a_time(model, ids, vector):
    hooks = vector.hooks(prompt_lengths=len(ids)) if vector is not None else ()
    return model.run_with_hooks([ids], hooks)[0]


def test_each_row_equals_its_vector_alone_with_left_padding(model, vectors):
    rows = [bos(PROMPTS[i % len(PROMPTS)]) for i in range(len(vectors))]    # lengths differ: left padding
    tokens, mask = left_pad(rows)
    batched = model.run_with_hooks(tokens, row_hooks(vectors, prompt_lengths=[len(r) for r in rows]),
                                   attention_mask=mask)
    worst = 0.0
    for b, (ids, vector) in enumerate(zip(rows, vectors)):
        alone = one_at_a_time(model, ids, vector)
        got = batched[b, tokens.shape[1] - len(ids):]
        worst = max(worst, float(np.abs(got - alone).max()))
        np.testing.assert_allclose(got, alone, rtol=0, atol=2e-5)
        # and the steering did something (a vacuous equality would pass too)
        if vector is not None:
            assert np.abs(alone - model.run_with_hooks([ids])[0]).max() > 1e-3
    print(f"row_hooks vs one vector alone: max abs diff of logits {worst:.1e}")


def test_same_batch_layout_gives_the_same_floats(model, vectors):
    """On one batch layout, row b of the mixed batch is bit-equal to row b of the whole batch
    steered by vectors[b] alone: the delta added is the same array, summed the same way."""
    rows = [bos(PROMPTS[i % len(PROMPTS)]) for i in range(len(vectors))]
    tokens, mask = left_pad(rows)
    lengths = [len(r) for r in rows]
    mixed = model.run_with_hooks(tokens, row_hooks(vectors, prompt_lengths=lengths), attention_mask=mask)
    for b, vector in enumerate(vectors):
        hooks = vector.hooks(prompt_lengths=lengths) if vector is not None else ()
        whole = model.run_with_hooks(tokens, hooks, attention_mask=mask)
        assert np.array_equal(mixed[b], whole[b]), b


def test_one_vector_on_every_row_is_the_single_vector_path(model, vectors):
    rows = [bos(p) for p in PROMPTS]
    tokens, mask = left_pad(rows)
    lengths = [len(r) for r in rows]
    v = vectors[1]
    assert np.array_equal(model.run_with_hooks(tokens, row_hooks([v] * len(rows), prompt_lengths=lengths), attention_mask=mask),
                          model.run_with_hooks(tokens, v.hooks(prompt_lengths=lengths), attention_mask=mask))


def test_kv_cache_decode_equals_recompute(model, vectors):
    """Prompt lengths given: decode steps from the cache get what a full recompute gets."""
    prompts = [bos(PROMPTS[i % len(PROMPTS)]) for i in range(len(vectors))]
    lengths = [len(p) for p in prompts]
    hooks = row_hooks(vectors, prompt_lengths=lengths)
    cached, seqs = decode_with_cache(model, prompts, 4, np.random.default_rng(0), hooks)
    tokens, mask = left_pad(seqs)
    full = model.run_with_hooks(tokens, hooks, attention_mask=mask)
    for step, logits in enumerate(cached):
        at = tokens.shape[1] - 4 - 1 + step
        np.testing.assert_allclose(logits, full[:, at], rtol=0, atol=2e-5)


def test_generation_rows_sample_as_each_vector_alone(model, vectors):
    """generate(samples=k) with row_hooks over the prompt pass: each (vector, sample) row draws
    the tokens that row gets when its vector steers a generate() call of its own."""
    ids = bos(PROMPTS[2])
    k = 3
    seeds = [[7, v, j] for v in range(len(vectors)) for j in range(k)]
    out = minigpt.generate(model, [ids] * len(vectors), max_new_tokens=12, temperature=1.0, top_p=0.9,
                           fwd_hooks=row_hooks(vectors), samples=k, row_seeds=seeds)
    for v, vector in enumerate(vectors):
        hooks = vector.hooks() if vector is not None else ()
        alone = minigpt.generate(model, [ids], max_new_tokens=12, temperature=1.0, top_p=0.9, fwd_hooks=hooks,
                                 samples=k, row_seeds=seeds[v * k:(v + 1) * k])
        assert out.tokens[v * k:(v + 1) * k] == alone.tokens, v
    assert len({tuple(t) for t in out.tokens[::k]}) > 2          # the vectors do steer differently


def test_bad_input_names_the_row(model, vectors):
    short = bos("ab")                                              # 2 tokens; the x-vector has 4
    long = bos(PROMPTS[0])
    tokens, mask = left_pad([long, short])
    with pytest.raises(ValueError, match="batch row 1 has 2 tokens"):
        model.run_with_hooks(tokens, row_hooks([None, vectors[0]], prompt_lengths=[len(long), 2]), attention_mask=mask)
    with pytest.raises(ValueError, match="built for 3 rows, but this pass .* has 2"):
        model.run_with_hooks(tokens, row_hooks([vectors[0]] * 3, prompt_lengths=[len(long), 2]), attention_mask=mask)
    with pytest.raises(TypeError, match="a steering vector .* or None per row, got float"):
        row_hooks([vectors[0], 2.0])
    with pytest.raises(ValueError, match="one vector"):
        row_hooks([])


def test_eval_units_packing_several_conditions_give_the_same_samples():
    """A topic grid packed several conditions to a batch (each row steered by its own cell's
    vector) samples what one condition a batch samples: same seeds, same tokens."""
    from actadd.experiments import data, generation

    model, tok = minigpt.load("tiny-books")
    kw = dict(prompt="In the morning we", plus="whale", layers=[0, 2], coeffs=(1.0, 4.0), words=["sea", "whale"],
              samples=6, max_new_tokens=12, progress=False)
    work = generation.units([generation.Condition(str(i)) for i in range(5)], [data.Prompt(0, "x", "-")], 6, 30)
    assert len(work) == 1 and len({c.name for c, _ in work[0].rows}) == 5
    packed = generation.topic(model, tok, None, batch_rows=30, **kw)
    alone = generation.topic(model, tok, None, batch_rows=6, **kw)
    assert [(r["condition"], r["sample"], r["tokens"]) for r in packed.samples] == \
        [(r["condition"], r["sample"], r["tokens"]) for r in alone.samples]
    assert len({tuple(r["tokens"]) for r in packed.samples if r["sample"] == 0}) == 5   # the cells differ
    for a, b in zip(packed.samples, alone.samples):
        assert abs(a["fluency"]["logprob"] - b["fluency"]["logprob"]) < 1e-3
