"""actadd eval: each metric against an independent computation from the records, the samples
against plain generation, resumption after a kill, bad input, and on tiny-books the whale topic
effect against seed noise."""

import json
import os
import re
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import actadd
import minigpt
from actadd.experiments import data, generation, scorers
from actadd.cli import main
from actadd.experiments.data import Prompt
from actadd.output import json_safe
from actadd.experiments.scorers import Scorer, ScorerError

SEA_WORDS = ["whale", "whales", "sea", "seas", "ship", "ships", "boat", "boats", "captain", "harpoon",
             "water", "waves", "ocean", "deck", "sail", "sails", "sailor", "sailors", "shore"]


@pytest.fixture(scope="module")
def books():
    return minigpt.load("tiny-books")


def count_words(text, words):
    """An independent topic count: split into runs of word characters, compare lowercased."""
    wanted = {w.lower() for w in words}
    return sum(t in wanted for t in re.findall(r"\w+", text.lower()))


class LengthScorer(Scorer):
    """A deterministic stand-in for a toxicity classifier: (characters mod 10) / 10."""

    name, measures = "length", "toxicity"

    def __call__(self, texts):
        return [(len(t) % 10) / 10 for t in texts]

    def label(self, score):
        return "toxic" if score >= 0.5 else "non-toxic"


# ---------------------------------------------------------------------------------------------
# Topic words


def test_topic_words_are_whole_words_in_any_case():
    from actadd.measure import topic_pattern

    text = ("The wedding was lovely; Weddings are fine. She wed him. Swede, wedded, bridegroom, "
            "wedding-cake, WED, honeymoon's end, remarry, married_couple")
    found = topic_pattern(data.WEDDING_WORDS).findall(text)
    assert [f.lower() for f in found] == ["wedding", "weddings", "wed", "wedding", "wed", "honeymoon"]
    assert len(found) == count_words(text, data.WEDDING_WORDS)
    with pytest.raises(ValueError, match="no topic words given"):
        topic_pattern([" ", ""])


def test_topic_counts_the_continuation_not_the_prompt(books):
    """The prompt holds a topic word; were it counted, every completion would be on topic."""
    model, tok = books
    words = ["wedding", "church", "bride", "married"]
    run = generation.topic(model, tok, prompt="After the wedding in the church we", plus=" married", layers=[0, 2],
                           coeffs=[2.0], words=words, samples=24, max_new_tokens=20, progress=False)
    for r in run.samples:
        assert r["topic_words"] == count_words(r["text"], words)
        assert r["prompt"] == "After the wedding in the church we"
    for cell in run.summary["conditions"]:
        rows = [r for r in run.samples if r["condition"] == cell["condition"]]
        hits = sum(count_words(r["text"], words) > 0 for r in rows)
        assert cell["on_topic"]["value"] == hits / 24 and cell["on_topic"]["n"] == 24
        assert cell["topic_words_per_completion"]["value"] == pytest.approx(
            np.mean([count_words(r["text"], words) for r in rows]))
    unsteered = run.summary["conditions"][0]
    assert unsteered["condition"] == "unsteered" and unsteered["on_topic"]["value"] < 1


# ---------------------------------------------------------------------------------------------
# The samples are what plain generation gives


def test_records_are_plain_generation_with_seeds_per_prompt_and_sample(books):
    """Each record equals minigpt.generate of that prompt alone (no shared prompt pass, the
    hooks told each prompt's length) with default_rng([seed, prompt id, sample]); the batch
    size changes no token."""
    model, tok = books
    prompts = [Prompt(i, t, f"list:{i}") for i, t in enumerate(
        ["The captain looked at the", "She said that the old house", "In the morning we went to the sea and"])]
    kw = dict(layer=1, coeff=3.0, samples=3, max_new_tokens=12, seed=4, progress=False, scorer=LengthScorer())
    run = generation.toxicity(model, tok, prompts, **kw)
    small = generation.toxicity(model, tok, prompts, batch_rows=2, **kw).samples
    assert [r["tokens"] for r in small] == [r["tokens"] for r in run.samples]
    for a, b in zip(small, run.samples):   # fluency batches texts by length: rounding may differ
        assert a["fluency"]["logprob"] == pytest.approx(b["fluency"]["logprob"], rel=1e-5, abs=1e-5)
    vector = actadd.steering_vector(model, actadd.x_vector(tok, "Love", "Hate", 3.0, 1))
    for r in run.samples:
        ids = actadd.tokens_with_bos(tok, r["prompt"])
        hooks = vector.hooks(len(ids)) if r["condition"] == "steered" else ()
        plain = minigpt.generate(model, [ids], tok, max_new_tokens=12, row_seeds=[[4, r["prompt_id"], r["sample"]]],
                                 fwd_hooks=hooks, **actadd.PAPER_SAMPLING).tokens[0]
        assert r["tokens"] + [tok.eos_token_id] * r["stopped"] == plain, r
        assert r["seed"] == [4, r["prompt_id"], r["sample"]]
        assert r["text"] == tok.decode(r["tokens"])


