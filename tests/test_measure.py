"""The paper's measurements: each against a direct computation (transformers with hooks where
it matters), their mathematical properties, sweeps against single runs, bad input, the CLI."""

import json
import math

import numpy as np
import pytest

import actadd
import minigpt
from actadd import measure, steering_vector, x_vector
from actadd.cli import main
from conftest import handmade_tokenizer, random_model, write_model_folder, write_tokenizer_files
from minigpt import GPT2, GPT2Config

TOK = handmade_tokenizer()
CONFIG = GPT2Config(n_layer=7, n_head=2, n_embd=16, n_positions=40, vocab_size=262)
TEXT = ("the ab, the abab. a b the; ab ba the bab! Is the ab a b? The end of the ab is near, the abab said. "
        "Then the ba came, and the ab was gone.")


@pytest.fixture(scope="module")
def model():
    return random_model(CONFIG, seed=11)


@pytest.fixture(scope="module")
def texts():
    return [("one", actadd.tokens_with_bos(TOK, s)) for s in ("the abab the ab ba", " a b the ab")] + \
           [("two", actadd.tokens_with_bos(TOK, "the ba ab the abab the b a"))]


def log_softmax64(x):
    x = np.asarray(x, dtype=np.float64)
    x = x - x.max(-1, keepdims=True)
    return x - np.log(np.exp(x).sum(-1, keepdims=True))


def direct_logprobs(model, ids, vector=None):
    """Log-probs of each next token, one text at a time, no batching (float64 softmax)."""
    hooks = vector.hooks(prompt_lengths=len(ids)) if vector is not None else ()
    lp = log_softmax64(model.run_with_hooks(ids, hooks)[0])
    return lp[np.arange(len(ids) - 1), ids[1:]]


# --- log-probs -------------------------------------------------------------------------------


def test_logprob_shift_equals_transformers_with_hooks(reference, tmp_path, texts):
    """Per-token log-probs and the perplexity ratio exp(-mean diff) over the unmasked tokens,
    with the reference computing the steered logits by the original semantics on transformers."""
    reference.write_checkpoint(tmp_path, CONFIG, seed=5)
    model = GPT2.from_pretrained(tmp_path)
    vector = steering_vector(model, x_vector(TOK, "the ab", " a", 4.0, 3))
    shift = measure.logprob_shift(model, texts, vector)
    import torch

    diffs = []
    for (group, ids), ours_plain, ours_steered, masked in zip(texts, shift.unsteered, shift.steered, shift.masked):
        hf = reference.transformers.GPT2LMHeadModel.from_pretrained(tmp_path, dtype=torch.float32).eval()
        with torch.no_grad():
            plain = log_softmax64(hf(torch.tensor([ids])).logits[0].numpy())[np.arange(len(ids) - 1), ids[1:]]
        additions = [(list(a.tokens), a.coeff, a.layer) for a in vector.additions]
        steered = log_softmax64(reference.original_actadd_logits(tmp_path, ids, additions))[np.arange(len(ids) - 1), ids[1:]]
        np.testing.assert_allclose(ours_plain, plain, atol=2e-5)
        np.testing.assert_allclose(ours_steered, steered, atol=2e-5)
        assert masked.tolist() == [True] * vector.length + [False] * (len(ids) - 1 - vector.length)
        diffs.append((steered - plain)[~masked])
    mean = np.concatenate(diffs).mean()
    summary = shift.summary()["all"]
    assert summary["tokens"] == sum(len(d) for d in diffs)
    assert math.isclose(summary["mean_logprob_diff"], mean, abs_tol=2e-5)
    assert math.isclose(summary["perplexity_ratio"], math.exp(-mean), rel_tol=2e-5)


def test_batched_logprobs_equal_one_text_at_a_time(model, texts):
    vector = steering_vector(model, x_vector(TOK, "the ab", "", 3.0, 2))
    for batch_tokens in (1, 16, 4096):
        plain = measure.next_token_logprobs(model, [ids for _, ids in texts], batch_tokens=batch_tokens)
        steered = measure.next_token_logprobs(model, [ids for _, ids in texts], vector, batch_tokens=batch_tokens)
        for (_, ids), p, s in zip(texts, plain, steered):
            np.testing.assert_allclose(p, direct_logprobs(model, ids), atol=1e-5)
            np.testing.assert_allclose(s, direct_logprobs(model, ids, vector), atol=1e-5)


