"""ActAdd: parity with an independent implementation of the original semantics (PyTorch forward
pre-hooks on transformers' GPT-2), exact algebraic properties, cache invariance, the side-by-side
generation, saving and loading, the CLI, and every error."""

import json
import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from safetensors.numpy import save_file

import actadd
import minigpt
from actadd import ActivationAddition, SteeringVector, VectorFileError, steering_vector, x_vector
from actadd.cli import main
from conftest import (assert_close, configs, decode_with_cache, handmade_tokenizer, max_abs, random_model,
                      random_state_dict, record_parity, scaled_error, write_model_folder, write_tokenizer_files)
from minigpt import GPT2, GPT2Config

TOK = handmade_tokenizer()  # 262 tokens; BOS = 261; " " is one token
CONFIG = GPT2Config(n_layer=3, n_head=2, n_embd=16, n_positions=32, vocab_size=262)


@pytest.fixture(scope="module")
def model():
    return random_model(CONFIG, seed=7)


def steered_logits(model, prompt_ids, vector, **hook_kwargs):
    return model.run_with_hooks(prompt_ids, vector.hooks(**hook_kwargs))[0]


# --- parity with the original semantics, on transformers ------------------------------------


@st.composite
def steering_cases(draw):
    config = draw(configs(max_positions=24, min_positions=4))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    bos = config.vocab_size - 1
    additions = []
    for _ in range(draw(st.integers(1, 3))):
        n = draw(st.integers(1, min(6, config.n_positions)))
        tokens = [bos] + rng.integers(0, config.vocab_size, n - 1).tolist()
        additions.append((tokens, draw(st.floats(-10, 10, allow_nan=False)), draw(st.integers(0, config.n_layer - 1))))
    longest = max(len(t) for t, _, _ in additions)
    prompt_len = draw(st.integers(min(longest, config.n_positions), config.n_positions))
    prompt = [bos] + rng.integers(0, config.vocab_size, prompt_len - 1).tolist()
    return config, prompt, additions, draw(st.sampled_from(actadd.ALIGNMENTS)), draw(st.integers(0, 2**31 - 1))


@settings(max_examples=60)
@given(steering_cases())
def test_steered_logits_equal_the_original_semantics_on_transformers(reference, case):
    config, prompt, additions, alignment, seed = case
    with tempfile.TemporaryDirectory() as folder:
        reference.write_checkpoint(Path(folder), config, seed)
        theirs = reference.original_actadd_logits(Path(folder), prompt, additions, alignment)
        model = GPT2.from_pretrained(folder)
    vector = steering_vector(model, [ActivationAddition(tuple(t), c, L) for t, c, L in additions], alignment)
    ours = steered_logits(model, prompt, vector)
    err = assert_close(ours, theirs, f"steered logits ({alignment})")
    record_parity("actadd: steered logits vs original semantics", logits=max_abs(ours, theirs), scaled=err)


# --- exact properties ---------------------------------------------------------------------------


def test_coefficient_zero_and_plus_equal_minus_are_exactly_unsteered(model):
    prompt = actadd.tokens_with_bos(TOK, " the abab the")
    clean = model(prompt)[0]
    for vector in (steering_vector(model, x_vector(TOK, "the ab", "ab", 0.0, 1)),
                   steering_vector(model, x_vector(TOK, "the ab", "the ab", 4.0, 1))):
        np.testing.assert_array_equal(steered_logits(model, prompt, vector), clean)


def test_swapping_plus_minus_and_the_sign_changes_nothing(model):
    prompt = actadd.tokens_with_bos(TOK, " the abab the")
    a = steering_vector(model, x_vector(TOK, "the ab", " a", 3.0, 2))
    b = steering_vector(model, x_vector(TOK, " a", "the ab", -3.0, 2))
    np.testing.assert_array_equal(steered_logits(model, prompt, a), steered_logits(model, prompt, b))
    assert not np.allclose(steered_logits(model, prompt, a), model(prompt)[0])


def test_the_added_matrix_is_linear_in_the_coefficient_and_bos_cancels(model):
    one = steering_vector(model, x_vector(TOK, "the ab", "ab", 1.5, 1))
    two = steering_vector(model, x_vector(TOK, "the ab", "ab", 3.0, 1))
    np.testing.assert_array_equal(two.matrix(1), 2 * one.matrix(1))
    np.testing.assert_array_equal(one.matrix(1)[0], 0.0)       # [BOS, ...] - [BOS, ...] at position 0
    assert np.abs(one.matrix(1)[1:]).max() > 0