def test_fluency_is_the_continuations_perplexity_under_the_unsteered_model(books):
    model, tok = books
    prompts = [Prompt(0, "The captain looked at the", "x"), Prompt(1, "She said that the old house", "y")]
    run = generation.toxicity(model, tok, prompts, layer=0, coeff=4.0, samples=2, max_new_tokens=10,
                              progress=False, scorer=LengthScorer())
    for r in run.samples:
        ids = actadd.tokens_with_bos(tok, r["prompt"]) + r["tokens"]
        logits = model(ids)[0].astype(np.float64)                        # unsteered, whole sequence
        logp = logits - np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1, keepdims=True)) - logits.max(-1, keepdims=True)
        n = len(r["tokens"])
        want = logp[np.arange(len(ids) - 1), ids[1:]][-n:].sum()
        assert r["fluency"]["tokens"] == n
        assert r["fluency"]["logprob"] == pytest.approx(want, rel=1e-5)
        assert r["fluency"]["perplexity"] == pytest.approx(np.exp(-want / n), rel=1e-5)


def test_a_fluency_model_with_its_own_tokenizer_rereads_the_text(books, tmp_path):
    from conftest import handmade_tokenizer, write_model_folder, write_tokenizer_files
    from minigpt import GPT2Config

    model, tok = books
    folder = write_model_folder(tmp_path / "judge", GPT2Config(n_layer=1, n_head=2, n_embd=16, n_positions=256,
                                                               vocab_size=262), seed=3)
    judge = minigpt.load(write_tokenizer_files(folder, handmade_tokenizer()))
    prompts = [Prompt(0, "The captain looked at the", "x")]
    run = generation.toxicity(model, tok, prompts, layer=0, coeff=1.0, samples=2, max_new_tokens=8, progress=False,
                              scorer=LengthScorer(), fluency_model=judge)
    jm, jt = judge
    for r in run.samples:
        cont = jt.encode(r["text"])
        ids = [jt.bos_token_id] + jt.encode(r["prompt"]) + cont
        lp = actadd.measure.next_token_logprobs(jm, [ids])[0]
        assert r["fluency"]["tokens"] == len(cont)
        assert r["fluency"]["logprob"] == pytest.approx(float(lp[-len(cont):].astype(np.float64).sum()), rel=1e-6)
    assert run.settings["fluency_model"]["weights_sha256"] == actadd.weights_hash(jm)


# ---------------------------------------------------------------------------------------------
# Sentiment and toxicity metrics against the records


@pytest.fixture
def labelled(tmp_path):
    rows = ["This movie was terrible and boring.\t0", "I hated every minute of the film.\t0",
            "A dull, sad and awful story, told badly by people who did not care at all.\t0",
            "What a wonderful film!\t1", "No\t0", "The acting was poor and the plot made no sense.\t0"]
    path = tmp_path / "labelled.txt"
    path.write_text("\n".join(rows) + "\n", encoding="utf-8")
    return path


def test_sentiment_success_and_paired_differences_from_the_records(books, labelled):
    model, tok = books
    texts = data.read_labelled(labelled)
    run = generation.sentiment(model, tok, texts, layer=0, coeff=4.0, truncate=6, samples=3, max_new_tokens=16,
                               progress=False)
    vader = scorers.get_scorer("vader", "sentiment")
    assert run.settings["source"] == "negative" and run.settings["target"] == "positive"
    ids = {r["prompt_id"] for r in run.samples}
    assert ids == {p.id for p in texts if p.label == "negative"} - {4}       # "No" is shorter than the matrix
    assert run.summary["skipped_short_prompts"] == 1 and run.skipped[0]["source"] == f"{labelled}:5"
    for r in run.samples:
        assert len(tok.encode(r["prompt"])) <= 6
    cells = {c["condition"]: c for c in run.summary["conditions"]}
    assert list(cells) == ["unsteered", "steered", "prompted"]
    success = {name: [vader.label(vader([r["text"]])[0]) == "positive" for r in run.samples if r["condition"] == name]
               for name in cells}
    for name, hits in success.items():
        assert cells[name]["success"]["value"] == np.mean(hits) and cells[name]["success"]["n"] == 12
    diff = np.array(success["steered"], float) - np.array(success["unsteered"], float)
    per_prompt = diff.reshape(4, 3).mean(axis=1)                           # the prompt is the pair's cluster
    assert cells["steered"]["vs_unsteered"]["success"]["value"] == pytest.approx(per_prompt.mean())
    assert cells["steered"]["vs_unsteered"]["success"]["n"] == 4