def test_coefficient_zero_gives_ratio_one_and_masking_removes_exactly_n(model, texts):
    zero = steering_vector(model, x_vector(TOK, "the ab", " a", 0.0, 1))
    summary = measure.logprob_shift(model, texts, zero).summary()
    assert summary["all"]["mean_logprob_diff"] == 0.0 and summary["all"]["perplexity_ratio"] == 1.0
    unmasked = measure.logprob_shift(model, texts, zero, mask=False).summary()["all"]["tokens"]
    assert unmasked - summary["all"]["tokens"] == len(texts) * zero.length
    assert [summary[g]["texts"] for g in ("one", "two")] == [2, 1]
    back = steering_vector(model, x_vector(TOK, "the ab", " a", 1.0, 1), alignment="back")
    masked = measure.logprob_shift(model, texts, back).masked
    for (_, ids), m in zip(texts, masked):   # the last n positions; the very last makes no prediction
        assert m.tolist() == [False] * (len(ids) - back.length) + [True] * (back.length - 1)


# --- next token --------------------------------------------------------------------------------


def test_next_token_kl_effectiveness_and_disruption(model):
    vector = steering_vector(model, x_vector(TOK, "the ab", " a", 6.0, 1))
    nt = measure.next_token(model, TOK, " the abab the", vector)
    ids = actadd.tokens_with_bos(TOK, " the abab the")
    p = np.exp(log_softmax64(model(ids)[0, -1]))
    q = np.exp(log_softmax64(model.run_with_hooks(ids, vector.hooks())[0, -1]))
    np.testing.assert_allclose(nt.unsteered, p, rtol=1e-6)
    np.testing.assert_allclose(nt.steered, q, rtol=1e-6)
    kl = float((q * np.log(q / p)).sum())
    assert math.isclose(nt.kl, kl, rel_tol=1e-6) and math.isclose(nt.contributions.sum(), nt.kl, rel_tol=1e-12)
    top = nt.top(3)
    assert [t for t, *_ in top] == np.argsort(-(q * np.log(q / p)))[:3].tolist()
    assert all(math.isclose(r, qq / pp) for _, _, qq, pp, r in top)
    a = [5, 17, 200]
    assert math.isclose(nt.effectiveness(a), math.log(q[a].sum()) - math.log(p[a].sum()), rel_tol=1e-5)
    # The KL splits exactly into the disruption and the KL of the set indicator.
    q, p = nt.steered, nt.unsteered
    qa, pa = q[a].sum(), p[a].sum()
    set_kl = qa * math.log(qa / pa) + (1 - qa) * math.log((1 - qa) / (1 - pa))
    assert math.isclose(nt.disruption(a) + set_kl, nt.kl, rel_tol=1e-6)
    zero = measure.next_token(model, TOK, " the abab the", steering_vector(model, x_vector(TOK, "the ab", " a", 0.0, 1)))
    assert zero.kl == 0.0 and zero.effectiveness(a) == 0.0 and zero.disruption(a) == 0.0
    with pytest.raises(ValueError, match="token set"):
        nt.effectiveness([])


# --- samples and prompting ---------------------------------------------------------------------


def test_topic_counts_count_whole_words_in_the_side_by_side_samples(model):
    vector = steering_vector(model, x_vector(TOK, "the ab", " a", 8.0, 0))
    counts = measure.topic_counts(model, TOK, " the abab the ab", vector, [" ab", "THE"], seeds=[0, 1], n=3,
                                  max_new_tokens=8)   # surrounding spaces do not matter
    import re

    word = re.compile(r"\b(ab|the)\b", re.IGNORECASE)
    for entry in counts["per_seed"]:
        r = actadd.generate(model, TOK, " the abab the ab", vector, n=3, seed=entry["seed"], max_new_tokens=8)
        assert entry["unsteered"] == sum(len(word.findall(t)) for t in r.unsteered)
        assert entry["steered"] == sum(len(word.findall(t)) for t in r.steered)
    assert counts["completions"] == 6
    assert counts["steered_per_completion"] == sum(e["steered"] for e in counts["per_seed"]) / 6