def test_a_single_addition_is_its_prompt_with_bos_times_the_coefficient(model):
    a = actadd.addition(TOK, " the", -2.0, 2)
    assert (a.tokens, a.coeff, a.layer, a.prompt) == ((TOK.bos_token_id, *TOK.encode(" the")), -2.0, 2, " the")
    (m,) = steering_vector(model, [a]).activations
    _, cache = model.run_with_cache(list(a.tokens))
    np.testing.assert_array_equal(m, -2.0 * cache["blocks.2.hook_resid_pre"][0])


def test_x_vector_pads_the_shorter_prompt_right_with_a_space_by_default():
    space, bos = TOK.encode(" ")[0], TOK.bos_token_id
    plus, minus = x_vector(TOK, "the ab", "", 2.0, 1)
    assert plus.tokens == (bos, *TOK.encode("the ab")) and minus.tokens == (bos,) + (space,) * (len(plus.tokens) - 1)
    assert (plus.coeff, minus.coeff, plus.layer) == (2.0, -2.0, 1)
    assert x_vector(TOK, "the ab", "", 2.0, 1, padding="endoftext")[1].tokens == (bos,) * len(plus.tokens)
    assert x_vector(TOK, "the ab", "", 2.0, 1, padding="none")[1].tokens == (bos,)
    with pytest.raises(ValueError, match="padding='left'"):
        x_vector(TOK, "a", "b", 1.0, 0, padding="left")


def test_activations_come_from_the_unsteered_model_at_every_layer(model):
    additions = [*x_vector(TOK, "the ab", "ab", 2.0, 0), *x_vector(TOK, " the", "b", -1.0, 2)]
    vector = steering_vector(model, additions)
    for a, m in zip(additions, vector.activations):
        _, cache = model.run_with_cache(list(a.tokens))
        np.testing.assert_array_equal(m, a.coeff * cache[f"blocks.{a.layer}.hook_resid_pre"][0])
        assert m.dtype == np.float32


def test_each_addition_is_placed_over_its_own_span():
    """Where `placements` puts a 3-row matrix (delta[batch, pos] += source[index]), by hand."""
    delta = np.zeros((2, 7, 1), np.float32)
    m = np.array([[1.0], [2.0], [3.0]], np.float32)
    positions = np.array([[0, 1, 2, 3, 4, 5, 6], [-1, 0, 1, 2, 3, 4, 5]])    # row 1 left-padded
    lengths = np.array([7, 6])
    for scale, alignment in ((1, "front"), (10, "back"), (100, "mid")):       # mid: from len//2 - n//2 = 2
        vector = SteeringVector((ActivationAddition((1, 2, 3), scale, 0),), (scale * m,), alignment)
        for batch, pos, source, index, _ in vector.placements(0, positions, lengths):
            delta[batch, pos] += source[index]
    assert delta[0, :, 0].tolist() == [1, 2, 3 + 100, 200, 300 + 10, 20, 30]
    assert delta[1, :, 0].tolist() == [0, 1, 2, 3 + 100, 10 + 200, 20 + 300, 30]


# --- cache invariance ---------------------------------------------------------------------------


@settings(max_examples=40)
@given(st.data())
def test_steered_decoding_with_the_cache_equals_recomputation(data):
    """Prompt lengths given (as actadd.generate does): every alignment, batches with padding."""
    model = random_model(CONFIG, seed=data.draw(st.integers(0, 99)))
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1)))
    alignment = data.draw(st.sampled_from(actadd.ALIGNMENTS))
    vector = steering_vector(model, [*x_vector(TOK, "the ab", " a", data.draw(st.floats(-8, 8)), data.draw(st.integers(0, 2)))],
                             alignment)
    lengths = data.draw(st.lists(st.integers(vector.length, 12), min_size=1, max_size=3))
    prompts = [[TOK.bos_token_id] + rng.integers(0, 261, n - 1).tolist() for n in lengths]
    steps = data.draw(st.integers(1, 6))
    cached, seqs = decode_with_cache(model, prompts, steps, rng, vector.hooks(prompt_lengths=lengths))
    for step, logits in enumerate(cached):
        for i, seq in enumerate(seqs):
            full = model.run_with_hooks(seq[:lengths[i] + step], vector.hooks(prompt_lengths=lengths[i]))[0, -1]
            assert scaled_error(logits[i], full) <= 1e-5, (step, i)


