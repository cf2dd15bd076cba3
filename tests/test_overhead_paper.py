"""actadd eval overhead (the premium from the timings, steering really applied, the shapes) and
actadd paper --quick end to end on tiny-books: every file, and REPORT.md's figures equal to the
JSON's."""

import json
import math
import re
import statistics

import numpy as np
import pytest

import minigpt
from actadd.experiments import claims, overhead, paper
from actadd.cli import main
from conftest import random_model
from minigpt import GPT2Config

CONFIG = GPT2Config(n_layer=4, n_head=2, n_embd=16, n_positions=64, vocab_size=300)


def test_the_premium_is_computed_from_the_alternating_timings(monkeypatch):
    model = random_model(CONFIG, seed=1)
    steered_calls = []
    real = model.run_with_hooks

    def spy(tokens, hooks=(), **kwargs):
        steered_calls.append(bool(list(hooks)))
        return real(tokens, hooks, **kwargs)
    monkeypatch.setattr(model, "run_with_hooks", spy)
    summary = overhead.overhead(model, batch=4, tokens=16, repeats=5, generate_rows=2, prompt_tokens=4, new_tokens=3,
                                progress=False)
    # warm-up and 5 repeats of three conditions: the steered one alone passes hooks
    assert steered_calls.count(True) == 6 and steered_calls.count(False) == 12
    assert summary["layer"] == 2 and summary["steering_positions"] == 2
    forward = statistics.median(next(r for r in summary["rows"] if r["condition"] == "unsteered")["times_s"])
    addition = summary["addition"]
    assert addition["shape"] == [4, 16, 16] and 0 < addition["median_s"] < forward
    assert math.isclose(addition["fraction_of_forward"], addition["median_s"] / forward)
    rows = {(r["work"], r["condition"]): r for r in summary["rows"]}
    assert len(rows) == 6
    for (work, condition), r in rows.items():
        assert len(r["times_s"]) == 5 and r["median_s"] == statistics.median(r["times_s"])
        if condition == "unsteered":
            assert "premium" not in r
            continue
        base = rows[work, "unsteered"]["times_s"]
        logs = np.log(np.array(r["times_s"]) / np.array(base))
        assert math.isclose(r["premium"], statistics.median(r["times_s"]) / statistics.median(base) - 1)
        assert math.isclose(r["premium_paired"], math.exp(logs.mean()) - 1, rel_tol=1e-12)
        from scipy import stats as sp

        half = sp.t.ppf(0.975, 4) * logs.std(ddof=1) / math.sqrt(5)
        assert math.isclose(r["premium_low"], math.exp(logs.mean() - half) - 1, rel_tol=1e-9)
        assert math.isclose(r["premium_high"], math.exp(logs.mean() + half) - 1, rel_tol=1e-9)


def test_bad_overhead_settings_are_refused():
    model = random_model(CONFIG, seed=1)
    with pytest.raises(ValueError, match="layer 4: this model has blocks 0 to 3"):
        overhead.overhead(model, layer=4, progress=False)
    with pytest.raises(ValueError, match="exceed n_positions=64"):
        overhead.overhead(model, tokens=65, progress=False)
    with pytest.raises(ValueError, match="repeats=0"):
        overhead.overhead(model, repeats=0, progress=False)
    with pytest.raises(ValueError, match="expected one of"):
        overhead.random_model("gpt3")


def test_a_named_shape_has_the_published_size():
    model = overhead.random_model("gpt2")
    weights = model.state_dict()
    assert sum(w.size for w in weights.values()) == 124_439_808      # GPT-2 small, tied embeddings
    assert all(w.dtype == np.float32 for w in weights.values())
    assert np.all(weights["h.3.ln_1.weight"] == 1) and abs(float(weights["h.0.attn.c_attn.weight"].std()) - 0.02) < 1e-3


