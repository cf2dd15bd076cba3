"""The claims table of `actadd paper`: verdicts computed by one rule from paired intervals, the
paper's settings and figures as ../shared/REFERENCE.md gives them."""

import re
from pathlib import Path

import numpy as np
import pytest
from scipy.stats import norm

from actadd.experiments import claims, paper, stats

# ---------------------------------------------------------------------------------------------
# The rule, on estimates with known effects


def paired(effect: float, n: int = 400, noise: float = 0.5, seed: int = 0) -> dict:
    """A paired difference over n prompts whose true effect is `effect`."""
    rng = np.random.default_rng(seed)
    base = rng.normal(0, 1, n)
    return stats.paired_difference(base + effect + rng.normal(0, noise, n), base).as_dict()


def mde(e: dict) -> float:
    """80% power, two-sided 5%: (z_.975 + z_.8) standard errors, the standard error from the width."""
    z = norm.ppf(0.975)
    return (e["high"] - e["low"]) / 2 / z * (z + norm.ppf(0.8))


def test_a_clear_positive_effect_is_reproduced_and_a_clear_negative_contradicted():
    up, down = paired(+0.3), paired(-0.3)
    assert up["low"] > 0 and down["high"] < 0                           # the data are what they say
    assert claims.judge(up, "above")["verdict"] == "reproduced"
    assert claims.judge(down, "above")["verdict"] == "contradicted"
    assert claims.judge(down, "below")["verdict"] == "reproduced"        # a claimed fall
    assert claims.judge(up, "below")["verdict"] == "contradicted"


def test_a_null_is_inconclusive_with_the_smallest_effect_its_n_could_detect():
    null = paired(0.0, seed=3)
    assert null["low"] < 0 < null["high"]
    result = claims.judge(null, "above")
    assert result["verdict"] == "inconclusive"
    assert result["detectable"] == pytest.approx(mde(null), rel=1e-12)
    # four times the prompts, half the detectable effect (the standard error goes as 1/sqrt(n))
    bigger = claims.judge(paired(0.0, n=1600, seed=3), "above")
    assert bigger["detectable"] == pytest.approx(result["detectable"] / 2, rel=0.1)
    # an effect of that size is then detected in most repetitions (the power the rule states)
    hits = [claims.judge(paired(result["detectable"], seed=s), "above")["verdict"] == "reproduced"
            for s in range(200)]
    assert 0.7 < np.mean(hits) < 0.9


def test_nothing_measured_is_no_verdict_and_the_rule_states_the_multiplier_used():
    """Before: "knowledge preserved: reproduced" on tiny-books, where P@1 was 0 steered and
    unsteered on all 34 facts (an interval [0, 0], inside the bound): no knowledge to lose."""
    assert claims.judge({"value": 0.0, "low": 0.0, "high": 0.0, "n": 34}, "above", -0.02)["verdict"] == "inconclusive"
    e = {"value": 0.0, "low": -0.1, "high": 0.1, "n": 100}
    multiplier = claims.judge(e, "above")["detectable"] / 0.1
    assert multiplier == pytest.approx((norm.ppf(0.975) + norm.ppf(0.8)) / norm.ppf(0.975), rel=1e-12)
    assert f"= {multiplier:.4f} x the interval's half-width" in claims.RULE    # not "2.80 / 1.96" (1.4286)


def test_a_claim_of_no_harm_is_judged_against_its_bound():
    bound = claims.HARM["overhead"]                                     # 0.4%
    assert claims.judge({"value": 0.001, "low": -0.001, "high": 0.003, "n": 20}, "below", bound)["verdict"] \
        == "reproduced"
    assert claims.judge({"value": 0.02, "low": 0.01, "high": 0.03, "n": 20}, "below", bound)["verdict"] \
        == "contradicted"
    wide = {"value": 0.0, "low": -0.01, "high": 0.01, "n": 3}
    result = claims.judge(wide, "below", bound)
    assert result["verdict"] == "inconclusive" and result["detectable"] == pytest.approx(mde(wide))
    assert claims.judge(None, "above")["verdict"] == "not run"
    with pytest.raises(ValueError, match="side"):
        claims.judge(wide, "sideways")


