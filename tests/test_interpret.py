"""Reading a vector (actadd.interpret): calibrate's coefficients against the norms they promise,
the logit lens against the final norm and unembedding applied by hand, for every family, and the
lens report against the model's own outputs."""

import json

import numpy as np
import pytest

import actadd
from actadd import interpret
from actadd import pairs as P
from actadd.cli import main
from actadd.measure import log_softmax
from conftest import handmade_tokenizer, random_model, write_model_folder, write_tokenizer_files
from minigpt import GPT2Config, Llama, LlamaConfig, OPT, OPTConfig

TOK = handmade_tokenizer()
CONFIG = GPT2Config(n_layer=3, n_head=2, n_embd=16, n_positions=32, vocab_size=262)
PAIRS = [("the ab", "ab"), (" the", "abab the")]
PROMPT = " the abab the ab the"


@pytest.fixture(scope="module")
def model():
    return random_model(CONFIG, seed=3)


# --- calibrate ---------------------------------------------------------------------------------


@pytest.mark.parametrize("reading", ["actadd", "last"])
def test_the_coefficient_for_a_ratio_makes_the_vector_that_ratio_of_the_residual_stream(model, reading):
    ratios = [0.25, 1.0, 3.0]
    result = interpret.calibrate(model, TOK, PROMPT, PAIRS, ratios=ratios, reading=reading)
    assert [r["layer"] for r in result.rows] == [0, 1, 2]
    ids = actadd.tokens_with_bos(TOK, PROMPT)
    _, cache = model.run_with_cache(ids)
    for row in result.rows:
        L = row["layer"]
        resid = cache[f"blocks.{L}.hook_resid_pre"][0, 1:].astype(np.float64)           # by hand: after BOS
        assert row["residual_norm"] == pytest.approx(np.sqrt((resid ** 2).sum(-1).mean()), rel=1e-12)
        for r in ratios:
            c = row[f"coeff_for_{r:g}x"]
            assert c * row["vector_norm"] == pytest.approx(r * row["residual_norm"], rel=1e-12)
            # and the vector made at that coefficient has that size (float32 rounding only)
            v = P.mean_of_pairs(model, TOK, PAIRS, c, L, reading=reading)
            rows = v.matrix(L)[1:] if reading == "actadd" else v.direction(L)[None]
            size = np.sqrt((rows.astype(np.float64) ** 2).sum(-1).mean())
            assert size == pytest.approx(r * row["residual_norm"], rel=1e-5)


def test_calibrate_refusals(model):
    with pytest.raises(ValueError, match="positive numbers"):
        interpret.calibrate(model, TOK, PROMPT, PAIRS, ratios=[0.5, -1])
    with pytest.raises(ValueError, match="the prompt is empty"):
        interpret.calibrate(model, TOK, "", PAIRS)


# --- the logit lens ------------------------------------------------------------------------------


def test_logit_lens_is_ln_final_then_the_unembedding_by_hand(model):
    x = np.random.default_rng(0).normal(0, 3, (2, 5, CONFIG.n_embd)).astype(np.float32)
    ours = model.logit_lens(x)
    xd = x.astype(np.float64)
    centred = xd - xd.mean(-1, keepdims=True)
    normed = centred / np.sqrt((centred ** 2).mean(-1, keepdims=True) + CONFIG.layer_norm_epsilon)
    by_hand = (normed * model.ln_f["weight"] + model.ln_f["bias"]) @ model.wte.T.astype(np.float64)
    assert ours.dtype == np.float32 and ours.shape == (2, 5, CONFIG.vocab_size)
    np.testing.assert_allclose(ours, by_hand, rtol=0, atol=1e-5 * (1 + np.abs(by_hand).max()))


def random_family(cls, config, expected_shapes, seed=0):
    rng = np.random.default_rng(seed)
    state = {n: rng.normal(1.0 if "norm" in n else 0.0, 0.3, shape).astype(np.float32)
             for n, shape in expected_shapes(config).items()}
    return cls(config, state)


def families():
    from minigpt.llama import expected_shapes as llama_shapes
    from minigpt.opt import expected_shapes as opt_shapes

    yield "gpt2", random_model(CONFIG, seed=3), None
    for pre in (True, False):
        config = OPTConfig(vocab_size=40, hidden_size=12, num_hidden_layers=2, num_attention_heads=3, ffn_dim=16,
                           max_position_embeddings=16, word_embed_proj_dim=6, do_layer_norm_before=pre)
        yield f"opt pre-LN={pre}", random_family(OPT, config, opt_shapes), None
    config = LlamaConfig(vocab_size=40, hidden_size=16, intermediate_size=24, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=2, max_position_embeddings=24)
    yield "llama", random_family(Llama, config, llama_shapes), None


