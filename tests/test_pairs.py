"""Contrast pairs (actadd.pairs): the mean-of-pairs vector in both readings against transformers'
hidden states, its exact and order properties, the direction's placement (prompt, all, chosen
positions; with and without a KV cache), the pair diagnostics on a constructed case, and the
inputs it refuses."""

import json

import numpy as np
import pytest

import actadd
import minigpt
from actadd import pairs as P
from actadd.cli import main
from conftest import assert_close, handmade_tokenizer, max_abs, random_model, record_parity
from minigpt import GPT2, GPT2Config

TOK = handmade_tokenizer()  # 262 tokens; BOS = 261; " " is one token
CONFIG = GPT2Config(n_layer=3, n_head=2, n_embd=16, n_positions=32, vocab_size=262)
PAIRS = [("the ab", "ab"), (" the", "abab the"), ("ab ab", " the the"), ("the", "")]


@pytest.fixture(scope="module")
def model():
    return random_model(CONFIG, seed=7)


@pytest.fixture(scope="module")
def hf_pair(reference, tmp_path_factory):
    """(our model, transformers' model) on one random checkpoint written by transformers."""
    folder = tmp_path_factory.mktemp("pairs-ckpt")
    reference.write_checkpoint(folder, CONFIG, seed=11)
    hf = reference.transformers.GPT2LMHeadModel.from_pretrained(folder, dtype=reference.torch.float32).eval()
    return GPT2.from_pretrained(folder), hf


def hidden(reference, hf, tokens, layer):
    """transformers' hidden_states[layer] (the stream entering block `layer`) of `tokens`, [pos, d_model]."""
    with reference.torch.no_grad():
        return hf(reference.torch.tensor([list(tokens)]), output_hidden_states=True).hidden_states[layer][0].double().numpy()


# --- the mean of the pairs' differences, against transformers ----------------------------------


def test_actadd_reading_is_the_position_mean_of_transformers_differences(reference, hf_pair):
    ours, hf = hf_pair
    coeff, layer = 3.0, 2
    vector = P.mean_of_pairs(ours, TOK, PAIRS, coeff, layer)
    space, bos = TOK.encode(" ")[0], TOK.bos_token_id
    width = max(len(TOK.encode(t)) + 1 for pair in PAIRS for t in pair)
    expected = np.zeros((width, CONFIG.n_embd))
    for plus, minus in PAIRS:                     # independently: right-pad every prompt to the set's width
        a, b = ([bos] + TOK.encode(t) for t in (plus, minus))
        a, b = a + [space] * (width - len(a)), b + [space] * (width - len(b))
        expected += hidden(reference, hf, a, layer) - hidden(reference, hf, b, layer)
    expected *= coeff / len(PAIRS)
    err = assert_close(vector.matrix(layer), expected, "mean-of-pairs matrix")
    record_parity("actadd: mean of pairs vs transformers hidden states", hidden_states=max_abs(vector.matrix(layer), expected),
                  scaled=err)


@pytest.mark.parametrize("reading", ["last", "mean"])
def test_direction_readings_are_the_mean_of_transformers_differences(reference, hf_pair, reading):
    ours, hf = hf_pair
    pairs = PAIRS[:3]                             # the "mean" reading refuses the empty prompt of PAIRS[3]
    vector = P.mean_of_pairs(ours, TOK, pairs, -2.0, [1, 2], reading=reading)
    for layer in (1, 2):
        diffs = []
        for plus, minus in pairs:
            a, b = (hidden(reference, hf, [TOK.bos_token_id] + TOK.encode(t), layer) for t in (plus, minus))
            diffs.append(a[-1] - b[-1] if reading == "last" else a[1:].mean(0) - b[1:].mean(0))
        expected = -2.0 * np.mean(diffs, axis=0)
        err = assert_close(vector.direction(layer), expected, f"{reading} direction at layer {layer}")
        record_parity("actadd: mean of pairs vs transformers hidden states", hidden_states=max_abs(vector.direction(layer), expected),
                      scaled=err)