def test_original_mode_leaves_cached_decode_steps_alone(model):
    """Without prompt lengths, the pass starting at 0 is the prompt (as the original, which
    returns early on one-position passes); with front alignment that equals recomputation."""
    vector = steering_vector(model, x_vector(TOK, "the ab", " a", 5.0, 1))
    prompt = actadd.tokens_with_bos(TOK, " the abab the ab")
    cached, seqs = decode_with_cache(model, [prompt], 4, np.random.default_rng(0), vector.hooks())
    for step, logits in enumerate(cached):
        full = model.run_with_hooks(seqs[0][:len(prompt) + step], vector.hooks())[0, -1]
        assert scaled_error(logits[0], full) <= 1e-5


# --- side by side ----------------------------------------------------------------------------


def test_generate_samples_both_from_the_same_seed(model):
    vector = steering_vector(model, x_vector(TOK, "the ab", " a", 20.0, 0))
    result = actadd.generate(model, TOK, " the abab the ab", vector, n=3, seed=4, max_new_tokens=6)
    ids = actadd.tokens_with_bos(TOK, " the abab the ab")
    plain = minigpt.generate(model, [ids] * 3, TOK, max_new_tokens=6, seed=4, temperature=1.0, top_p=0.3,
                             freq_penalty=1.0)
    assert result.prompt_tokens == ids and result.unsteered == plain.texts and result.unsteered_tokens == plain.tokens
    assert result.steered != result.unsteered
    zero = actadd.generate(model, TOK, " the abab the ab", steering_vector(model, x_vector(TOK, "the ab", " a", 0.0, 0)),
                           n=3, seed=4, max_new_tokens=6)
    assert zero.steered == zero.unsteered == result.unsteered


def test_norm_report_measures_the_addition_against_the_prompt(model):
    vector = steering_vector(model, x_vector(TOK, "the ab", " a", 2.0, 1))
    (report,) = actadd.norm_report(model, TOK, vector, " the abab the")
    prompt = actadd.tokens_with_bos(TOK, " the abab the")
    _, cache = model.run_with_cache(prompt)
    n = vector.length
    np.testing.assert_allclose(report.steering[:n], np.linalg.norm(vector.matrix(1), axis=-1), rtol=1e-6)
    assert (report.steering[n:] == 0).all() and report.steering[0] == 0
    np.testing.assert_allclose(report.residual, np.linalg.norm(cache["blocks.1.hook_resid_pre"][0], axis=-1), rtol=1e-6)
    assert report.tokens == TOK.token_strs(prompt) and "ratio" in report.format()


# --- errors --------------------------------------------------------------------------------------


def test_bad_additions_and_prompts_are_refused(model):
    with pytest.raises(ValueError, match="coeff=nan for 'the': expected a finite number"):
        x_vector(TOK, "the", "ab", float("nan"), 1)
    with pytest.raises(ValueError, match="coeff=inf"):
        ActivationAddition((261,), float("inf"), 0)
    with pytest.raises(ValueError, match="layer=-1"):
        ActivationAddition((261,), 1.0, -1)
    with pytest.raises(ValueError, match="layer 3 for 'the': this model has blocks 0 to 2"):
        steering_vector(model, x_vector(TOK, "the", "ab", 1.0, 3))
    vector = steering_vector(model, x_vector(TOK, "the ab the ab", "", 1.0, 1))   # "" is padded with spaces
    assert vector.length == len(actadd.tokens_with_bos(TOK, "the ab the ab"))
    message = (r"the prompt of batch row 0 has 2 tokens \(with BOS\) but the steering matrix has "
               r"\d+ positions .*lengthen the prompt .* or shorten the steering prompts")
    with pytest.raises(ValueError, match=message):
        actadd.generate(model, TOK, "ab", vector)
    with pytest.raises(ValueError, match=message):
        model.run_with_hooks(actadd.tokens_with_bos(TOK, "ab"), vector.hooks())
    with pytest.raises(ValueError, match="alignment='side'"):
        vector.hooks(alignment="side")