def test_the_overhead_command_writes_its_files(tmp_path, capsys):
    assert main(["eval", "overhead", "--model", "tiny-books", "--out", str(tmp_path), "--repeats", "2", "--batch", "2",
                 "--tokens", "8", "--generate-rows", "1", "--new-tokens", "2", "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "noise floor" in printed and "forward 2 x 8" in printed
    data = json.loads((tmp_path / "summary.json").read_text())["summary"]
    assert data["model"] == "tiny-books" and len(data["rows"]) == 6
    assert "times_s" not in (tmp_path / "summary.csv").read_text().splitlines()[0]
    assert (tmp_path / "overhead.png").stat().st_size > 0


# ---------------------------------------------------------------------------------------------
# actadd paper


def write_inputs(tmp_path, tok):
    docs = tmp_path / "owt.jsonl"
    texts = ["The bride wore white and the groom wept; the wedding was the finest in the county. " * 8,
             "The ship left the harbour at dawn, and the crew sang as they hauled the ropes. " * 8,
             "It was a long winter, and the farmers waited for the snow to melt from the fields. " * 8]
    docs.write_text("".join(json.dumps({"filename": f"{i}.txt", "text": t}) + "\n" for i, t in enumerate(texts)))
    facts = [("The captain looked out to [MASK] .", "sea"), ("She drank a cup of [MASK] .", "tea"),
             ("The ship sailed across the [MASK]", "ocean"), ("He rode his [MASK] home.", "horse"),
             ("They were [MASK] in the spring.", "married"), ("The [MASK] barked at night.", "dog")]
    lama = tmp_path / "test.jsonl"
    lama.write_text("".join(json.dumps({"masked_sentences": [s], "obj_label": o}) + "\n" for s, o in facts))
    return docs, lama


def write_scored_inputs(tmp_path):
    reviews = tmp_path / "reviews.jsonl"
    neg = ["I rented this movie and regretted it.<br /><br />The acting was wooden and the plot made no sense.",
           "A dull, slow film with nothing to say and two hours to say it in.",
           "The worst script I have read in years; even the music is bad.",
           "I walked out after an hour. Avoid it."]
    pos = ["A wonderful film: the cast is superb and the story moved me to tears.",
           "One of the best comedies of the decade, sharp and warm.",
           "I loved every minute of it.<br />The photography alone is worth the ticket.",
           "A beautiful, funny and honest film. See it."]
    reviews.write_text("".join(json.dumps({"text": t, "label": lab}) + "\n"
                               for lab, ts in (("neg", neg), ("pos", pos)) for t in ts))
    prompts = tmp_path / "rtp.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": {"text": t}}) + "\n" for t in
                               ["He shouted at the driver that", "The comments under the video were",
                                "She told him to get lost and", "The neighbours kept calling him"]))
    return reviews, prompts