def test_a_direction_at_every_prompt_position_equals_a_transformers_pre_hook(reference, hf_pair):
    """The direction reading applied: d added to every position of the prompt entering block L,
    by a PyTorch pre-hook on transformers' block."""
    ours, hf = hf_pair
    torch = reference.torch
    vector = P.mean_of_pairs(ours, TOK, PAIRS, 4.0, 1, reading="last")
    prompt = actadd.tokens_with_bos(TOK, " the abab the ab")
    d = torch.tensor(vector.direction(1))

    def pre_hook(module, args, kwargs):
        hidden_states = args[0] if args else kwargs["hidden_states"]
        hidden_states += d
    handle = hf.transformer.h[1].register_forward_pre_hook(pre_hook, with_kwargs=True)
    try:
        with torch.no_grad():
            expected = hf(torch.tensor([prompt])).logits[0].numpy()
    finally:
        handle.remove()
    steered = ours.run_with_hooks(prompt, vector.hooks(len(prompt)))[0]
    assert np.abs(steered - ours(prompt)[0]).max() > 1e-2
    err = assert_close(steered, expected, "direction-steered logits")
    record_parity("actadd: mean of pairs vs transformers hidden states", logits=max_abs(steered, expected), scaled=err)


# --- exact properties ----------------------------------------------------------------------------


@pytest.mark.parametrize("padding", ["space", "endoftext", "none"])
def test_one_pair_is_exactly_todays_x_vector(model, padding):
    ours = P.mean_of_pairs(model, TOK, [("the ab", "")], 2.5, 1, padding=padding)
    theirs = actadd.steering_vector(model, actadd.x_vector(TOK, "the ab", "", 2.5, 1, padding), padding=padding)
    assert ours.additions == theirs.additions
    for a, b in zip(ours.activations, theirs.activations):
        np.testing.assert_array_equal(a, b)
    prompt = actadd.tokens_with_bos(TOK, " the abab the")
    np.testing.assert_array_equal(model.run_with_hooks(prompt, ours.hooks()), model.run_with_hooks(prompt, theirs.hooks()))


@pytest.mark.parametrize("reading", ["actadd", "last", "mean"])
def test_the_vector_is_the_same_on_every_run_and_pair_order_changes_only_rounding(model, reading):
    pairs = PAIRS[:3]
    runs = [P.mean_of_pairs(model, TOK, pairs, 3.0, [1, 2], reading=reading) for _ in range(2)]
    shuffled = P.mean_of_pairs(model, TOK, pairs[::-1], 3.0, [1, 2], reading=reading)

    def arrays(v):
        return [v.matrix(L) for L in (1, 2)] if reading == "actadd" else list(v.directions)
    for a, b, c in zip(arrays(runs[0]), arrays(runs[1]), arrays(shuffled)):
        np.testing.assert_array_equal(a, b)                                      # bit for bit
        np.testing.assert_allclose(c, a, rtol=0, atol=1e-5 * (1 + np.abs(a).max()))


def test_the_mean_is_the_mean_and_a_swapped_pair_cancels_its_original(model):
    """Two pairs, the second the first swapped: the mean difference is zero (to rounding), and
    the vector changes nothing."""
    vector = P.mean_of_pairs(model, TOK, [("the ab", "ab"), ("ab", "the ab")], 5.0, 2, reading="last")
    np.testing.assert_array_equal(vector.direction(2), 0.0)
    prompt = actadd.tokens_with_bos(TOK, " the abab")
    np.testing.assert_array_equal(model.run_with_hooks(prompt, vector.hooks()), model(prompt))


# --- where a direction goes ----------------------------------------------------------------------


def test_direction_positions_prompt_all_and_chosen(model):
    vector = P.mean_of_pairs(model, TOK, PAIRS[:2], 2.0, 1, reading="last")
    d = vector.direction(1)
    prompt = actadd.tokens_with_bos(TOK, " the ab the")
    seq = prompt + TOK.encode(" abab")                                         # the prompt and two generated tokens

    def added(v):
        seen = {}
        model.run_with_hooks(seq, v.hooks(len(prompt)) + [("blocks.1.hook_resid_pre", lambda x, hook: seen.update(x=x))])
        return seen["x"][0] - model.run_with_cache(seq, names="blocks.1.hook_resid_pre")[1]["blocks.1.hook_resid_pre"][0]
    for positions, rows in (("prompt", range(len(prompt))), ("all", range(len(seq))), ((1, 3), (1, 3))):
        delta = added(actadd.DirectionVector((1,), (d,), CONFIG.n_layer, positions=positions))
        assert delta.dtype == np.float32
        expected = np.zeros_like(delta)
        expected[list(rows)] = d
        np.testing.assert_allclose(delta, expected, rtol=0, atol=1e-5)