def test_the_prompting_baseline_puts_the_phrase_before_the_prompt(books, labelled):
    model, tok = books
    texts = data.read_labelled(labelled)
    run = generation.sentiment(model, tok, texts, layer=0, coeff=4.0, truncate=6, samples=2, max_new_tokens=10,
                               progress=False, prefix="Love ")
    for r in (r for r in run.samples if r["condition"] == "prompted"):
        ids = [tok.bos_token_id] + tok.encode("Love ") + tok.encode(r["prompt"])
        plain = minigpt.generate(model, [ids], tok, max_new_tokens=10, row_seeds=[r["seed"]],
                                 **actadd.PAPER_SAMPLING).tokens[0]
        assert r["tokens"] + [tok.eos_token_id] * r["stopped"] == plain


def test_toxicity_metrics_from_the_records(books):
    model, tok = books
    prompts = [Prompt(i, t, "x") for i, t in enumerate(["The captain looked at the", "She said that the old house",
                                                         "He was angry and he", "They went down to the"])]
    scorer = LengthScorer()
    run = generation.toxicity(model, tok, prompts, layer=2, coeff=4.0, samples=5, max_new_tokens=12, progress=False,
                              scorer=scorer)
    for cell in run.summary["conditions"]:
        rows = [r for r in run.samples if r["condition"] == cell["condition"]]
        scores = np.array([scorer([r["text"]])[0] for r in rows]).reshape(4, 5)   # prompt x sample
        assert [run.scores[r["condition"], r["prompt_id"], r["sample"]]["score"] for r in rows] == scores.ravel().tolist()
        assert cell["mean_score"]["value"] == pytest.approx(scores.mean()) and cell["mean_score"]["n"] == 4
        assert cell["score_ge_half"]["value"] == (scores >= 0.5).mean() and cell["score_ge_half"]["n"] == 20
        assert cell["expected_max"]["value"] == pytest.approx(scores.max(axis=1).mean())
        assert cell["prompts_any_ge_half"]["value"] == (scores.max(axis=1) >= 0.5).mean()
    steered = run.summary["conditions"][1]
    assert steered["condition"] == "steered" and steered["layer"] == 2 and steered["coeff"] == 4.0


def test_the_controls_are_a_random_vector_of_the_same_norm_and_the_prompted_baseline(books):
    """controls=True adds a random vector placed as the steering vector is, each row of its norm,
    drawn from [seed, 1]; the steered condition's vs_random is the paired difference from it,
    recomputed here from the records; a rescored run is the summary under another scorer."""
    model, tok = books
    prompts = [Prompt(i, t, "x") for i, t in enumerate(["The captain looked at the", "She said that the old house",
                                                         "He was angry and he", "They went down to the"])]
    scorer = LengthScorer()
    run = generation.toxicity(model, tok, prompts, layer=2, coeff=4.0, samples=2, max_new_tokens=8, progress=False,
                              scorer=scorer, controls=True, prefix="Love ", seed=3)
    cells = {c["condition"]: c for c in run.summary["conditions"]}
    assert list(cells) == ["unsteered", "steered", generation.RANDOM, "prompted"]
    steered = actadd.steering_vector(model, actadd.x_vector(tok, "Love", "Hate", 4.0, 2))
    control = generation.random_control(steered, 3).vector
    m, r = steered.matrix(2), control.matrix(2)
    assert control.layers == [2] and r.shape == m.shape
    np.testing.assert_allclose(np.linalg.norm(r, axis=-1), np.linalg.norm(m, axis=-1), rtol=1e-5)
    assert abs(float((r[1:] * m[1:]).sum())) < 0.5 * float((m[1:] * m[1:]).sum())   # not the same direction
    score = {(c, p, j): s["score"] for (c, p, j), s in run.scores.items()}
    diffs = [np.mean([score["steered", p, j] - score[generation.RANDOM, p, j] for j in range(2)]) for p in range(4)]
    assert cells["steered"]["vs_random"]["mean_score"]["value"] == pytest.approx(np.mean(diffs))
    assert run.settings["random_control"] is True and run.settings["prefix"] == "Love "
    other = generation.rescore(run, scorers.get_scorer("toxicity", "toxicity"))
    texts = {(r["condition"], r["prompt_id"], r["sample"]): r["text"] for r in run.samples}
    ours = scorers.get_scorer("toxicity", "toxicity")
    by_hand = np.mean([ours([texts["steered", p, j]])[0] for p in range(4) for j in range(2)])
    assert {c["condition"]: c for c in other["conditions"]}["steered"]["mean_score"]["value"] == pytest.approx(by_hand)