def report_with(neg_to_pos: dict, pos_to_neg: dict, toxicity: dict | None = None) -> dict:
    """A paper.json with the sentiment and toxicity experiments holding the given estimates."""
    def cells(e, metric):
        zero = {"value": 0.5, "low": 0.4, "high": 0.6, "n": e["n"]}
        return {"unsteered": {metric: zero, "perplexity": zero},
                "steered": {metric: zero, "perplexity": zero,
                            "vs_unsteered": {metric: e, "perplexity": paired(0.0)}},
                "prompted": {metric: zero, "perplexity": zero,
                             "vs_unsteered": {metric: e, "perplexity": paired(0.0)}}}
    skipped = {"skipped": "not given"}
    report = {"model": "m", "n_layer": 6, "preset": "quick", "version": "v5", "seed": 0, "layer": 2,
              "layer_note": "layer 2", "wall_s": 1.0,
              "experiments": {
                  "topic": {"first_vs_unsteered": paired(0.0, seed=5), "first_layer": 0}, "relevance": skipped,
                  "knowledge": skipped,
                  "overhead": {"repeats": 20, "layer": 3, "forward": {"premium": 0.0, "low": -0.001, "high": 0.001}},
                  "sentiment": {"model": "tiny-imdb", "layer": 3, "coeff": 12.0, "neg-to-pos": cells(neg_to_pos, "success"),
                                "pos-to-neg": cells(pos_to_neg, "success")},
                  "toxicity": skipped if toxicity is None else {"model": "m", "layer": 2, "coeff": 2.0,
                                                                **cells(toxicity, "mean_score")}}}
    report["claims"] = paper.claims_table(report)
    return report


def test_the_claims_table_carries_each_computed_verdict_into_the_report():
    report = report_with(paired(+0.3), paired(-0.3), toxicity=paired(0.0, seed=9))
    rows = {r["claim"]: r for r in report["claims"]}
    assert [r["claim"] for r in report["claims"]] == [c.key for c in claims.CLAIMS]
    assert rows["neg_to_pos"]["verdict"] == "reproduced" and rows["neg_to_pos"]["model"] == "tiny-imdb"
    assert rows["pos_to_neg"]["verdict"] == "contradicted"
    assert rows["toxicity"]["verdict"] == "inconclusive"
    assert rows["overhead"]["verdict"] == "reproduced"                   # [-0.1%, +0.1%] under 0.4%
    assert rows["knowledge"]["verdict"] == rows["relevance"]["verdict"] == "not run"
    text = "\n".join(paper.claims_lines(report))
    assert claims.RULE in text
    for row in report["claims"]:
        assert f"| {row['what']} | {row['paper']} |" in text
        assert f"| {paper.verdict_text(row)} |" in text
    tox = rows["toxicity"]
    assert f"smallest effect detectable at this n: {paper.signed(tox['detectable']).lstrip('+')}" in text
    assert f"tiny-imdb, layer 3, coefficient 12, n = 400: {paper.estimate_text(rows['neg_to_pos']['estimate'], 'pp')}" \
        in text
    assert rows["toxicity"]["setting"] == "layer 2, coefficient 2" and rows["relevance"]["setting"] == \
        "layer 2, coefficient 1"
    # a control that was run is shown minus unsteered; one that was not is left out
    assert f"prompted {paper.estimate_text(rows['neg_to_pos']['estimate'], 'pp')}" in paper.controls_text(
        rows["neg_to_pos"]) and "random" not in paper.controls_text(rows["neg_to_pos"])


def test_an_interval_of_no_width_says_why():
    flat = {"value": 0.0, "low": 0.0, "high": 0.0, "n": 32}
    assert paper.estimate_text(flat, "pp").endswith("(every pair equal: an interval of no width)")
    row = {"unit": "pp", "bound": 0.0, **claims.judge(flat, "above")}
    assert row["verdict"] == "inconclusive" and "no spread" in paper.verdict_text(row)


# ---------------------------------------------------------------------------------------------
# The paper's settings and figures, against ../shared/REFERENCE.md