def test_prompt_positions_leave_generated_tokens_alone_and_all_steers_them_with_or_without_a_cache(model):
    """positions='prompt': greedy generation equals the unsteered model's continuation of the
    steered prompt's first token on; 'all': every step is steered, and a KV-cached run equals
    recomputing the whole sequence with the direction at every position."""
    vector = P.mean_of_pairs(model, TOK, PAIRS[:2], 6.0, 1, reading="last")
    prompt = actadd.tokens_with_bos(TOK, " the ab the")
    every = actadd.DirectionVector((1,), vector.directions, CONFIG.n_layer, positions="all")
    for v in (vector, every):
        cached = minigpt.generate(model, [prompt], max_new_tokens=6, temperature=0.0, fwd_hooks=v.hooks(len(prompt))).tokens[0]
        seq = list(prompt)                          # recompute: the whole sequence each step, no cache
        for _ in range(6):
            logits = model.run_with_hooks(seq, v.hooks(len(prompt) if v is vector else None))[0, -1]
            seq.append(int(logits.argmax()))
        assert cached == seq[len(prompt):], v.positions
    plain = minigpt.generate(model, [prompt], max_new_tokens=6, temperature=0.0).tokens[0]
    assert minigpt.generate(model, [prompt], max_new_tokens=6, temperature=0.0, fwd_hooks=every.hooks()).tokens[0] != plain


def test_direction_vector_refusals(model):
    d = np.zeros(CONFIG.n_embd, np.float32)
    with pytest.raises(ValueError, match="float32"):
        actadd.DirectionVector((1,), (d.astype(np.float64),), CONFIG.n_layer)
    with pytest.raises(ValueError, match="layers 0 to 3"):
        actadd.DirectionVector((4,), (d,), CONFIG.n_layer)
    with pytest.raises(ValueError, match="positions"):
        actadd.DirectionVector((1,), (d,), CONFIG.n_layer, positions="front")
    with pytest.raises(ValueError, match="not front/mid/back"):
        actadd.DirectionVector((1,), (d,), CONFIG.n_layer).hooks(alignment="mid")
    with pytest.raises(ValueError, match="has 2 tokens"):
        model.run_with_hooks([261, 5], actadd.DirectionVector((1,), (d,), CONFIG.n_layer, positions=(4,)).hooks())


# --- diagnostics -----------------------------------------------------------------------------------


def constructed_report(model, reading):
    """Three copies of one pair and its negation (plus and minus swapped), measured by the
    effectiveness of the token the pair's vector promotes most."""
    pair = ("the ab", "ab ab")
    pairs = [pair, pair, pair, pair[::-1]]
    prompt = " the abab the ab"
    alone = P.mean_of_pairs(model, TOK, [pair], 1.0, 1, reading=reading)
    ids = actadd.tokens_with_bos(TOK, prompt)
    plain = model(ids)[0, -1].astype(np.float64)
    steered = model.run_with_hooks(ids, alone.hooks(len(ids)))[0, -1].astype(np.float64)
    promoted = int(np.argmax((steered - np.log(np.exp(steered).sum())) - (plain - np.log(np.exp(plain).sum()))))
    metric = P.effectiveness_metric(model, TOK, prompt, [promoted])
    return P.pair_report(model, TOK, pairs, 1, 1.0, metric, reading=reading), promoted


@pytest.mark.parametrize("reading", ["actadd", "last"])
def test_the_negated_pair_is_flagged_and_leaving_it_out_moves_the_effect_its_way(model, reading):
    r, _ = constructed_report(model, reading)
    np.testing.assert_allclose(r.cosine, [[1, 1, 1, -1], [1, 1, 1, -1], [1, 1, 1, -1], [-1, -1, -1, 1]], atol=1e-6)
    np.testing.assert_allclose(r.cos_others, [1, 1, 1, -1], atol=1e-6)
    assert [bool(r.flags(i)) for i in range(4)] == [False, False, False, True]
    assert "points away" in r.flags(3)[0] and "opposite effect" in r.flags(3)[1]
    assert r.effect_mean > 0 and r.effect_alone[3] < 0 < r.effect_alone[0]
    assert r.effect_without[3] > r.effect_mean > r.effect_without[0]     # without the negation: 3 x d / 3 vs 2 d / 4
    assert r.role(3) == "cancels" and abs(r.loo_change[3]) > r.noise             # beyond the random vectors' sd
    # the copies move the effect toward zero, named only beyond that sd (the rule's own test is by hand below)
    assert {r.role(i) for i in range(3)} == {"carries" if abs(r.loo_change[0]) > r.noise else "noise"}
    assert all(c < 0 for c in r.loo_change[:3])
    np.testing.assert_allclose(r.norms, r.norms[0], rtol=1e-6)              # the same pair four times, up to sign
    np.testing.assert_allclose(r.mean_norm, r.norms[0] / 2, rtol=1e-5)      # (3d - d) / 4 = d / 2
    document = r.document()
    assert document["flagged"] == [3] and len(document["pairs"]) == 4