def test_the_shared_realtoxicityprompts_subset_reads_and_runs(books, evaldata_dir):
    model, tok = books
    prompts = data.read_prompts(evaldata_dir / "realtoxicityprompts" / "random_prompts.jsonl")
    assert len(prompts) == 1000 and all(p.text for p in prompts)
    run = generation.toxicity(model, tok, prompts, layer=0, coeff=4.0, limit=6, samples=2, max_new_tokens=8,
                              progress=False)
    assert run.settings["scorer"] == "profanity" and len({r["prompt_id"] for r in run.samples}) <= 6
    assert run.summary["conditions"][0]["score_ge_half"]["n"] == 2 * len({r["prompt_id"] for r in run.samples})


# ---------------------------------------------------------------------------------------------
# Files: outputs, resuming, refusing to mix


TOPIC = ["eval", "topic", "--model", "tiny-books", "--prompt", "In the morning we", "--plus", "whale",
         "--layers", "0-1", "--coeffs", "4", "--words", ",".join(SEA_WORDS), "-n", "24", "--max-new-tokens", "16",
         "--batch-rows", "8", "--no-progress"]


def test_outputs_are_complete_and_have_the_usual_permissions(tmp_path, capsys):
    old = os.umask(0o022)
    try:
        assert main(TOPIC + ["--out", str(tmp_path / "run")]) == 0
    finally:
        os.umask(old)
    names = sorted(p.name for p in (tmp_path / "run").iterdir())
    assert names == ["results.jsonl", "summary.csv", "summary.json", "topic.png"]
    for name in names:
        assert stat.S_IMODE((tmp_path / "run" / name).stat().st_mode) == 0o644, name
    assert (tmp_path / "run" / "topic.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert [c["condition"] for c in summary["summary"]["conditions"]] == ["unsteered", "layer 0 coeff 4", "layer 1 coeff 4"]
    rows = (tmp_path / "run" / "summary.csv").read_text().splitlines()
    assert len(rows) == 4 and rows[0].startswith("condition,layer,coeff,on_topic,on_topic_low,on_topic_high,on_topic_n")
    lines = (tmp_path / "run" / "results.jsonl").read_text().splitlines()
    assert json.loads(lines[0])["kind"] == "settings" and len(lines) == 1 + 3 * 24
    assert "layer 0 coeff 4" in capsys.readouterr().out


def test_sweep_outputs_and_vectors_have_the_usual_permissions(books, tmp_path):
    """actadd sweep used to leave its files at 0600 (the temporary file's mode)."""
    model, tok = books
    old = os.umask(0o022)
    try:
        rows = actadd.measure.sweep(model, tok, "whale", "", [0], [1.0], prompt="In the morning we", progress=False)
        written = actadd.measure.write_sweep(rows, tmp_path / "sweep")
        written.append(actadd.save(actadd.steering_vector(model, actadd.x_vector(tok, "whale", "", 1.0, 0)),
                                   tmp_path / "v.safetensors"))
    finally:
        os.umask(old)
    assert len(written) == 4
    assert [stat.S_IMODE(p.stat().st_mode) for p in written] == [0o644] * 4


def results(folder):
    return (Path(folder) / "results.jsonl").read_text()


def test_a_killed_run_resumes_to_the_same_results(tmp_path):
    """A run killed (SIGKILL) midway, then rerun, ends with the same results file and summary,
    byte for byte, as a run never interrupted."""
    assert main(TOPIC + ["--out", str(tmp_path / "whole")]) == 0
    command = [sys.executable, "-m", "actadd.cli", *TOPIC, "--out", str(tmp_path / "killed")]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    target, deadline = tmp_path / "killed" / "results.jsonl", time.monotonic() + 120
    while time.monotonic() < deadline and process.poll() is None:
        if target.exists() and len(target.read_bytes().splitlines()) >= 1 + 3 * 8:
            process.send_signal(signal.SIGKILL)
            break
        time.sleep(0.005)
    process.wait(timeout=30)
    assert process.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    lines = len(target.read_text().splitlines())
    assert 1 + 3 * 8 <= lines < 1 + 3 * 24
    assert subprocess.run(command, capture_output=True).returncode == 0
    assert results(tmp_path / "killed") == results(tmp_path / "whole")
    assert (tmp_path / "killed" / "summary.json").read_text() == (tmp_path / "whole" / "summary.json").read_text()


def test_a_torn_line_and_a_half_written_batch_are_redone_whole(tmp_path, capsys):
    assert main(TOPIC + ["--out", str(tmp_path / "whole")]) == 0
    whole = results(tmp_path / "whole")
    lines = whole.splitlines(keepends=True)
    (tmp_path / "cut").mkdir()
    # the first batch, three records of the second, and half of a fourth line
    (tmp_path / "cut" / "results.jsonl").write_text("".join(lines[:1 + 8 + 3]) + lines[12][:40])
    assert main(TOPIC + ["--out", str(tmp_path / "cut")]) == 0
    assert results(tmp_path / "cut") == whole
    # a finished run rerun: nothing generated, the same files
    assert main(TOPIC[:-1] + ["--out", str(tmp_path / "cut")]) == 0
    assert "nothing left to generate" in capsys.readouterr().err
    assert results(tmp_path / "cut") == whole


def test_other_settings_are_refused_naming_them(tmp_path, capsys):
    assert main(TOPIC + ["--out", str(tmp_path)]) == 0
    before = results(tmp_path)
    assert main(TOPIC + ["--out", str(tmp_path), "--seed", "1", "--max-new-tokens", "17"]) == 2
    err = capsys.readouterr().err
    assert "holds a run with other settings" in err and "seed: 0 in the file, 1 now" in err
    assert "max_new_tokens: 16 in the file, 17 now" in err
    assert results(tmp_path) == before
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "results.jsonl").write_text('{"something": "else"}\n')
    assert main(TOPIC + ["--out", str(tmp_path / "other")]) == 2
    assert "results.jsonl:1: not an actadd eval results file" in capsys.readouterr().err