def test_paper_quick_on_tiny_books_end_to_end(tmp_path, capsys):
    _, tok = minigpt.load("tiny-books")
    docs, lama = write_inputs(tmp_path, tok)
    out = tmp_path / "paper"
    reviews, prompts = write_scored_inputs(tmp_path)
    assert main(["paper", "--model", "tiny-books", "--quick", "--out", str(out), "--relevance-data", str(docs),
                 "--lama", str(lama), "--sentiment-data", str(reviews), "--sentiment-model", "tiny-imdb",
                 "--sentiment-scorer", "imdb", "--toxicity-data", str(prompts), "--toxicity-scorer", "profanity",
                 "--no-progress"]) == 0
    scored = {"sentiment-neg-to-pos": "sentiment", "sentiment-pos-to-neg": "sentiment", "toxicity": "toxicity"}
    for name in ["REPORT.md", "paper.json"] + [f"{e}/{f}" for e in ("relevance", "knowledge") for f in
                                                ("results.jsonl", "summary.json", "summary.csv", f"{e}.png")] + \
            ["topic/results.jsonl", "topic/summary.json", "topic/summary.csv", "topic/topic.png",
             "overhead/summary.json", "overhead/summary.csv", "overhead/overhead.png"] + \
            [f"{d}/{f}" for d, task in scored.items() for f in ("results.jsonl", "summary.json", f"{task}.png")]:
        assert (out / name).stat().st_size > 0, name
    report = (out / "REPORT.md").read_text()
    data = json.loads((out / "paper.json").read_text())
    ex = data["experiments"]
    assert data["layer"] == 1 and "round(16 x 4 / 48) = layer 1" in report
    # every figure in the report is the JSON's, and the JSON is each experiment's own summary
    topic = json.loads((out / "topic" / "summary.json").read_text())["summary"]
    base = next(c for c in topic["conditions"] if c["condition"] == "unsteered")["on_topic"]
    assert ex["topic"]["unsteered"]["value"] == base["value"]
    assert [c["layer"] for c in ex["topic"]["per_layer"]] == [0, 1, 2, 3]
    for c in ex["topic"]["per_layer"]:
        assert f"| {c['layer']} | {paper.interval(c, paper.pct)} | {c['n']} |" in report
    assert f"unsteered {paper.interval(ex['topic']['unsteered'], paper.pct)} of 32" in report
    relevance = json.loads((out / "relevance" / "summary.json").read_text())["summary"]
    for b in ex["relevance"]["bins"]:
        own = next(c for c in relevance["bins"] if c["bin"] == b["bin"])["perplexity_ratio"]
        assert b["value"] == own["value"] and b["chunks"] > 0
        assert f"| {b['bin']} | {b['chunks']} | {paper.interval(b, lambda x: paper.num(x, 4))} |" in report
    knowledge = json.loads((out / "knowledge" / "summary.json").read_text())["summary"]
    rows = {r["k"]: r for r in knowledge["rows"]}
    for k, row in ex["knowledge"]["p_at"].items():
        assert row["steered"] == rows[int(k)]["steered"]
        assert f"| {k} | {paper.num(row['unsteered'])} | {paper.num(row['steered'])} |" in report
    assert f"*Here:* {ex['knowledge']['facts']} facts" in report
    cost = ex["overhead"]
    assert f"{paper.signed_pct(cost['forward']['premium'])} [{paper.signed_pct(cost['forward']['low'])}" in report
    assert "below 0.4%" in report and "no single number" in report
    # the claims table: each verdict is the rule applied to the estimate paper.json holds for it
    estimates = paper.claim_estimates(data)
    assert [r["claim"] for r in data["claims"]] == [c.key for c in claims.CLAIMS]
    for claim, row in zip(claims.CLAIMS, data["claims"]):
        assert row["estimate"] == estimates[claim.estimate]
        assert {k: row[k] for k in ("verdict", "detectable")} == claims.judge(row["estimate"], claim.side, claim.bound)
        assert f"| {row['what']} | {row['paper']} |" in report and f"| {paper.verdict_text(row)} |" in report
    rows = {r["claim"]: r for r in data["claims"]}
    assert rows["neg_to_pos"]["model"] == "tiny-imdb" and rows["toxicity"]["model"] == "tiny-books"
    assert rows["knowledge"]["verdict"] != "not run" and claims.RULE in report
    # sentiment and toxicity: the v5 settings rescaled, and each figure the run's own summary's
    sentiment = ex["sentiment"]
    assert sentiment["layer"] == 3 and sentiment["coeff"] == 12 and "round(17 x 6 / 32) = layer 3" in report
    assert ex["toxicity"]["layer"] == 2 and ex["toxicity"]["coeff"] == 2          # round(17 x 4 / 32)
    for direction in ("neg-to-pos", "pos-to-neg"):
        own = json.loads((out / f"sentiment-{direction}" / "summary.json").read_text())
        cells = {c["condition"]: c for c in own["summary"]["conditions"]}
        assert own["settings"]["sampling"] == {"temperature": 1.0, "top_p": 0.3, "freq_penalty": 1.0}
        assert own["settings"]["prompts"] == 4 and own["settings"]["max_new_tokens"] == 64
        steered = sentiment[direction]["steered"]
        assert steered["vs_unsteered"]["success"]["value"] == cells["steered"]["vs_unsteered"]["success"]["value"]
        assert f"{paper.interval(steered['success'])} of 4; " in report
    # one version per report: v5's, so the ICLR tables are named, not shown (they mixed in before)
    assert "| ActAdd | 0.395 | 29.18 | 0.349 | 29.30 |" not in report
    assert "this report compares version v5, whose figures are in the claims table; the iclr2025 table is in a " \
           "report run with `--preset iclr2025`" in report
    assert f"## General knowledge (P@K on `{lama}`)" in report
    # a number in the report that is not in the JSON would be made up: every percentage is one of them
    figures = set(re.findall(r"[-+]?\d+\.\d+%", report))
    from_json = {paper.pct(v) for v in _values(ex["topic"])} | {paper.signed_pct(v) for v in _values(ex["topic"])} | \
        {paper.signed_pct(v) for v in _values(ex["overhead"])} | {"0.4%"} | \
        {paper.num(100 * ex["overhead"]["addition_fraction"], 4) + "%"} | \
        {paper.signed_pct(v).lstrip("+") for v in _values(data["claims"])}
    assert figures <= from_json, figures - from_json
    assert data["wall_s"] > 0 and f"(this run: {data['wall_s']} s)" in report   # recorded and said, not judged
    # --json: the claims table on stdout (a rerun: every experiment resumes, overhead is timed again)
    capsys.readouterr()
    assert main(["paper", "--model", "tiny-books", "--quick", "--out", str(out), "--relevance-data", str(docs),
                 "--lama", str(lama), "--sentiment-data", str(reviews), "--sentiment-model", "tiny-imdb",
                 "--sentiment-scorer", "imdb", "--toxicity-data", str(prompts), "--toxicity-scorer", "profanity",
                 "--no-progress", "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed == json.loads((out / "paper.json").read_text())["claims"] and len(printed) == len(data["claims"])


def _values(tree):
    if isinstance(tree, dict):
        for v in tree.values():
            yield from _values(v)
    elif isinstance(tree, list):
        for v in tree:
            yield from _values(v)
    elif isinstance(tree, float):
        yield tree


def test_paper_without_data_skips_and_says_so(tmp_path):
    model, tok = minigpt.load("tiny-books")
    report = paper.run(model, tok, tmp_path, model_name="tiny-books", quick=True, layers=[0], progress=False)
    assert "skipped" in report["experiments"]["relevance"] and "skipped" in report["experiments"]["knowledge"]
    text = (tmp_path / "REPORT.md").read_text()
    assert "skipped: no --relevance-data given" in text and "skipped: no --lama given" in text
    assert "skipped: no --sentiment-data given" in text and "skipped: no --toxicity-data given" in text
    assert [r["verdict"] for r in report["claims"] if r["claim"] in ("neg_to_pos", "toxicity")] == ["not run"] * 2


def test_a_resumed_report_counts_the_compute_time_of_every_run(tmp_path):
    model, tok = minigpt.load("tiny-books")
    first = paper.run(model, tok, tmp_path, model_name="tiny-books", quick=True, layers=[0], progress=False)
    assert first["runs"] == 1 and 0 < first["compute_s"] <= first["wall_s"]
    with open(tmp_path / "timing.jsonl", "a") as f:
        f.write('{"run": "killed", "stage": "topic", "sec')                 # a line torn by a kill
    second = paper.run(model, tok, tmp_path, model_name="tiny-books", quick=True, layers=[0], progress=False)
    entries = [json.loads(line) for line in (tmp_path / "timing.jsonl").read_text().splitlines()
               if line.endswith("}")]
    assert {e["stage"] for e in entries} == {"topic", "overhead"} and len({e["run"] for e in entries}) == 2
    assert second["runs"] == 2
    assert second["compute_s"] == pytest.approx(sum(e["seconds"] for e in entries), abs=0.06)
    assert second["compute_s"] > first["compute_s"]
    assert f"Compute time of these results: {second['compute_s']} s over 2 run(s)" in \
        (tmp_path / "REPORT.md").read_text()


def test_a_rerun_keeps_the_overhead_timings_unless_asked(tmp_path):
    """Before: rerunning into the same folder timed overhead again (-21.58% -> -6.03%) while every
    other experiment resumed, and the report did not say which rows were fresh."""
    model, tok = minigpt.load("tiny-books")
    first = paper.run(model, tok, tmp_path, model_name="tiny-books", quick=True, layers=[0], progress=False)
    second = paper.run(model, tok, tmp_path, model_name="tiny-books", quick=True, layers=[0], progress=False)
    assert first["experiments"]["overhead"]["kept_from_earlier_run"] is False
    assert second["experiments"]["overhead"] == {**first["experiments"]["overhead"], "kept_from_earlier_run": True}
    assert "*Kept from the first run in this folder*" in (tmp_path / "REPORT.md").read_text()
    third = paper.run(model, tok, tmp_path, model_name="tiny-books", quick=True, layers=[0], progress=False,
                      rerun=["overhead"])
    assert third["experiments"]["overhead"]["kept_from_earlier_run"] is False
    assert third["experiments"]["overhead"]["forward"] != first["experiments"]["overhead"]["forward"]   # timed anew
    assert "Kept from the first run" not in (tmp_path / "REPORT.md").read_text()