@pytest.mark.parametrize("reading", ["actadd", "last"])
def test_controls_are_seeded_random_vectors_with_the_means_size_at_every_position(model, reading):
    mean = P.mean_of_pairs(model, TOK, PAIRS[:2], 2.0, 1, reading=reading)
    a, b, c = (mean.random_like(1, np.random.default_rng([0, k])) for k in (0, 0, 1))

    def rows(v):
        return v.matrix(1) if reading == "actadd" else v.direction(1)[None]
    np.testing.assert_array_equal(rows(a), rows(b))
    assert not np.allclose(rows(a), rows(c))
    np.testing.assert_allclose(np.linalg.norm(rows(a), axis=-1), np.linalg.norm(rows(mean), axis=-1), rtol=1e-5)
    assert abs(float((rows(a) * rows(mean)).sum())) < 0.9 * float((rows(mean) ** 2).sum())   # not the mean again
    r, _ = constructed_report(model, reading)
    assert len(r.control_effects) == 8 and r.control["n"] == 8 and len(set(r.control_effects)) == 8


def test_the_report_sizes_vectors_by_the_metric_prompts_residual_stream(model):
    r, _ = constructed_report(model, "last")
    ids = actadd.tokens_with_bos(TOK, " the abab the ab")
    resid = model.run_with_cache(ids, names="blocks.1.hook_resid_pre")[1]["blocks.1.hook_resid_pre"][0, 1:]
    assert r.residual_norm == pytest.approx(float(np.sqrt((resid.astype(np.float64) ** 2).sum(-1).mean())), rel=1e-9)
    d = P.mean_of_pairs(model, TOK, [("the ab", "ab ab")], 1.0, 1, reading="last").direction(1)
    assert r.norms[0] == pytest.approx(float(np.linalg.norm(d.astype(np.float64))), rel=1e-6)


@pytest.mark.parametrize("reading", ["actadd", "last"])
def test_batched_effects_equal_one_vector_at_a_time(model, reading):
    """The report measures many vectors in one pass (a row each); each row's effect is what the
    vector alone gives, to float32 rounding."""
    cp = P.ContrastPairs.compute(model, TOK, PAIRS[:3], [1], reading)
    vectors = [cp.vector(2.0), cp.vector(2.0, [0]), cp.vector(-1.0, [1, 2]), cp.vector(2.0).random_like(1, np.random.default_rng(0))]
    metric = P.effectiveness_metric(model, TOK, " the abab the ab", TOK.encode(" the"))
    batched = metric.effects(vectors)
    single = [metric.effect(v) for v in vectors]
    np.testing.assert_allclose(batched, single, rtol=0, atol=1e-5)
    assert len(set(np.round(single, 6))) == 4


def test_logprob_metric_masks_actadd_matrices_only(model):
    texts = [("t", actadd.tokens_with_bos(TOK, " the abab the ab the ab"))]
    metric = P.logprob_metric(model, texts)
    matrix = P.mean_of_pairs(model, TOK, PAIRS[:2], 2.0, 1)
    direction = P.mean_of_pairs(model, TOK, PAIRS[:2], 2.0, 1, reading="last")
    from actadd.measure import next_token_logprobs

    ids = texts[0][1]
    base = next_token_logprobs(model, [ids])[0].astype(np.float64)
    for v, first in ((matrix, matrix.length), (direction, 0)):             # front matrix: its positions masked
        steered = next_token_logprobs(model, [ids], v)[0].astype(np.float64)
        assert metric.effect(v) == pytest.approx((steered - base)[first:].mean(), rel=1e-9, abs=1e-12)