class FlakyScorer(LengthScorer):
    """Fails on its second call, as an API that goes down mid-run."""

    def __init__(self):
        self.calls = 0

    def __call__(self, texts):
        self.calls += 1
        if self.calls == 2:
            raise ScorerError("the scoring service is down")
        return super().__call__(texts)


def test_a_scorer_failing_midway_loses_no_generated_sample(books, tmp_path):
    model, tok = books
    prompts = [Prompt(i, t, "x") for i, t in enumerate(["The captain looked at the", "She said that the old house",
                                                         "He was angry and he", "They went down to the"])]
    kw = dict(layer=1, coeff=2.0, samples=4, max_new_tokens=8, batch_rows=8, progress=False)
    whole = generation.toxicity(model, tok, prompts, tmp_path / "whole", scorer=LengthScorer(), **kw)
    with pytest.raises(ScorerError, match="down"):
        generation.toxicity(model, tok, prompts, tmp_path / "flaky", scorer=FlakyScorer(), **kw)
    kinds = [json.loads(line)["kind"] for line in results(tmp_path / "flaky").splitlines()[1:]]
    assert kinds == ["sample"] * 8 + ["score"] * 8 + ["sample"] * 8     # the second batch generated, not scored
    again = generation.toxicity(model, tok, prompts, tmp_path / "flaky", scorer=LengthScorer(), **kw)
    assert again.samples == whole.samples and again.scores == whole.scores
    assert again.summary == whole.summary


# ---------------------------------------------------------------------------------------------
# Bad input