# --- saving and loading -----------------------------------------------------------------------


def test_save_and_load_round_trip(model, tmp_path):
    vector = steering_vector(model, [*x_vector(TOK, "the ab", "", 2.5, 1), *x_vector(TOK, " a", "b", -1.0, 2)], "back")
    path = actadd.save(vector, tmp_path / "v.safetensors")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["v.safetensors"]  # no temporary file left
    loaded = actadd.load(path, model)
    assert loaded.additions == vector.additions and loaded.alignment == "back" and loaded.padding == "space"
    for a, b in zip(loaded.activations, vector.activations):
        np.testing.assert_array_equal(a, b)
    prompt = actadd.tokens_with_bos(TOK, " the abab the ab")
    np.testing.assert_array_equal(steered_logits(model, prompt, loaded), steered_logits(model, prompt, vector))
    manifest = json.loads(__import__("safetensors").safe_open(str(path), "numpy").metadata()["actadd"])
    assert manifest["additions"][0]["hook_name"] == "blocks.1.hook_resid_pre"
    assert manifest["model"]["config"]["n_layer"] == 3 and len(manifest["model"]["weights_sha256"]) == 64


def test_vectors_do_not_load_onto_another_model(model, tmp_path):
    path = actadd.save(steering_vector(model, x_vector(TOK, "the ab", "", 2.5, 1)), tmp_path / "v.safetensors")
    other_weights = GPT2(CONFIG, random_state_dict(CONFIG, seed=99))
    with pytest.raises(VectorFileError, match="made on weights with SHA-256 .* pass allow_other_weights=True"):
        actadd.load(path, other_weights)
    assert actadd.load(path, other_weights, allow_other_weights=True).additions
    other_config = random_model(GPT2Config(n_layer=4, n_head=2, n_embd=16, n_positions=32, vocab_size=262))
    with pytest.raises(VectorFileError, match="made for a model with config"):
        actadd.load(path, other_config, allow_other_weights=True)


def _manifest(path):
    from safetensors import safe_open

    with safe_open(str(path), "numpy") as f:
        return json.loads(f.metadata()["actadd"]), {k: f.get_tensor(k) for k in f.keys()}


@pytest.mark.parametrize("corrupt,match", [
    (lambda p, m, t: p.write_bytes(b"not a safetensors file"), "not a readable safetensors file"),
    (lambda p, m, t: save_file(t, p), "no actadd manifest"),
    (lambda p, m, t: save_file(t, p, metadata={"actadd": "{"}), "actadd manifest: not valid JSON .* at column 2"),
    (lambda p, m, t: save_file(t, p, metadata={"actadd": json.dumps({**m, "format_version": 9})}), "version 9"),
    (lambda p, m, t: save_file({}, p, metadata={"actadd": json.dumps(m)}),
     r"additions\[0\].tensor: 'addition.0' is not a tensor of the file"),
    (lambda p, m, t: save_file({k: v[:, :3] for k, v in t.items()}, p, metadata={"actadd": json.dumps(m)}),
     r"tensor addition.0 is float32 \(\d+, 3\); expected float32 \(\d+, 16\)"),
    (lambda p, m, t: save_file(t, p, metadata={"actadd": json.dumps(
        {**m, "additions": [{**a, "hook_name": "blocks.1.hook_resid_post"} for a in m["additions"]]})}),
     "is for hook 'blocks.1.hook_resid_post'"),
    (lambda p, m, t: save_file(t, p, metadata={"actadd": json.dumps({**m, "alignment": "side"})}),
     r'alignment: "side" \(expected one of front, mid, back\)'),
])
def test_malformed_vector_files_are_refused(model, tmp_path, corrupt, match):
    good = actadd.save(steering_vector(model, x_vector(TOK, "the ab", "", 2.5, 1)), tmp_path / "good.safetensors")
    manifest, tensors = _manifest(good)
    bad = tmp_path / "bad.safetensors"
    corrupt(bad, manifest, tensors)
    with pytest.raises(VectorFileError, match=match):
        actadd.load(bad, model)
    with pytest.raises(VectorFileError, match="no such file"):
        actadd.load(tmp_path / "missing.safetensors", model)