@pytest.mark.parametrize("name", ["gpt2", "opt pre-LN=True", "opt pre-LN=False", "llama"])
def test_logit_lens_of_the_last_blocks_output_is_the_models_own_logits(name):
    model = {n: m for n, m, _ in families()}[name]
    ids = [1, 5, 7, 2, 9]
    logits, cache = model.run_with_cache(ids)
    last = cache[f"blocks.{model.config.n_layer - 1}.hook_resid_post"]
    np.testing.assert_array_equal(model.logit_lens(last), logits)
    np.testing.assert_array_equal(model(ids, stop_at_layer=model.config.n_layer), last)   # stop_at_layer, every family
    np.testing.assert_array_equal(model(ids, stop_at_layer=1), cache["blocks.1.hook_resid_pre"])
    with pytest.raises(ValueError, match="d_model"):
        model.logit_lens(last[0])


def test_the_lens_report_reads_the_vector_and_the_steered_layers_by_hand(model):
    vector = P.mean_of_pairs(model, TOK, PAIRS, 4.0, 1, reading="last")
    report = interpret.lens(model, TOK, vector, PROMPT, k=5)
    (row,) = report.vector
    logits = model.logit_lens(vector.direction(1)[None, None])[0, 0].astype(np.float64)
    assert [t for t, _ in row["top"]] == [TOK.token_str(int(i)) for i in np.argsort(-logits, kind="stable")[:5]]
    assert [t for t, _ in row["bottom"]] == [TOK.token_str(int(i)) for i in np.argsort(logits, kind="stable")[:5]]
    # readout layers: the vector's layer to the output; the last one is the model's next-token change
    assert report.layers == [1, 2, 3] and report.changes[-1]["hook_name"] == "blocks.2.hook_resid_post"
    ids = actadd.tokens_with_bos(TOK, PROMPT)
    plain = log_softmax(model(ids)[0, -1].astype(np.float64))
    steered = log_softmax(model.run_with_hooks(ids, vector.hooks(len(ids)))[0, -1].astype(np.float64))
    change = steered - plain
    top = np.argsort(-change, kind="stable")[:5]
    assert [t for t, _ in report.changes[-1]["promoted"]] == [TOK.token_str(int(i)) for i in top]
    np.testing.assert_allclose([c for _, c in report.changes[-1]["promoted"]], change[top], atol=1e-4)
    assert report.heat.shape == (3, 10)
    np.testing.assert_allclose(report.heat[-1, :5], change[top], atol=1e-4)


def test_lens_of_an_actadd_matrix_reads_its_rows_after_bos_and_unreached_layers_move_nothing(model):
    vector = actadd.steering_vector(model, actadd.x_vector(TOK, "the ab", "ab", 3.0, 2))
    report = interpret.lens(model, TOK, vector, PROMPT, k=3)
    assert [r["position"] for r in report.vector] == list(range(1, vector.length))
    # a front matrix shorter than the prompt leaves the last position of its own layer untouched
    assert report.changes[0]["layer"] == 2 and report.changes[0]["promoted"] == report.changes[0]["suppressed"] == []


def test_actadd_calibrate_and_lens_commands(tmp_path, capsys):
    folder = write_model_folder(tmp_path / "m", CONFIG, seed=3)
    write_tokenizer_files(folder, TOK)
    pairs = tmp_path / "p.tsv"
    pairs.write_text("the ab\tab\n the\tabab the\n", encoding="utf-8")
    assert main(["calibrate", "--model", str(folder), "--pairs", str(pairs), "--prompt", PROMPT, "--ratios", "0.5,2",
                 "--out", str(tmp_path / "cal")]) == 0
    document = json.loads((tmp_path / "cal" / "summary.json").read_text())
    expected = interpret.calibrate(random_model(CONFIG, seed=3), TOK, PROMPT, PAIRS, ratios=[0.5, 2])
    assert [r["coeff_for_2x"] for r in document["layers"]] == pytest.approx([r["coeff_for_2x"] for r in expected.rows])
    assert (tmp_path / "cal" / "calibrate.png").stat().st_size > 0
    assert main(["lens", "--model", str(folder), "--pairs", str(pairs), "--reading", "last", "--layer", "1",
                 "--coeff", "4", "--prompt", PROMPT, "-k", "3", "--out", str(tmp_path / "lens")]) == 0
    assert "logit lens; a heuristic" in capsys.readouterr().out
    document = json.loads((tmp_path / "lens" / "summary.json").read_text())
    assert document["heuristic"] == "logit lens" and len(document["changes"]) == 3
    assert (tmp_path / "lens" / "lens.png").stat().st_size > 0
    assert main(["calibrate", "--model", str(folder), "--plus", "the", "--prompt", "", "--out", str(tmp_path / "x")]) == 2
    assert "the prompt is empty" in capsys.readouterr().err