def test_prompting_vs_injection_against_direct_computation(model, texts):
    out = measure.prompting_vs_injection(model, TOK, "the ab", texts, coeff=3.0, layer=2)
    vector = steering_vector(model, x_vector(TOK, "the ab", "", 3.0, 2))
    phrase = TOK.encode("the ab")
    n = vector.length
    for group in ("one", "two"):
        base, pro, inj = [], [], []
        for g, ids in texts:
            if g != group:
                continue
            base.append(direct_logprobs(model, ids)[n:])
            prompted = [ids[0]] + phrase + ids[1:]
            pro.append(direct_logprobs(model, prompted)[len(phrase):][n:])
            inj.append(direct_logprobs(model, ids, vector)[n:])
        b, p, i = (np.concatenate(x) for x in (base, pro, inj))
        assert out[group]["tokens"] == b.size
        assert math.isclose(out[group]["prompting_perplexity_ratio"], math.exp(-(p - b).mean()), rel_tol=1e-4)
        assert math.isclose(out[group]["injection_perplexity_ratio"], math.exp(-(i - b).mean()), rel_tol=1e-4)


# --- sweeps ----------------------------------------------------------------------------------


def test_sweep_cells_equal_the_single_runs(model, texts):
    rows = measure.sweep(model, TOK, "the ab", " a", [0, 4], [-1.0, 2.5], ["front", "back"], texts=texts,
                         prompt=" the abab the", topic_tokens=[5, 17], progress=False)
    assert [(r["layer"], r["coeff"], r["alignment"]) for r in rows] == [
        (L, c, a) for L in (0, 4) for c in (-1.0, 2.5) for a in ("front", "back")]
    for row in rows:
        vector = steering_vector(model, x_vector(TOK, "the ab", " a", row["coeff"], row["layer"]), alignment=row["alignment"])
        single = measure.logprob_shift(model, texts, vector).summary()["all"]
        for key in ("tokens", "texts"):
            assert row[key] == single[key]
        assert math.isclose(row["mean_logprob_diff"], single["mean_logprob_diff"], rel_tol=1e-9, abs_tol=1e-12)
        per_group = measure.logprob_shift(model, texts, vector).summary()
        for group in ("one", "two"):                  # each file of a corpus, as `actadd logprobs` gives it
            assert row[f"{group} tokens"] == per_group[group]["tokens"]
            assert math.isclose(row[f"{group} perplexity_ratio"], per_group[group]["perplexity_ratio"], rel_tol=1e-9)
        nt = measure.next_token(model, TOK, " the abab the", vector)
        # The cells' next-token passes are one batch (row_hooks): equal to float32 rounding.
        assert math.isclose(row["kl"], nt.kl, rel_tol=1e-5, abs_tol=1e-9)
        assert math.isclose(row["effectiveness"], nt.effectiveness([5, 17]), rel_tol=1e-5, abs_tol=1e-9)