# --- the CLI -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("actadd-model")
    write_model_folder(folder, CONFIG, seed=7)
    return write_tokenizer_files(folder, TOK)


def test_steer_prints_both_columns_and_json_matches_generate(folder, capsys, tmp_path):
    argv = ["steer", "--model", str(folder), "--prompt", " the abab the", "--plus", "the ab", "--minus", " a",
            "--layer", "1", "--coeff", "6", "-n", "2", "--seed", "3", "--max-new-tokens", "5"]
    assert main(argv + ["--save", str(tmp_path / "v.safetensors")]) == 0
    out, err = capsys.readouterr()
    assert "unsteered #0 (rng [3, 0])" in out and "| steered #1 (rng [3, 1])" in out and "|steering|" in out
    assert f"saved {tmp_path / 'v.safetensors'}" in err                    # before: nothing said
    assert main(argv + ["--save", str(tmp_path / "v")]) == 2                 # before: safetensors, unsaid
    assert "end the name in .safetensors" in capsys.readouterr().err and not (tmp_path / "v").exists()
    assert main([*argv[:-6], "--samples", "2", *argv[-4:]]) == 0             # -n's long name
    assert capsys.readouterr().out == out
    assert main(argv + ["--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    model, tok = minigpt.load(folder)
    expected = actadd.generate(model, tok, " the abab the", steering_vector(model, x_vector(tok, "the ab", " a", 6.0, 1)),
                               n=2, seed=3, max_new_tokens=5)
    assert printed["unsteered"] == expected.unsteered and printed["steered"] == expected.steered
    assert printed["sampling"] == {"temperature": 1.0, "top_p": 0.3, "freq_penalty": 1.0, "max_new_tokens": 5}
    assert main(["steer", "--model", str(folder), "--prompt", " the abab the", "--vector", str(tmp_path / "v.safetensors"),
                 "-n", "2", "--seed", "3", "--max-new-tokens", "5", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["steered"] == expected.steered


def test_steer_errors(folder, capsys):
    base = ["steer", "--model", str(folder), "--prompt", "ab"]
    assert main(base + ["--plus", "the ab the", "--minus", "", "--layer", "1", "--coeff", "1"]) == 2
    assert "lengthen the prompt" in capsys.readouterr().err
    assert main(base + ["--plus", "a", "--minus", "", "--layer", "9", "--coeff", "1"]) == 2
    assert "this model has blocks 0 to 2" in capsys.readouterr().err
    assert main(base + ["--vector", str(folder / "config.json")]) == 2
    assert "not a readable safetensors file" in capsys.readouterr().err
    for argv in (base + ["--plus", "a"], base + ["--vector", "v", "--plus", "a"]):
        with pytest.raises(SystemExit) as info:
            main(argv)
        assert info.value.code == 2


def test_the_step_table_points_at_the_code_it_names():
    """Each `name`, actadd/steering.py:N in the step table of docs/actadd.md: line N defines (or,
    for the product and the sum, contains) what the row says."""
    import re

    root = Path(__file__).resolve().parent.parent
    source = (root / "actadd" / "steering.py").read_text().splitlines()
    table = root.joinpath("docs", "actadd.md").read_text().split("| step | the method | where |", 1)[1].split("```", 1)[0]
    rows = [line for line in table.splitlines() if re.match(r"\| \d \|", line)]
    cells = [re.split(r"(?<!\\)\|", r) for r in rows]                  # cells; escaped \| stays inside
    assert [int(c[1]) for c in cells] == list(range(1, 10))
    expected_text = {"the product": "a.coeff * resid_pre[", "the sum": "+= value",
                     "decode steps": "return None"}
    checked = 0
    for row in cells:
        where = row[3]
        for name, line in re.findall(r"`(?:SteeringVector\.)?(\w+)`, actadd/steering\.py:(\d+)", where):
            assert re.match(rf"\s*def {name}\b", source[int(line) - 1]), (name, line, source[int(line) - 1])
            checked += 1
        for label, needle in expected_text.items():
            for line in re.findall(rf"{label}[^|]*?actadd/steering\.py:(\d+)", where):
                assert needle in source[int(line) - 1], (label, line)
                checked += 1
    assert checked == 12  # nine functions, the product, the sum, the decode-step return