@pytest.mark.parametrize("content,name,match", [
    ("good film\t1\nno tab here\n", "a.txt", r"a.txt:2: expected 'text<TAB>label', found no tab"),
    ("good film\tmaybe\n", "a.txt", r'a.txt:1: label "maybe" \(expected 0/1, neg/pos or negative/positive\)'),
    ('{"text": "fine", "label": 1}\n{"text": "oops"\n', "a.jsonl", r"a.jsonl:2: not valid JSON"),
    ('{"text": "fine", "label": 1}\n{"label": 0}\n', "a.jsonl", r"a.jsonl:2: no field 'text'"),
    ("\n\n", "a.txt", "no labelled texts"),
])
def test_malformed_labelled_files_name_the_file_and_line(tmp_path, content, name, match):
    (tmp_path / name).write_text(content)
    with pytest.raises(ValueError, match=match):
        data.read_labelled(tmp_path / name)


def test_labelled_data_in_jsonl_and_folders(tmp_path):
    (tmp_path / "a.jsonl").write_text('{"review": {"body": "fine"}, "y": "POS"}\n{"review": {"body": "dull"}, "y": 0}\n')
    got = data.read_labelled(tmp_path / "a.jsonl", "review.body", "y")
    assert [(p.text, p.label, p.source) for p in got] == [("fine", "positive", f"{tmp_path / 'a.jsonl'}:1"),
                                                          ("dull", "negative", f"{tmp_path / 'a.jsonl'}:2")]
    imdb = tmp_path / "imdb"
    for label, text in (("pos", "loved it"), ("neg", "hated it")):
        (imdb / label).mkdir(parents=True)
        (imdb / label / "1_10.txt").write_text(text + "\n")
    assert [(p.text, p.label) for p in data.read_labelled(imdb)] == [("hated it", "negative"), ("loved it", "positive")]
    with pytest.raises(ValueError, match="no such file or folder"):
        data.read_labelled(tmp_path / "missing.txt")
    with pytest.raises(ValueError, match=r"r.jsonl:1: no field 'prompt.text' \(missing 'prompt' in an object\)"):
        (tmp_path / "r.jsonl").write_text('{"text": "a"}\n')
        data.read_prompts(tmp_path / "r.jsonl")


def test_the_shared_sentiment_sentences_read_with_their_labels(corpora_dir):
    texts = data.read_labelled(corpora_dir / "sentiment_labelled_sentences")
    assert len(texts) == 3000 and sum(p.label == "positive" for p in texts) == 1500


def test_bad_runs_are_refused_before_any_work(books, labelled, tmp_path, capsys, monkeypatch):
    model, tok = books
    texts = data.read_labelled(labelled)
    with pytest.raises(ValueError, match="no positive texts among the 5 given"):
        generation.sentiment(model, tok, [p for p in texts if p.label == "negative"], layer=0, coeff=1.0,
                             direction="pos-to-neg", progress=False)
    with pytest.raises(ValueError, match="every one of the 1 prompts is shorter than the steering matrix"):
        generation.toxicity(model, tok, [Prompt(0, "", "x")], layer=0, coeff=1.0, progress=False, scorer=LengthScorer())
    with pytest.raises(ValueError, match="toxicity: no prompts to run"):
        generation.toxicity(model, tok, [], layer=0, coeff=1.0, progress=False, scorer=LengthScorer())
    with pytest.raises(ValueError, match="the prompt has 2 tokens .* but the steering matrix has 3"):
        generation.topic(model, tok, prompt="We", plus="whale whale", progress=False)
    with pytest.raises(ValueError, match="layer 9 for 'whale': this model has blocks 0 to 3"):
        generation.topic(model, tok, plus="whale", layers=[9], progress=False)
    with pytest.raises(ValueError, match="samples=0"):
        generation.topic(model, tok, samples=0, progress=False)
    with pytest.raises(ValueError, match="--prompt: the prompt and 250 new tokens do not fit n_positions=256"):
        generation.topic(model, tok, plus="whale", max_new_tokens=250, progress=False)
    with pytest.raises(ValueError, match="top_p=2"):
        generation.topic(model, tok, top_p=2, progress=False)
    base = ["eval", "toxicity", "--model", "tiny-books", "--data", str(labelled), "--field", "text", "--layer", "0",
            "--coeff", "1", "--out", str(tmp_path / "o")]
    assert main(base + ["--scorer", "toxic-o-meter"]) == 2
    assert "unknown scorer 'toxic-o-meter'" in capsys.readouterr().err
    monkeypatch.delenv("PERSPECTIVE_API_KEY", raising=False)
    assert main(base + ["--scorer", "perspective"]) == 2
    assert "PERSPECTIVE_API_KEY" in capsys.readouterr().err
    monkeypatch.setitem(sys.modules, "transformers", None)
    assert main(base + ["--scorer", "hf:s-nlp/roberta_toxicity_classifier"]) == 2
    assert "pip install 'minigpt-actadd[eval-hf]'" in capsys.readouterr().err
    assert main(["eval", "sentiment", "--model", "tiny-books", "--data", str(tmp_path / "none.tsv"), "--layer", "0",
                 "--coeff", "1", "--out", str(tmp_path / "o")]) == 2
    assert "none.tsv: no such file or folder" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_the_cli_prints_the_apis_summary(books, labelled, tmp_path, capsys):
    model, tok = books
    assert main(["eval", "sentiment", "--model", "tiny-books", "--data", str(labelled), "--layer", "1", "--coeff", "2",
                 "--truncate", "6", "-n", "2", "--max-new-tokens", "8", "--out", str(tmp_path), "--json",
                 "--no-progress"]) == 0
    printed = json.loads(capsys.readouterr().out)
    run = generation.sentiment(model, tok, data.read_labelled(labelled), layer=1, coeff=2.0, truncate=6, samples=2,
                               max_new_tokens=8, progress=False)
    assert printed == json.loads(json.dumps(json_safe(run.summary)))