def test_sweep_outputs_are_complete_files(model, texts, tmp_path):
    rows = measure.sweep(model, TOK, "the ab", " a", [1], [0.0, 1.0], texts=texts, progress=False)
    written = measure.write_sweep(rows, tmp_path / "out" / "sweep")
    assert [p.name for p in written] == ["sweep.csv", "sweep.json", "sweep.png"]
    assert json.loads((tmp_path / "out" / "sweep.json").read_text()) == rows
    csv = (tmp_path / "out" / "sweep.csv").read_text().splitlines()
    assert csv[0].startswith("layer,coeff,alignment") and len(csv) == 3
    assert (tmp_path / "out" / "sweep.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["sweep.csv", "sweep.json", "sweep.png"]


def test_sweep_without_matplotlib_says_how_to_get_plots(model, texts, tmp_path, monkeypatch, capsys):
    import sys

    monkeypatch.setitem(sys.modules, "matplotlib", None)
    rows = measure.sweep(model, TOK, "the ab", " a", [1], [1.0], texts=texts, progress=False)
    assert [p.name for p in measure.write_sweep(rows, tmp_path / "s")] == ["s.csv", "s.json"]
    said = capsys.readouterr()
    assert "pip install 'minigpt-actadd[plot]'" in said.err and said.out == ""    # stdout stays --json's


# --- reproduction -------------------------------------------------------------------------------


def test_reproduce_computes_the_mean_next_token_loss_as_the_reference(reference, tmp_path):
    """The code path of `actadd reproduce`, on a random model with the original semantics on
    transformers as the reference (no gpt2-xl here, so no claim about its numbers)."""
    config = GPT2Config(n_layer=7, n_head=2, n_embd=16, n_positions=16, vocab_size=50257)
    reference.write_checkpoint(tmp_path, config, seed=2)
    tok = minigpt.Tokenizer.from_pretrained(_gpt2_tokenizer_or_skip())
    model = GPT2.from_pretrained(tmp_path)
    ours = measure.reproduce(model, tok)
    assert ours["tokens"] == [50256, 40, 5465, 345, 780]
    assert ours["additions"] == [[50256, 18565, 220], [50256, 39, 378]]   # 'Love ' and 'Hate', no padding
    ids = ours["tokens"]
    import torch

    hf = reference.transformers.GPT2LMHeadModel.from_pretrained(tmp_path, dtype=torch.float32).eval()
    with torch.no_grad():
        plain = hf(torch.tensor([ids]), labels=torch.tensor([ids])).loss.item()
    steered_logits = reference.original_actadd_logits(tmp_path, ids, [(ours["additions"][0], 2.0, 6), (ours["additions"][1], -2.0, 6)])
    steered = -log_softmax64(steered_logits)[np.arange(4), ids[1:]].mean()
    assert math.isclose(ours["unsteered_loss"], plain, rel_tol=1e-5)
    assert math.isclose(ours["steered_loss"], steered, rel_tol=1e-5)


def _gpt2_tokenizer_or_skip():
    import os

    folder = os.environ.get("MINIGPT_GPT2_TOKENIZER")
    if not folder:
        pytest.skip("MINIGPT_GPT2_TOKENIZER is not set (the reproduction uses GPT-2's tokens)")
    return folder


# --- bad input --------------------------------------------------------------------------------


def test_bad_corpora_and_texts_are_refused(model, tmp_path, texts):
    empty = tmp_path / "empty.txt"
    empty.write_text("   \n")
    with pytest.raises(ValueError, match="empty corpus"):
        measure.read_corpus(empty, TOK)
    binary = tmp_path / "binary.txt"
    binary.write_bytes(b"\xff\xfe\x00text")
    with pytest.raises(ValueError, match=r"binary.txt:1: not UTF-8 text \(byte 0x"):
        measure.read_corpus(binary, TOK)
    with pytest.raises(ValueError, match="missing.txt: no such file"):
        measure.read_corpus(tmp_path / "missing.txt", TOK)
    tsv = tmp_path / "labels.txt"
    tsv.write_text("good text\t1\nno label here\n")
    with pytest.raises(ValueError, match=r"labels.txt:2: expected 'text<TAB>label'"):
        measure.read_corpus(tsv, TOK, split="tsv")
    vector = steering_vector(model, x_vector(TOK, "the ab the ab", "", 1.0, 1))
    short = texts + [("short", actadd.tokens_with_bos(TOK, "ab"))]
    with pytest.raises(ValueError, match=r"text 3 of 'short' has 2 tokens .* \(1 such texts\); pass skip_short=True"):
        measure.logprob_shift(model, short, vector)
    assert measure.logprob_shift(model, short, vector, skip_short=True).summary()["all"]["texts"] == 3
    long = [("long", [TOK.bos_token_id] * 41)]
    with pytest.raises(ValueError, match="more than n_positions=40 .*split='chunks'"):
        measure.logprob_shift(model, long, vector)
    with pytest.raises(ValueError, match="layer 7 in the grid: this model has blocks 0 to 6"):
        measure.sweep(model, TOK, "a", "", [0, 7], [1.0], texts=texts)
    with pytest.raises(ValueError, match="the grid is empty"):
        measure.sweep(model, TOK, "a", "", [], [1.0], texts=texts)
    with pytest.raises(ValueError, match="coefficient nan in the grid"):
        measure.sweep(model, TOK, "a", "", [0], [float("nan")], texts=texts)
    with pytest.raises(ValueError, match="alignment 'side' in the grid"):
        measure.sweep(model, TOK, "a", "", [0], [1.0], ["side"], texts=texts)
    with pytest.raises(ValueError, match="lengthen the prompt"):
        measure.sweep(model, TOK, "the ab the ab", "", [0], [1.0], prompt="ab")


def test_corpus_splits(tmp_path):
    folder = tmp_path / "books"
    folder.mkdir()
    (folder / "a.txt").write_text("The ab. The  ba!\nIs it?  <|endoftext|>")
    (folder / "b.txt").write_text("one line\nsecond line\n")
    sentences = measure.read_corpus(folder, TOK)
    assert [(g, TOK.decode(ids[1:])) for g, ids in sentences] == [
        ("a.txt", "The ab."), ("a.txt", "The ba!"), ("a.txt", "Is it?"), ("a.txt", "<|endoftext|>"),
        ("b.txt", "one line second line")]
    assert TOK.eos_token_id not in sentences[3][1][1:]   # the literal text, not the special token
    assert all(ids[0] == TOK.bos_token_id for _, ids in sentences)
    lines = measure.read_corpus(folder / "b.txt", TOK, split="lines")
    assert [TOK.decode(ids[1:]) for _, ids in lines] == ["one line", "second line"]
    chunks = measure.read_corpus(folder / "a.txt", TOK, split="chunks", chunk_tokens=4)
    assert all(len(ids) <= 5 for _, ids in chunks)
    assert TOK.decode([t for _, ids in chunks for t in ids[1:]]) == "The ab. The  ba!\nIs it?  <|endoftext|>"


# --- the CLI -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("measure-model")
    write_model_folder(folder, CONFIG, seed=11)
    write_tokenizer_files(folder, TOK)
    (folder / "corpus.txt").write_text(TEXT)
    return folder


def test_cli_measurements_match_the_library(folder, capsys, tmp_path):
    model, tok = minigpt.load(folder)
    vector = steering_vector(model, x_vector(tok, "the ab", " a", 3.0, 2))
    steer = ["--model", str(folder), "--plus", "the ab", "--minus", " a", "--layer", "2", "--coeff", "3"]
    assert main(["logprobs", *steer, "--corpus", str(folder / "corpus.txt"), "--skip-short", "--json"]) == 0
    texts = measure.read_corpus(folder / "corpus.txt", tok)
    assert json.loads(capsys.readouterr().out) == measure.logprob_shift(model, texts, vector, skip_short=True).summary()
    assert main(["nexttoken", *steer, "--prompt", " the abab the", "-k", "2", "--topic", " the", "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    nt = measure.next_token(model, tok, " the abab the", vector)
    assert math.isclose(printed["kl"], nt.kl) and [r["id"] for r in printed["top"]] == [t for t, *_ in nt.top(2)]
    assert math.isclose(printed["effectiveness"], nt.effectiveness(tok.encode(" the")))
    assert main(["sweep", "--model", str(folder), "--plus", "the ab", "--minus", " a", "--layers", "0-1,3",
                 "--coeffs=-1,2", "--corpus", str(folder / "corpus.txt"), "--skip-short", "--out",
                 str(tmp_path / "sw"), "--no-progress", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [(r["layer"], r["coeff"]) for r in rows] == [(0, -1.0), (0, 2.0), (1, -1.0), (1, 2.0), (3, -1.0), (3, 2.0)]
    assert json.loads((tmp_path / "sw" / "sweep.json").read_text()) == rows     # --out is a folder, as everywhere
    with pytest.raises(SystemExit) as refused:                                # a file name, as before 0.3
        main(["sweep", "--model", str(folder), "--plus", "a", "--layers", "0", "--coeffs=1", "--corpus",
              str(folder / "corpus.txt"), "--out", str(tmp_path / "old.csv"), "--no-progress"])
    assert refused.value.code == 2 and "a folder now, as for every command" in capsys.readouterr().err
    assert main(["reproduce", "--model", str(folder), "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    ours = measure.reproduce(model, tok)
    assert (printed["unsteered_loss"], printed["steered_loss"]) == (ours["unsteered_loss"], ours["steered_loss"])
    assert printed["original_gpt2_xl"] == {"unsteered": 4.819790363311768, "steered": 7.975721836090088}


def test_cli_sweep_with_an_invalid_layer_writes_nothing(folder, capsys, tmp_path):
    out = tmp_path / "nothing"
    assert main(["sweep", "--model", str(folder), "--plus", "a", "--layers", "0,9", "--coeffs=1",
                 "--corpus", str(folder / "corpus.txt"), "--out", str(out / "sw"), "--no-progress"]) == 2
    assert "layer 9 in the grid" in capsys.readouterr().err
    assert not out.exists()
    assert main(["logprobs", "--model", str(folder), "--plus", "a", "--layer", "0", "--coeff", "1",
                 "--corpus", str(tmp_path / "missing.txt")]) == 2
    assert "no such file" in capsys.readouterr().err


def test_picked_logprobs_are_the_floats_of_the_full_log_softmax():
    rng = np.random.default_rng(0)
    logits = (rng.standard_normal((3, 9, 500)) * 8).astype(np.float32)
    tokens = rng.integers(0, 500, (3, 9))
    full = np.take_along_axis(measure.log_softmax(logits[:, :-1]), tokens[:, 1:, None], axis=-1)[..., 0]
    got = measure.picked_logprobs(logits, tokens)
    assert got.dtype == np.float32 and got.shape == (3, 8)
    np.testing.assert_array_equal(got, full)
