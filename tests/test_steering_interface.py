"""One interface for anything that steers (actadd.Steering). ActAdd's per-position matrix and the
mean-difference direction go through the same hook: a batch may mix them row by row, and sweeps,
the eval tasks and the measurements take either. Old module paths still import, warning."""

import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import actadd
import minigpt
from actadd import DirectionVector, Steering, SteeringVector, measure, row_hooks, steering_vector, x_vector
from actadd.experiments import data, generation, scorers
from actadd.experiments.results import ResumeError
from conftest import handmade_tokenizer, random_model
from minigpt import GPT2Config
from minigpt.generate import left_pad

TOK = handmade_tokenizer()
CONFIG = GPT2Config(n_layer=4, n_head=2, n_embd=16, n_positions=48, vocab_size=262)
PAIRS = [("the ab", "ab"), (" the", "abab the"), ("ab ab", " the the")]
PROMPTS = ["the abab the ab ba", " a b the ab ba the", "the ba ab the abab the b a", "ab the abab ba the a",
           " the the ab"]
ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def model():
    return random_model(CONFIG, seed=5)


@pytest.fixture(scope="module")
def vectors(model):
    """A back-aligned ActAdd matrix, a direction on the prompt, None, a direction on every token,
    and one after the last block (layer n_layer)."""
    matrix = steering_vector(model, x_vector(TOK, "the ab", " a", 2.0, 1), alignment="back")
    direction = actadd.mean_of_pairs(model, TOK, PAIRS, 1.5, [2], reading="last")
    everywhere = DirectionVector(direction.layers, direction.directions, CONFIG.n_layer, positions="all")
    after = actadd.mean_of_pairs(model, TOK, PAIRS, 3.0, [CONFIG.n_layer], reading="mean")
    return [matrix, direction, None, everywhere, after]


def bos(text):
    return [TOK.bos_token_id] + TOK.encode(text)


def test_both_kinds_are_one_interface(vectors):
    matrix, direction, _, everywhere, after = vectors
    assert all(isinstance(v, Steering) for v in (matrix, direction, everywhere, after))
    assert isinstance(matrix, SteeringVector) and isinstance(direction, DirectionVector)
    assert (matrix.beyond_prompt, direction.beyond_prompt, everywhere.beyond_prompt) == (False, False, True)
    assert matrix.length == 5 and matrix.masked_positions(6).tolist() == [False] + [True] * 5   # back: the last 5
    assert not direction.masked_positions(6).any()                 # it adds to the text's own activations
    with pytest.raises(ValueError, match="not front/mid/back"):
        direction.hooks(alignment="back")


def test_a_batch_mixing_matrices_directions_and_none_equals_each_alone(model, vectors):
    """Row b of the mixed batch is bit-equal to row b of the batch steered by vectors[b] alone,
    and each vector changes its row."""
    rows = [bos(p) for p in PROMPTS]                                # lengths differ: left padding
    tokens, mask = left_pad(rows)
    lengths = [len(r) for r in rows]
    mixed = model.run_with_hooks(tokens, row_hooks(vectors, prompt_lengths=lengths), attention_mask=mask)
    plain = model.run_with_hooks(tokens, attention_mask=mask)
    for b, vector in enumerate(vectors):
        if vector is None:
            assert np.array_equal(mixed[b], plain[b])
            continue
        alone = model.run_with_hooks(tokens, vector.hooks(prompt_lengths=lengths), attention_mask=mask)
        assert np.array_equal(mixed[b], alone[b]), b
        assert np.abs(alone[b] - plain[b]).max() > 1e-3, b