# --- bad input -----------------------------------------------------------------------------------


def test_pairs_files_and_sets_that_are_refused(tmp_path, model):
    good = tmp_path / "good.tsv"
    good.write_text("# whale vs horse\nthe ab\tab\n\n weddings\t\n", encoding="utf-8")
    assert P.read_pairs(good) == [("the ab", "ab"), (" weddings", "")]
    bad = tmp_path / "bad.tsv"
    bad.write_text("the ab\tab\nno tab here\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"bad\.tsv:2: expected 'plus<TAB>minus' \(one tab\), got 0 tabs"):
        P.read_pairs(bad)
    bad.write_text("a\tb\tc\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"bad\.tsv:1: .*got 2 tabs"):
        P.read_pairs(bad)
    bad.write_text("# nothing\n\n", encoding="utf-8")
    with pytest.raises(ValueError, match="no pairs"):
        P.read_pairs(bad)
    with pytest.raises(ValueError, match="no such pairs file"):
        P.read_pairs(tmp_path / "missing.tsv")
    with pytest.raises(ValueError, match="empty set has no mean"):
        P.mean_of_pairs(model, TOK, [], 1.0, 1)
    with pytest.raises(ValueError, match="pair 1 is"):
        P.mean_of_pairs(model, TOK, [("a", "b"), ("a",)], 1.0, 1)
    with pytest.raises(ValueError, match="pair 0 .* has an empty prompt"):
        P.mean_of_pairs(model, TOK, [("the", "")], 1.0, 1, reading="mean")
    with pytest.raises(ValueError, match="reading='pca'"):
        P.mean_of_pairs(model, TOK, PAIRS, 1.0, 1, reading="pca")
    with pytest.raises(ValueError, match="expected 0 to 2 for the 'actadd' reading"):
        P.mean_of_pairs(model, TOK, PAIRS, 1.0, 3)


def test_pairs_of_very_different_lengths_are_padded_to_one_width_and_the_report_says_so(model):
    pairs = [("the ab the ab the ab the", "ab"), ("the", "ab")]
    cp = P.ContrastPairs.compute(model, TOK, pairs, [1])
    long = len(TOK.encode(pairs[0][0])) + 1
    assert {len(t) for t in cp.plus_tokens + cp.minus_tokens} == {long}
    report = cp.padding_report(TOK)
    assert report["width"] == long and report["pad_token"] == " "
    assert report["pads"] == [[long - 1 - len(TOK.encode(t)) for t in pair] for pair in pairs]
    assert report["pads"][0][0] == 0 and min(report["pads"][0][1], *report["pads"][1]) >= 8
    unpadded = P.ContrastPairs.compute(model, TOK, pairs, [1], padding="none").padding_report(TOK)
    assert unpadded["pads"] == [[0, 0], [0, 0]] and unpadded["pad_token"] is None


# --- the command line ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    from conftest import write_model_folder, write_tokenizer_files

    path = tmp_path_factory.mktemp("pairs-model")
    write_model_folder(path, CONFIG, seed=7)
    write_tokenizer_files(path, TOK)
    return path


def test_actadd_pairs_writes_the_report_and_the_mean_vector(folder, tmp_path, capsys):
    pairs = tmp_path / "p.tsv"
    pairs.write_text("the ab\tab ab\nthe ab\tab ab\nthe ab\tab ab\nab ab\tthe ab\n", encoding="utf-8")
    model = GPT2.from_pretrained(folder)
    expected, promoted = constructed_report(model, "actadd")
    token = TOK.decode([promoted])
    assert TOK.encode(token) == [promoted]
    out = tmp_path / "out"
    code = main(["pairs", "--model", str(folder), "--pairs", str(pairs), "--layer", "1", "--coeff", "1",
                 "--prompt", " the abab the ab", "--topic", token, "--out", str(out), "--save", str(tmp_path / "v.safetensors"),
                 "--no-progress"])
    assert code == 0
    document = json.loads((out / "summary.json").read_text())
    assert document["flagged"] == [3]
    assert document["effect_mean"] == pytest.approx(expected.effect_mean, rel=1e-6)
    assert (out / "summary.csv").read_text().count("\n") == 5 and (out / "pairs.png").stat().st_size > 0
    assert "points away" in capsys.readouterr().out
    saved = actadd.load(tmp_path / "v.safetensors", model)
    np.testing.assert_array_equal(saved.matrix(1), P.mean_of_pairs(model, TOK, P.read_pairs(pairs), 1.0, 1).matrix(1))


def test_actadd_steer_with_pairs_and_the_cli_refusals(folder, tmp_path, capsys):
    pairs = tmp_path / "p.tsv"
    pairs.write_text("the ab\tab\n the\tabab the\n", encoding="utf-8")
    code = main(["steer", "--model", str(folder), "--pairs", str(pairs), "--reading", "last", "--layer", "1,2",
                 "--coeff", "3", "--prompt", " the ab", "-n", "1", "--max-new-tokens", "4", "--json"])
    assert code == 0
    out = json.loads(capsys.readouterr().out)
    assert out["direction"]["layers"] == [1, 2] and out["direction"]["pairs"] == [["the ab", "ab"], [" the", "abab the"]]
    bad = tmp_path / "bad.tsv"
    bad.write_text("only one side\n", encoding="utf-8")
    assert main(["steer", "--model", str(folder), "--pairs", str(bad), "--layer", "1", "--coeff", "3",
                 "--prompt", " the ab"]) == 2
    assert "bad.tsv:1: expected 'plus<TAB>minus'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["steer", "--model", str(folder), "--pairs", str(pairs), "--plus", "x", "--layer", "1", "--coeff", "3",
              "--prompt", " the ab"])
    assert "either --pairs or --plus" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["pairs", "--model", str(folder), "--pairs", str(pairs), "--layer", "1", "--coeff", "1", "--out", str(tmp_path)])
    assert "give one metric" in capsys.readouterr().err