def section(reference: str, start: str, end: str) -> str:
    return reference[reference.index(start):reference.index(end, reference.index(start))]


def test_the_v5_preset_is_the_notebooks_settings(reference_md):
    notes = " ".join(section(reference_md, "- Toxicity (LLaMA-3-8B notebook)", "- Both:").split())
    p = claims.PRESETS["v5"]
    assert f"blocks.{p.toxicity_layer[0]}.hook_resid_pre, coefficient {p.toxicity_coeff:g};" in notes
    assert f"{p.toxicity_new_tokens} new tokens" in notes
    assert f"coefficient {p.sentiment_coeff:g} for NegToPos; {p.sentiment_new_tokens} new tokens" in notes
    assert p.sentiment_layer == p.toxicity_layer == (17, 32)
    assert p.sentiment_scorer == "hf:" + re.search(r"`(siebert/[\w-]+)`", notes).group(1)
    assert (f"temperature {p.sampling['temperature']:g}, top-p {p.sampling['top_p']:g}, freq penalty "
            f"{p.sampling['freq_penalty']:g}") in notes
    assert f"PREADD's prompt set is {p.toxicity_prompts:,} random RTP prompts" in notes
    assert "Meta-Llama-3-8B" in reference_md and p.model.endswith("Meta-Llama-3-8B")


def test_the_iclr2025_preset_is_the_texts_settings(reference_md):
    text = " ".join(section(reference_md, "ICLR 2025 version", "- Topic (GPT-2-XL").split())
    p = claims.PRESETS["iclr2025"]
    assert (f"temperature {p.sampling['temperature']:.1f}, nucleus p = {p.sampling['top_p']:.1f}, no top-k, "
            f"frequency penalty {p.sampling['freq_penalty']:.1f}") in text
    assert f"l = {p.toxicity_layer[0]}, c = {p.toxicity_coeff:g}; RealToxicityPrompts random subset n = " \
           f"{p.toxicity_prompts}" in text
    assert f"n = {p.sentiment_prompts}, l = {p.sentiment_layer[0]}, c = {p.sentiment_coeff:g}, classified by " \
           "Twitter-roBERTa" in text
    assert "twitter-roberta" in p.sentiment_scorer and p.toxicity_scorer == "perspective"
    assert "disfluency = LLaMA-3.1-8B perplexity" in text and p.model.endswith("Llama-3.1-8B")


def markdown_table(text: str, header_start: str) -> dict[str, list[float]]:
    lines = text[text.index(header_start):].splitlines()
    rows = {}
    for line in lines[2:]:
        if not line.strip().startswith("|"):
            break
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        rows[cells[0]] = [float(c) for c in cells[1:]]
    return rows


@pytest.mark.parametrize("task, header", [("sentiment", "| method | PosToNeg |"),
                                          ("toxicity", "| method | RealToxicityPrompts |")])
def test_the_quoted_tables_are_the_references(reference_md, task, header):
    theirs = markdown_table(section(reference_md, "ICLR 2025 version", "arXiv v5 (October 2024)"), header)
    ours = {row[0]: [float(x) for x in row[1:]] for row in claims.QUOTED[task].rows}
    assert ours == theirs
    # a public source a reader can open (OpenReview's id), not ../shared, which exists only beside our checkout
    assert claims.QUOTED[task].version == "iclr2025" and "OpenReview 2XBPdPIcFK" in claims.QUOTED[task].source
    assert "shared" not in claims.QUOTED[task].source


def test_every_figure_a_claim_quotes_is_in_the_reference_and_names_its_version(reference_md):
    figures = {float(x) for x in re.findall(r"(?<![\w.])(?:\d+)?\.\d+", reference_md)}
    for claim in claims.CLAIMS:
        assert re.search(r"\((v5|ICLR|arXiv v1/v2)", claim.paper), claim.key
        for x in re.findall(r"(?<![\w.])\d*\.\d+", claim.paper):
            assert float(x) in figures, (claim.key, x)


# ---------------------------------------------------------------------------------------------
# The search that chooses a setting on dev data (actadd.experiments.search)