def test_generation_rows_with_a_matrix_and_a_direction_on_every_token(model, vectors):
    """Each row samples what its vector alone samples, the direction on generated tokens too."""
    matrix, _, _, everywhere, _ = vectors
    ids = bos(PROMPTS[2])
    seeds = [[3, 0], [3, 1]]
    kw = dict(max_new_tokens=10, temperature=1.0, top_p=0.9)
    out = minigpt.generate(model, [ids, ids], fwd_hooks=row_hooks([matrix, everywhere]), row_seeds=seeds, **kw)
    for b, vector in enumerate((matrix, everywhere)):
        alone = minigpt.generate(model, [ids], fwd_hooks=vector.hooks(), row_seeds=[seeds[b]], **kw)
        assert out.tokens[b] == alone.tokens[0], b
    prompt_only = DirectionVector(everywhere.layers, everywhere.directions, CONFIG.n_layer, positions="prompt")
    assert minigpt.generate(model, [ids], fwd_hooks=prompt_only.hooks(), row_seeds=[seeds[1]], **kw).tokens != \
        [out.tokens[1]]                                                # steering generated tokens matters here
    # k samples a row: a decode step has k rows per prompt, prompt-major, and each keeps its
    # prompt's vector (as generated alone); a pass of any other size is an error, not a misplaced addition.
    k_seeds = [[3, p, j] for p in range(2) for j in range(3)]
    both = minigpt.generate(model, [ids, ids], fwd_hooks=row_hooks([everywhere, None]), samples=3, row_seeds=k_seeds, **kw)
    alone = minigpt.generate(model, [ids], fwd_hooks=everywhere.hooks(), samples=3, row_seeds=k_seeds[:3], **kw)
    plain = minigpt.generate(model, [ids], samples=3, row_seeds=k_seeds[3:], **kw)
    assert both.tokens[:3] == alone.tokens and both.tokens[3:] == plain.tokens and alone.tokens != plain.tokens
    with pytest.raises(ValueError, match="built for 2 rows, but this pass .* has 3"):
        minigpt.generate(model, [ids, ids, ids], fwd_hooks=row_hooks([everywhere, None]), **kw)


# --- sweeps, evals, measurements ---------------------------------------------------------------


@pytest.fixture(scope="module")
def texts():
    return [("one", bos(s)) for s in PROMPTS[:3]] + [("two", bos(PROMPTS[3]))]


def test_a_sweep_over_directions_equals_the_single_runs(model, texts):
    def unit(layer):
        return actadd.mean_of_pairs(model, TOK, PAIRS, 1.0, [layer], reading="last")
    rows = measure.sweep(model, TOK, None, None, [1, 3], [-1.0, 2.0], texts=texts, prompt=" the abab the",
                         topic_tokens=[5, 17], unit_vector=unit, progress=False)
    assert [(r["layer"], r["coeff"]) for r in rows] == [(L, c) for L in (1, 3) for c in (-1.0, 2.0)]
    predictions = sum(len(ids) - 1 for _, ids in texts)
    for row in rows:
        vector = unit(row["layer"]).scaled(row["coeff"])
        single = measure.logprob_shift(model, texts, vector).summary()["all"]
        assert row["tokens"] == single["tokens"] == predictions           # a direction masks no prediction
        assert math.isclose(row["mean_logprob_diff"], single["mean_logprob_diff"], rel_tol=1e-9, abs_tol=1e-12)
        assert abs(row["mean_logprob_diff"]) > 1e-4
        nt = measure.next_token(model, TOK, " the abab the", vector)
        assert math.isclose(row["kl"], nt.kl, rel_tol=1e-5, abs_tol=1e-9)
        assert math.isclose(row["effectiveness"], nt.effectiveness([5, 17]), rel_tol=1e-5, abs_tol=1e-9)


def test_a_sweep_refuses_what_it_cannot_sweep(model, texts):
    def unit(layer):
        return actadd.mean_of_pairs(model, TOK, PAIRS, 1.0, [layer], reading="last")
    with pytest.raises(ValueError, match="plus and minus, or unit_vector"):
        measure.sweep(model, TOK, "the", "", [1], [1.0], texts=texts, unit_vector=unit, progress=False)
    with pytest.raises(ValueError, match="plus and minus, or unit_vector"):
        measure.sweep(model, TOK, None, None, [1], [1.0], texts=texts, progress=False)
    with pytest.raises(ValueError, match=r"unit_vector\(1\) gave \(1, 2\); expected a steering vector of layer 1 only"):
        measure.sweep(model, TOK, None, None, [1], [1.0], texts=texts, progress=False,
                      unit_vector=lambda L: actadd.mean_of_pairs(model, TOK, PAIRS, 1.0, [L, L + 1], reading="last"))
    with pytest.raises(ValueError, match="not front/mid/back"):
        measure.sweep(model, TOK, None, None, [1], [1.0], ["front", "mid"], texts=texts, unit_vector=unit,
                      progress=False)


class LengthScorer(scorers.Scorer):
    name, measures = "length", "toxicity"

    def __call__(self, texts):
        return [(len(t) % 10) / 10 for t in texts]

    def label(self, score):
        return "toxic" if score >= 0.5 else "non-toxic"


@pytest.fixture(scope="module")
def books():
    model, tok = minigpt.load("tiny-books")
    pairs = actadd.read_pairs(ROOT / "docs" / "whale_sea_pairs.tsv")
    return model, tok, pairs