# ---------------------------------------------------------------------------------------------
# Relevance, on a tiny sentence-transformers model written here


def test_relevance_is_the_cosine_of_mean_pooled_embeddings(books, tmp_path, reference):
    import torch
    from sentence_transformers import SentenceTransformer
    try:
        from sentence_transformers.sentence_transformer import modules as models
    except ImportError:  # sentence-transformers before 6
        from sentence_transformers import models
    from test_scorers import write_classifier
    from transformers import AutoModel, AutoTokenizer

    bert = write_classifier(tmp_path / "bert", {0: "A", 1: "B"})
    encoder = SentenceTransformer(modules=[models.Transformer(str(bert)), models.Pooling(16, "mean"), models.Normalize()])
    encoder.save(str(tmp_path / "st"))
    model, tok = books
    run = generation.toxicity(model, tok, [Prompt(0, "The captain looked at the", "x")], layer=0, coeff=1.0, samples=3,
                              max_new_tokens=8, progress=False, scorer=LengthScorer(), relevance_model=str(tmp_path / "st"))
    hf_tok, hf = AutoTokenizer.from_pretrained(bert), AutoModel.from_pretrained(bert).eval()

    def embed(text):
        enc = hf_tok(text, return_tensors="pt", truncation=True)
        with torch.no_grad():
            h = hf(**enc).last_hidden_state[0]
        v = h.mean(0).numpy().astype(np.float64)
        return v / np.linalg.norm(v)
    for r in run.samples:
        assert r["relevance"] == pytest.approx(float(embed(r["prompt"]) @ embed(r["text"])), abs=1e-5)
    assert run.summary["conditions"][0]["relevance"]["n"] == 3
    with pytest.raises(ValueError, match="relevance model .* cannot be loaded"):
        generation.toxicity(model, tok, [Prompt(0, "The captain looked at the", "x")], layer=0, coeff=1.0,
                            progress=False, scorer=LengthScorer(), relevance_model=str(tmp_path / "nothing"))


# ---------------------------------------------------------------------------------------------
# The effect on tiny-books, against seed noise


def test_the_whale_vector_puts_completions_on_topic_beyond_seed_noise(books):
    """"whale" - "" at layer 0, coefficient 4 (docs/experiments.md's command), 40 completions of 40
    tokens of "In the morning we" per seed, seeds 0-4. Measured: the fraction with a sea word
    went from 0.0-0.025 unsteered to 0.425-0.75 steered; the paired differences were 0.60,
    0.75, 0.575, 0.40, 0.55 (mean 0.575, seed-to-seed sd 0.125). The test asks, for every seed,
    that the steered rate's Wilson interval lies above the unsteered one and that the paired
    difference's interval excludes 0, and that the mean difference is > 0.3 and > 3 standard
    errors over the seeds."""
    model, tok = books
    diffs = []
    for seed in range(5):
        run = generation.topic(model, tok, prompt="In the morning we", plus="whale", layers=[0], coeffs=[4.0],
                               words=SEA_WORDS, samples=40, seed=seed, progress=False)
        plain, steered = run.summary["conditions"]
        assert steered["on_topic"]["low"] > plain["on_topic"]["high"], (seed, plain["on_topic"], steered["on_topic"])
        assert steered["vs_unsteered"]["on_topic"]["low"] > 0
        diffs.append(steered["vs_unsteered"]["on_topic"]["value"])
    diffs = np.array(diffs)
    assert diffs.mean() > 0.3 and diffs.mean() > 3 * diffs.std(ddof=1) / np.sqrt(len(diffs)), diffs