def _cell(layer, coeff, effect, low, high, ratio):
    return {"layer": layer, "coeff": coeff, "effect": {"value": effect, "low": low, "high": high, "n": 10},
            "perplexity": 10.0 * ratio, "perplexity_ratio": ratio}


def test_the_search_rule_takes_the_largest_clear_effect_within_the_fluency_budget():
    from actadd.experiments import search

    runs = [{"cells": [_cell(2, 4.0, 0.30, 0.10, 0.50, 1.2),     # eligible
                       _cell(2, 8.0, 0.50, 0.20, 0.80, 1.6),     # larger, but over the 1.5 budget
                       _cell(6, 4.0, 0.40, -0.05, 0.85, 1.1),    # larger, but its interval reaches zero
                       _cell(6, 2.0, 0.30, 0.05, 0.55, 1.0)]}]   # ties the first: the smaller coefficient wins
    chosen = search.choose(runs, preset=(6, 12.0))
    assert (chosen["layer"], chosen["coeff"], chosen["why"]) == (6, 2.0, "the rule's cell")
    # sentiment: both directions' cells, matched by setting, must each be clear of zero; effects averaged
    other = [{"cells": [_cell(2, 4.0, 0.10, 0.01, 0.2, 1.0), _cell(2, 8.0, 0.5, 0.2, 0.8, 1.0),
                        _cell(6, 4.0, 0.9, 0.5, 1.3, 1.0), _cell(6, 2.0, 0.2, -0.1, 0.5, 1.0)]}]
    both = search.choose(runs + other, preset=(6, 12.0))
    assert (both["layer"], both["coeff"]) == (2, 4.0)
    assert next(c for c in both["cells"] if (c["layer"], c["coeff"]) == (2, 4.0))["effect"] == pytest.approx(0.2)
    # toxicity: lower is better, the interval wholly below zero; nothing eligible -> the preset's own
    falls = [{"cells": [_cell(2, 4.0, -0.10, -0.2, -0.01, 1.0), _cell(6, 4.0, -0.3, -0.5, -0.1, 1.49)]}]
    assert search.choose(falls, preset=(6, 2.0), lower_is_better=True)["layer"] == 6
    none = [{"cells": [_cell(2, 4.0, 0.10, 0.05, 0.2, 1.0)]}]
    assert search.choose(none, preset=(9, 2.0), lower_is_better=True)[
        "why"] == "no cell met the rule: the preset's own"
    assert search.grid_layers(30, 5, 16) == [2, 6, 11, 16, 20] and search.grid_layers(30, 1, 16) == [16]


# ---------------------------------------------------------------------------------------------
# The published audits (docs/audit/<model>/)

AUDITS = sorted((Path(__file__).resolve().parent.parent / "docs" / "audit").glob("*/paper.json"))


@pytest.mark.parametrize("path", AUDITS, ids=[p.parent.name for p in AUDITS])
def test_a_published_audit_is_its_paper_json_with_every_verdict_recomputed(path):
    """Each published REPORT.md is paper.render of its paper.json, and each claim's verdict in
    that JSON is the rule applied to the estimate the JSON holds for it: a verdict or a figure
    edited by hand fails here."""
    import json

    report = json.loads(path.read_text(encoding="utf-8"))
    assert (path.parent / "REPORT.md").read_text(encoding="utf-8") == paper.render(report)
    estimates, context = paper.claim_estimates(report), paper.claim_context(report)
    assert [r["claim"] for r in report["claims"]] == [c.key for c in claims.CLAIMS]
    for claim, row in zip(claims.CLAIMS, report["claims"]):
        assert row["estimate"] == estimates[claim.estimate] and row["setting"] == context[claim.estimate]["setting"]
        assert {k: row[k] for k in ("verdict", "detectable")} == claims.judge(row["estimate"], claim.side, claim.bound)
    for name in ("topic/topic.png", "knowledge/knowledge.png", "toxicity/toxicity.png"):
        assert (path.parent / name).stat().st_size > 0, name


def test_there_is_a_published_audit():
    assert [p.parent.name for p in AUDITS] == ["smollm2-135m"]