def test_eval_tasks_steer_with_a_direction(books, tmp_path):
    """toxicity(vector=...) and topic(unit_vector=...): each steered record is plain generate()
    with that vector's hooks and the record's seed; a rerun with another vector is refused."""
    model, tok, pairs = books
    direction = actadd.mean_of_pairs(model, tok, pairs, 1.6, [2], reading="last")
    prompts = [data.Prompt(i, t, f"x:{i}") for i, t in enumerate(["The captain looked at the", "In the morning we"])]
    run = generation.toxicity(model, tok, prompts, tmp_path / "tox", vector=direction, samples=2, max_new_tokens=10,
                              progress=False, scorer=LengthScorer())
    assert run.settings["vector"]["layers"] == [2] and run.settings["plus"] is None
    steered = [r for r in run.samples if r["condition"] == "steered"]
    assert len(steered) == 4 and all(r["layer"] == 2 for r in steered)
    for r in steered:
        ids = actadd.tokens_with_bos(tok, r["prompt"])
        alone = minigpt.generate(model, [ids], tok, max_new_tokens=10, row_seeds=[[0, r["prompt_id"], r["sample"]]],
                                 fwd_hooks=direction.hooks(len(ids)), **actadd.PAPER_SAMPLING).tokens[0]
        assert r["tokens"] + [tok.eos_token_id] * r["stopped"] == alone
    assert [r["tokens"] for r in steered] != [r["tokens"] for r in run.samples if r["condition"] == "unsteered"]
    with pytest.raises(ResumeError, match="vector"):
        generation.toxicity(model, tok, prompts, tmp_path / "tox", vector=direction.scaled(2.0), samples=2,
                            max_new_tokens=10, progress=False, scorer=LengthScorer())
    with pytest.raises(ValueError, match="give layer and coeff .* or a vector, not both"):
        generation.toxicity(model, tok, prompts, vector=direction, layer=2, coeff=1.0, progress=False,
                            scorer=LengthScorer())

    def unit(layer):
        return actadd.mean_of_pairs(model, tok, pairs, 1.0, [layer], reading="last")
    topic = generation.topic(model, tok, None, prompt="In the morning we", layers=[2], coeffs=[2.0],
                             words=["sea", "whale"], samples=3, max_new_tokens=8, unit_vector=unit, progress=False)
    ids = actadd.tokens_with_bos(tok, "In the morning we")
    cell = [r for r in topic.samples if r["condition"] == "layer 2 coeff 2"]
    for r in cell:
        alone = minigpt.generate(model, [ids], tok, max_new_tokens=8, row_seeds=[[0, 0, r["sample"]]],
                                 fwd_hooks=unit(2).scaled(2.0).hooks(len(ids)), **actadd.PAPER_SAMPLING).tokens[0]
        assert r["tokens"] + [tok.eos_token_id] * r["stopped"] == alone
    assert topic.settings["unit_vectors"][0]["layers"] == [2]


# --- old module paths ---------------------------------------------------------------------------


def test_old_module_paths_still_import_with_a_deprecation_warning():
    from actadd import output, provenance
    from actadd.experiments import dask, likelihood, paper

    with pytest.warns(DeprecationWarning, match=r"actadd\.evaluate\.topic is now actadd\.experiments\.generation\.topic"):
        from actadd.evaluate import topic
    assert topic is generation.topic
    with pytest.warns(DeprecationWarning, match=r"actadd\.evaluate\.read_labelled is now actadd\.experiments\.data"):
        from actadd.evaluate import read_labelled
    assert read_labelled is data.read_labelled
    import actadd.likelihood as old_likelihood

    with pytest.warns(DeprecationWarning):
        assert old_likelihood.relevance is likelihood.relevance and old_likelihood.read_lama is data.read_lama
    with pytest.warns(DeprecationWarning):
        from actadd.distributed import DaskRunner, ModelSource
    assert DaskRunner is dask.DaskRunner and ModelSource is provenance.ModelSource
    with pytest.warns(DeprecationWarning):
        from actadd.results import ResultsFile, atomic_write
    assert atomic_write is output.atomic_write and ResultsFile.__module__ == "actadd.experiments.results"
    import actadd.paper

    with pytest.raises(AttributeError, match="moved to actadd.experiments.paper, which have no 'nothing'"):
        actadd.paper.nothing
    with pytest.warns(DeprecationWarning):
        assert actadd.paper.render is paper.render


def test_importing_actadd_imports_no_experiment():
    code = ("import sys, actadd, actadd.measure, actadd.pairs, actadd.interpret, actadd.vector_io\n"
            "print(sorted(m for m in sys.modules if m.startswith('actadd.experiments')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