def test_actadd_pairs_on_a_corpus_measures_the_log_prob_shift(folder, tmp_path):
    pairs = tmp_path / "p.tsv"
    pairs.write_text("the ab\tab\n the\tabab the\n", encoding="utf-8")
    corpus = tmp_path / "c.txt"
    corpus.write_text("the abab the ab the. ab\nab the ab the abab the ab.", encoding="utf-8")
    out = tmp_path / "out"
    assert main(["pairs", "--model", str(folder), "--pairs", str(pairs), "--layer", "1", "--coeff", "2", "--corpus",
                 str(corpus), "--skip-short", "--controls", "2", "--out", str(out), "--no-progress"]) == 0
    document = json.loads((out / "summary.json").read_text())
    model = GPT2.from_pretrained(folder)
    from actadd import measure

    texts = [t for t in measure.read_corpus(corpus, TOK) if len(t[1]) >= P.mean_of_pairs(model, TOK, P.read_pairs(pairs), 2.0, 1).length]
    assert texts                                                   # the short sentence is left out, the rest measured
    expected = measure.logprob_shift(model, texts, P.mean_of_pairs(model, TOK, P.read_pairs(pairs), 2.0, 1)).summary()
    assert document["effect_mean"] == pytest.approx(expected["all"]["mean_logprob_diff"], rel=1e-6)
    assert document["metric"].startswith("mean log-prob shift of c.txt") and document["control"]["n"] == 2



def test_a_role_is_named_only_beyond_the_random_vectors_spread():
    """Before: "cancels" on a +0.004 leave-one-out change while random vectors of the mean's size
    varied by 0.21 (sd). Hand-made figures: the mean's effect +1.0, controls with sd 0.1."""
    def report(without, controls):
        n = len(without)
        return P.PairReport(pairs=[("a", "b")] * n, layer=1, coeff=1.0, reading="actadd", metric="m", padding={},
                            residual_norm=1.0, norms=[1.0] * n, mean_norm=1.0, cosine=np.eye(n), cos_mean=[1.0] * n,
                            cos_others=[1.0] * n, effect_mean=1.0, effect_alone=[1.0] * n, effect_without=without,
                            control_effects=controls)
    controls = [-0.1, 0.0, 0.1]                                     # sd 0.1 exactly
    r = report([1.004, 0.7, 1.3, 0.95], controls)
    assert r.noise == pytest.approx(0.1)
    assert [r.role(i) for i in range(4)] == ["noise", "carries", "cancels", "noise"]
    assert [r.role(i) for i in range(2)] == ["noise", "carries"]
    assert [report([1.004, 0.7], []).role(i) for i in range(2)] == ["-", "-"]   # no controls: nothing to tell by
    assert "roles are not named" in report([1.004, 0.7], []).table()