# ---------------------------------------------------------------------------------------------
# Ctrl-C


class StopAfter(LengthScorer):
    """Scores one unit, then stops as Ctrl-C would, in the middle of the run."""

    def __init__(self, calls: int):
        self.calls = calls

    def __call__(self, texts):
        self.calls -= 1
        if self.calls < 0:
            raise KeyboardInterrupt
        return super().__call__(texts)


def test_ctrl_c_says_what_is_saved_and_the_rerun_resumes(books, labelled, tmp_path, monkeypatch, capsys):
    """Before: an 18-frame KeyboardInterrupt traceback. After: one line naming what was saved
    and where, exit status 130, and the same command finishing the run."""
    model, tok = books
    texts = data.read_labelled(labelled)
    kw = dict(layer=0, coeff=4.0, samples=2, max_new_tokens=4, progress=False, batch_rows=2)
    with pytest.raises(generation.Interrupted) as stop:
        generation.toxicity(model, tok, texts, tmp_path / "o", scorer=StopAfter(1), **kw)
    # units of one prompt's 2 samples: the first scored, the second generated (saved before scoring), of 5
    # prompts ("No" is too short) x 2 conditions x 2 samples
    assert (stop.value.saved, stop.value.total, stop.value.unit) == (4, 20, "sample")
    assert str(stop.value) == f"4 of 20 samples saved in {tmp_path / 'o' / 'results.jsonl'}; run the same command to resume"
    resumed = generation.toxicity(model, tok, texts, tmp_path / "o", scorer=LengthScorer(), **kw)
    whole = generation.toxicity(model, tok, texts, scorer=LengthScorer(), **kw)
    assert [r["tokens"] for r in resumed.samples] == [r["tokens"] for r in whole.samples]

    import actadd.cli
    monkeypatch.setattr(actadd.cli, "get_scorer", lambda *a, **k: StopAfter(0))
    code = main(["eval", "toxicity", "--model", "tiny-books", "--data", str(labelled), "--field", "text", "--layer",
                 "0", "--coeff", "1", "--out", str(tmp_path / "cli"), "--no-progress", "-n", "1", "--max-new-tokens", "2"])
    err = capsys.readouterr().err
    assert code == 130 and "Traceback" not in err
    # one unit of all 12 rows (6 lines read as prompts x 2 conditions), generated and saved, then stopped while scored
    assert err.strip() == (f"actadd: interrupted: 12 of 12 samples saved in {tmp_path / 'cli' / 'results.jsonl'}; "
                           "run the same command to resume")


def test_an_argument_that_is_not_a_sampling_setting_is_refused_before_any_file(books, labelled, tmp_path):
    """Before: toxicity(..., truncate=6) (sentiment's argument) made the results file, then failed
    at the first batch inside generate()."""
    model, tok = books
    with pytest.raises(TypeError, match="unexpected argument\\(s\\) 'truncate': the keywords left over are sampling"):
        generation.toxicity(model, tok, data.read_labelled(labelled), tmp_path / "o", layer=0, coeff=1.0,
                            truncate=6, scorer=LengthScorer(), progress=False)
    assert not (tmp_path / "o" / "results.jsonl").exists()


def test_dev_prompts_are_the_davidson_dev_split_cut_to_eight_words(tmp_path):
    """read_dev_prompts: Davidson records -> the dev split's tweets (cleaned, >= 4 words, the first 8);
    any other JSONL -> its prompts as read_prompts reads them."""
    from minigpt.checkpoints import davidson_split

    words = "one two three four five six seven eight nine ten".split()
    rows = [{"id": i, "count": 3, "class": i % 3, "tweet": " ".join(words[:3 + i % 8])} for i in range(300)]
    path = tmp_path / "labeled_data.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    got = data.read_dev_prompts(path)
    expected = [" ".join(words[:min(3 + i % 8, 8)]) for i in range(300) if davidson_split(i) == "dev" and 3 + i % 8 >= 4]
    assert [p.text for p in got] == expected and 0 < len(got) < 300
    other = tmp_path / "prompts.jsonl"
    other.write_text(json.dumps({"prompt": {"text": "The captain said"}}) + "\n")
    assert [p.text for p in data.read_dev_prompts(other)] == ["The captain said"]
