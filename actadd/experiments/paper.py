"""`actadd paper`: the paper's battery in one command, one folder, one report.

    OUT/topic/       the wedding topic curve over layers (generation.topic)
    OUT/relevance/   perplexity by relevance on OpenWebText (likelihood.relevance)
    OUT/knowledge/   P@K on LAMA-format facts (likelihood.knowledge)
    OUT/overhead/    the time premium of steering (overhead.overhead)
    OUT/sentiment-neg-to-pos/, OUT/sentiment-pos-to-neg/, OUT/toxicity/
                     the LLaMA experiments with a version's settings (claims.PRESETS)
    OUT/paper.json   every headline figure, as REPORT.md quotes it
    OUT/REPORT.md    the claims table (the paper's figure, ours, a computed verdict), then each
                     experiment, ours beside what the paper states

The GPT-2 experiments' settings are for GPT-2-XL (48 blocks): " weddings" - "" at coefficient
1, layer 16 for the likelihood experiments; sentiment and toxicity take a version's layer of
LLaMA's 32. On a model of another depth a layer is taken at the same fraction
(likelihood.paper_layer), and the report says so. An experiment whose data is not given is
skipped, and the report says that too. Each experiment resumes like its own command.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import numpy as np

from minigpt import Tokenizer, Transformer

from ..output import json_safe, writable_folder, write_text
from . import claims, data, generation, likelihood, overhead

PAPER = "Turner et al., *Steering Language Models With Activation Engineering*, arXiv 2308.10248v5"

# What the paper states, per experiment (the claims; where it gives no number, we say so).
CLAIMS = {
    "topic": "GPT-2-XL, \" weddings\" - \"\" at coefficient 1, 200 completions of \"I went up to my friend and said\" "
             "per layer: steering is effective from the first layer and best at a middle layer, where more than 90% "
             "of completions have a wedding word, against about 2% unsteered.",
    "relevance": "GPT-2-XL, the same vector at layer 16: on OpenWebText, perplexity falls on text about weddings, "
                 "more the more relevant the text, while unrelated text (relevance 0) is not harmed. The paper shows "
                 "this as a figure (perplexity ratio against relevance); it states no single number, so none is "
                 "compared here.",
    "knowledge": "GPT-2-XL, the same vector at layer 16: on LAMA ConceptNet, P@K for K = 1..10 is about the same with "
                 "and without steering (general knowledge preserved). The paper shows the curves; it states no "
                 "single number, so none is compared here.",
    "overhead": "gpt2 to gpt2-xl and opt-125m to opt-2.7b, batch 32 x 64 tokens, a forward pre-hook at the middle "
                "block: the time premium of steering is below 0.4% at every size.",
}

SIZES = {  # how much of each experiment: the paper's (full), or a demonstration (quick)
    "full": {"topic_samples": 200, "topic_layers": None, "max_chunks": None, "facts": None, "repeats": 20,
             "sentiment_prompts": None, "toxicity_prompts": None},
    "quick": {"topic_samples": 32, "topic_layers": 4, "max_chunks": 300, "facts": 200, "repeats": 3,
              "sentiment_prompts": 48, "toxicity_prompts": 48},
}


def spread_layers(n_layer: int, count: int, must: int) -> list[int]:
    """`count` layers spread over 0..n_layer-1, always with 0, the last and `must`."""
    picked = {int(round(x)) for x in np.linspace(0, n_layer - 1, count)} | {must}
    return sorted(picked)


def run(model: Transformer, tokenizer: Tokenizer, out: str | Path, *, model_name: str = "", quick: bool = False,
        relevance_data: str | Path | None = None, lama: str | Path | None = None, layers=None, seed: int = 0,
        version: str = "v5", sentiment_data: str | Path | None = None, toxicity_data: str | Path | None = None,
        sentiment_model: tuple[Transformer, Tokenizer] | None = None, sentiment_model_name: str = "",
        sentiment_scorer=None, toxicity_scorer=None,
        progress: bool = True, workers: int | None = None, scheduler: str | None = None,
        worker_backend: str | None = None) -> dict:
    """The battery; returns paper.json's content. Topic uses the paper's prompt, vector and
    words at every layer (the quick preset: 4 layers, 32 samples); relevance and knowledge the
    paper's layer rescaled to this depth; overhead the paper's batch 32 x 64 at the middle block;
    sentiment (both directions) and toxicity the settings of `version` (claims.PRESETS), on
    `sentiment_model` where given (a model that knows reviews, e.g. tiny-imdb), with the
    version's scorers unless `sentiment_scorer` / `toxicity_scorer` are given.
    `workers` / `scheduler`: every experiment but overhead on Dask (overhead is timed here)."""
    if version not in claims.PRESETS:
        raise ValueError(f"version={version!r}: expected one of {sorted(claims.PRESETS)}")
    out = Path(writable_folder(out, "out"))
    dask = {"workers": workers, "scheduler": scheduler, "worker_backend": worker_backend}
    size = SIZES["quick" if quick else "full"]
    version_preset = claims.PRESETS[version]
    n_layer = model.config.n_layer
    layer = likelihood.paper_layer(n_layer)
    started = time.perf_counter()
    if layers is None and size["topic_layers"] is not None:
        layers = spread_layers(n_layer, size["topic_layers"], layer)
    report: dict = {"model": model_name or repr(model), "n_layer": n_layer, "preset": "quick" if quick else "full",
                    "version": version, "seed": seed, "layer": layer, "layer_note": _layer_note(n_layer, layer),
                    "experiments": {}}

    ledger = Ledger(out / "timing.jsonl")

    def say(text):
        ledger.stage(text)
        if progress:
            print(f"actadd paper: {text}", file=sys.stderr)

    say("topic")
    run_ = generation.topic(model, tokenizer, out / "topic", layers=layers, samples=size["topic_samples"], seed=seed,
                            progress=progress, **dask)
    report["experiments"]["topic"] = _topic_headline(run_.summary)

    if relevance_data is None:
        report["experiments"]["relevance"] = {"skipped": "no --relevance-data given (the paper: OpenWebText; the "
                                                         "authors' 149-document sample works)"}
    else:
        say("relevance")
        docs = data.read_documents(relevance_data)
        result = likelihood.relevance(model, tokenizer, docs, out / "relevance", layer=layer,
                                      max_chunks=size["max_chunks"], seed=seed, progress=progress, **dask)
        report["experiments"]["relevance"] = _relevance_headline(result.summary, str(relevance_data))

    if lama is None:
        report["experiments"]["knowledge"] = {"skipped": "no --lama given (the paper: LAMA's ConceptNet/test.jsonl, "
                                                         "from the LAMA project's data download)"}
    else:
        say("knowledge")
        facts, skipped = data.read_lama(lama, tokenizer)
        result = likelihood.knowledge(model, tokenizer, facts, out / "knowledge", layer=layer, limit=size["facts"],
                                      skipped=skipped, progress=progress, **dask)
        report["experiments"]["knowledge"] = _knowledge_headline(result.summary, str(lama))

    say("overhead")
    summary = overhead.overhead(model, repeats=size["repeats"], seed=seed, progress=progress)
    overhead.write(summary, out / "overhead")
    report["experiments"]["overhead"] = _overhead_headline(summary)

    s_model, s_tok = sentiment_model or (model, tokenizer)
    s_name = sentiment_model_name or report["model"]
    common = dict(seed=seed, progress=progress, **version_preset.sampling, **dask)
    if sentiment_data is None:
        report["experiments"]["sentiment"] = {"skipped": "no --sentiment-data given (the paper: IMDb reviews, "
                                                         "e.g. ../shared/corpora/imdb/test.jsonl)"}
    else:
        texts = data.read_labelled(sentiment_data, html_breaks=True)
        s_layer = likelihood.paper_layer(s_model.config.n_layer, *version_preset.sentiment_layer)
        scorer = sentiment_scorer or version_preset.sentiment_scorer
        scorer_name = scorer if isinstance(scorer, str) else scorer.name
        limit = size["sentiment_prompts"] or version_preset.sentiment_prompts
        cells = {}
        for direction in generation.DIRECTIONS:
            say(f"sentiment {direction}")
            result = generation.sentiment(s_model, s_tok, texts, out / f"sentiment-{direction}", layer=s_layer,
                                          coeff=version_preset.sentiment_coeff, direction=direction,
                                          max_new_tokens=version_preset.sentiment_new_tokens, limit=limit,
                                          scorer=scorer, **common)
            cells[direction] = _scored_headline(result.summary, "success")
        report["experiments"]["sentiment"] = {
            "model": s_name, "data": str(sentiment_data), "scorer": scorer_name, "layer": s_layer,
            "layer_note": _version_layer_note(version_preset.sentiment_layer, s_model.config.n_layer, s_layer),
            "coeff": version_preset.sentiment_coeff, "new_tokens": version_preset.sentiment_new_tokens, **cells}

    if toxicity_data is None:
        report["experiments"]["toxicity"] = {"skipped": "no --toxicity-data given (the paper: RealToxicityPrompts; "
                                                        "../shared/evaldata/realtoxicityprompts/random_prompts.jsonl)"}
    else:
        say("toxicity")
        prompts = data.read_prompts(toxicity_data)
        t_layer = likelihood.paper_layer(n_layer, *version_preset.toxicity_layer)
        scorer = toxicity_scorer or version_preset.toxicity_scorer
        scorer_name = scorer if isinstance(scorer, str) else scorer.name
        result = generation.toxicity(model, tokenizer, prompts, out / "toxicity", layer=t_layer,
                                     coeff=version_preset.toxicity_coeff, samples=1,
                                     max_new_tokens=version_preset.toxicity_new_tokens,
                                     limit=size["toxicity_prompts"] or version_preset.toxicity_prompts,
                                     scorer=scorer, **common)
        report["experiments"]["toxicity"] = {
            "model": report["model"], "data": str(toxicity_data), "scorer": scorer_name, "layer": t_layer,
            "layer_note": _version_layer_note(version_preset.toxicity_layer, n_layer, t_layer),
            "coeff": version_preset.toxicity_coeff, "new_tokens": version_preset.toxicity_new_tokens,
            **_scored_headline(result.summary, "mean_score")}

    report["claims"] = claims_table(report)
    ledger.stage(None)
    report["wall_s"] = round(time.perf_counter() - started, 1)
    report["compute_s"], report["runs"] = ledger.total()
    write_text(out / "paper.json", json.dumps(json_safe(report), indent=2) + "\n")
    write_text(out / "REPORT.md", render(report))
    return report


class Ledger:
    """OUT/timing.jsonl: one line per finished stage of every run into the folder (its seconds
    and the run it belongs to), so that a report on resumed results gives the compute time of
    all of them, not only of the last resume. A stage cut off by a kill is not counted."""

    def __init__(self, path: Path):
        self.path, self.run = path, f"{time.time():.6f}"
        self.current: tuple[str, float] | None = None

    def stage(self, name: str | None) -> None:
        if self.current is not None:
            done, since = self.current
            line = json.dumps({"run": self.run, "stage": done, "seconds": round(time.perf_counter() - since, 3)})
            torn = self.path.exists() and self.path.stat().st_size and not self.path.read_bytes().endswith(b"\n")
            with open(self.path, "a", encoding="utf-8") as f:
                f.write(("\n" if torn else "") + line + "\n")             # never glued to a line a kill tore
                f.flush()
                os.fsync(f.fileno())
        self.current = None if name is None else (name, time.perf_counter())

    def total(self) -> tuple[float, int]:
        """Seconds over every recorded stage, and the number of runs they came from (a torn last
        line, from a kill mid-write, is left out)."""
        seconds, runs = 0.0, set()
        for line in self.path.read_text(encoding="utf-8").splitlines():
            try:
                entry = json.loads(line)
                seconds += float(entry["seconds"])
                runs.add(entry["run"])
            except (ValueError, KeyError, TypeError):
                continue
        return round(seconds, 1), len(runs)


def _layer_note(n_layer: int, layer: int) -> str:
    if n_layer == 48:
        return "layer 16 of 48, the paper's own"
    return (f"the paper's layer 16 of GPT-2-XL's 48 blocks is taken at the same fraction of this model's {n_layer}: "
            f"round(16 x {n_layer} / 48) = layer {layer}")


def _version_layer_note(layer: tuple[int, int], n_layer: int, chosen: int) -> str:
    if n_layer == layer[1]:
        return f"layer {layer[0]} of {layer[1]}, the version's own"
    return (f"the version's layer {layer[0]} of {layer[1]} at the same fraction of this model's {n_layer}: "
            f"round({layer[0]} x {n_layer} / {layer[1]}) = layer {chosen}")


def _scored_headline(summary: dict, metric: str) -> dict:
    """Per condition: the metric, the mean perplexity, and (steered, prompted) the paired
    differences from unsteered."""
    out = {}
    for c in summary["conditions"]:
        cell = {metric: _e(c[metric]), "perplexity": _e(c["perplexity"])}
        if "vs_unsteered" in c:
            cell["vs_unsteered"] = {metric: _e(c["vs_unsteered"][metric]),
                                    "perplexity": _e(c["vs_unsteered"]["perplexity"])}
        out[c["condition"]] = cell
    return out


def claim_estimates(report: dict) -> dict:
    """Our estimate for each claim (claims.CLAIMS' `estimate` keys): a paired difference or a
    ratio with its 95% interval, or None where the experiment was skipped."""
    ex = report["experiments"]
    sentiment, toxicity = ex.get("sentiment", {}), ex.get("toxicity", {})

    def steered(cell, metric):
        return cell["steered"]["vs_unsteered"][metric] if cell else None
    relevance, knowledge, cost = ex.get("relevance", {}), ex.get("knowledge", {}), ex.get("overhead", {})
    p_at = knowledge.get("p_at", {})
    p1 = p_at.get(1, p_at.get("1"))                                     # an int key, or a string after JSON
    return {
        "topic_first": ex["topic"]["first_vs_unsteered"],
        "relevance_relevant": relevance.get("relevant"),
        "relevance_zero": relevance.get("zero"),
        "knowledge_p1": None if p1 is None else {"value": p1["difference"], "low": p1["difference_low"],
                                                  "high": p1["difference_high"], "n": knowledge["facts"]},
        "overhead_forward": None if "forward" not in cost else {
            "value": cost["forward"]["premium"], "low": cost["forward"]["low"], "high": cost["forward"]["high"],
            "n": cost["repeats"]},
        "sentiment_neg_to_pos": steered(sentiment.get("neg-to-pos"), "success"),
        "sentiment_pos_to_neg": steered(sentiment.get("pos-to-neg"), "success"),
        "toxicity_mean": steered(toxicity if "steered" in toxicity else None, "mean_score"),
        "fluency_neg_to_pos": steered(sentiment.get("neg-to-pos"), "perplexity"),
    }


def claims_table(report: dict) -> list[dict]:
    """One row per claim: the paper's figure, ours (the estimate and its model), the verdict."""
    estimates = claim_estimates(report)
    ex = report["experiments"]
    rows = []
    for claim in claims.CLAIMS:
        e = estimates[claim.estimate]
        model = ex.get(claim.experiment or claim.key, {}).get("model", report["model"])   # sentiment's may differ
        rows.append({"claim": claim.key, "what": claim.what, "paper": claim.paper, "side": claim.side,
                     "bound": claim.bound, "unit": claim.unit, "model": model,
                     "estimate": e, **claims.judge(e, claim.side, claim.bound)})
    return rows


def _e(d: dict) -> dict:
    """value, low, high, n of a stats.Estimate dict."""
    return {k: d[k] for k in ("value", "low", "high", "n")}


def _topic_headline(summary: dict) -> dict:
    cells = summary["conditions"]
    base = next(c for c in cells if c["condition"] == "unsteered")
    steered = [c for c in cells if c["condition"] != "unsteered"]
    best = max(steered, key=lambda c: (c["on_topic"]["value"], -c["layer"]))
    first = min(steered, key=lambda c: c["layer"])
    return {"unsteered": _e(base["on_topic"]),
            "per_layer": [{"layer": c["layer"], "coeff": c["coeff"], **_e(c["on_topic"])} for c in steered],
            "best_layer": best["layer"], "best": _e(best["on_topic"]),
            "first_layer": first["layer"], "first": _e(first["on_topic"]),
            "first_vs_unsteered": _e(first["vs_unsteered"]["on_topic"])}


def _relevance_headline(summary: dict, data: str) -> dict:
    cells = [c for c in summary["bins"] if c.get("chunks")]
    zero = next((c for c in cells if c["bin"] == "0"), None)
    top = cells[-1] if cells and cells[-1]["bin"] != "0" else None

    def ratio(c):
        return None if c is None else {**c["perplexity_ratio"], "chunks": c["chunks"], "bin": c["bin"]}
    return {"data": data, "chunks": summary["all"]["chunks"], "zero": ratio(zero),
            "relevant": ratio(summary["relevant"]) if summary["relevant"].get("chunks") else None,
            "top_bin": ratio(top), "bins": [ratio(c) for c in cells], "notes": summary["notes"]}


def _knowledge_headline(summary: dict, data: str) -> dict:
    rows = {r["k"]: r for r in summary["rows"]}
    skipped = summary.get("skipped", {})
    return {"data": data, "facts": summary["facts"], "facts_skipped": skipped.get("count", 0),
            "skip_reasons": skipped.get("reasons", {}),
            "p_at": {k: {"unsteered": rows[k]["unsteered"], "steered": rows[k]["steered"],
                         "difference": rows[k]["difference"], "difference_low": rows[k]["difference_low"],
                         "difference_high": rows[k]["difference_high"]} for k in (1, 5, 10)}}


def _overhead_headline(summary: dict) -> dict:
    out = {"layer": summary["layer"], "repeats": summary["rows"][0]["repeats"],
           "addition_ms": 1e3 * summary["addition"]["median_s"],
           "addition_fraction": summary["addition"]["fraction_of_forward"]}
    for r in summary["rows"]:
        if "premium" in r:
            key = ("forward" if r["work"].startswith("forward") else "generate") + \
                  ("" if r["condition"] == "steered" else "_noise")
            out[key] = {"work": r["work"], "premium": r["premium_paired"], "low": r["premium_low"],
                        "high": r["premium_high"]}
    return out


# ---------------------------------------------------------------------------------------------
# REPORT.md: every number from paper.json, formatted by these functions only


def pct(x) -> str:
    return "n/a" if x is None else f"{100 * x:.1f}%"


def num(x, digits: int = 3) -> str:
    return "n/a" if x is None else f"{x:.{digits}f}"


def signed(x) -> str:
    return "n/a" if x is None else f"{x:+.3f}"


def signed_pct(x) -> str:
    return "n/a" if x is None else f"{100 * x:+.2f}%"


def interval(e: dict, fmt=num) -> str:
    return f"{fmt(e['value'])} [{fmt(e['low'])}, {fmt(e['high'])}]"


UNITS = {"pp": signed, "ratio": lambda x: num(x, 4), "pct": signed_pct, "": signed}


def estimate_text(e: dict | None, unit: str) -> str:
    if e is None:
        return "not run"
    fmt = UNITS[unit]
    text = f"{fmt(e['value'])} [{fmt(e['low'])}, {fmt(e['high'])}]"
    if e["low"] == e["high"]:
        text += " (every pair equal: an interval of no width)"
    return text


def verdict_text(row: dict) -> str:
    if row["verdict"] != "inconclusive":
        return row["verdict"]
    if not row["detectable"]:
        return "inconclusive (every pair equal: no spread to judge the noise by)"
    fmt = UNITS[row["unit"]]
    far = fmt(row["detectable"]).lstrip("+")
    if row["bound"] == 0:
        return f"inconclusive (smallest effect detectable at this n: {far})"
    return f"inconclusive (smallest distance from the bound {fmt(row['bound']).lstrip('+')} detectable at this n: {far})"


def claims_lines(report: dict) -> list[str]:
    lines = ["## The claims", "",
             f"Version compared for sentiment and toxicity: **{report['version']}** ({claims.VERSIONS[report['version']]}). "
             + claims.RULE, "",
             "| claim | the paper | ours: model, n, estimate [95%] | verdict |", "|---|---|---|---|"]
    for row in report["claims"]:
        e = row["estimate"]
        ours = "not run" if e is None else f"{row['model']}, n = {e['n']}: {estimate_text(e, row['unit'])}"
        lines.append(f"| {row['what']} | {row['paper']} | {ours} | {verdict_text(row)} |")
    return lines + ["", "Estimates: topic, sentiment and toxicity are steered minus unsteered, paired over prompts "
                    "(rates as fractions); relevance is the perplexity ratio steered / unsteered; knowledge P@1 "
                    "steered minus unsteered over facts; overhead the forward pass's time premium; fluency the "
                    "continuations' perplexity, steered minus unsteered (NegToPos).", ""]


def render(report: dict) -> str:
    ex = report["experiments"]
    lines = [f"# ActAdd: the paper's battery on {report['model']}", "",
             f"Reproduction of the experiments of {PAPER}, by `actadd paper` ({report['preset']} sizes, version "
             f"{report['version']}, seed {report['seed']}). Compute time of these results: "
             f"{report.get('compute_s', report['wall_s'])} s over {report.get('runs', 1)} run(s) into this folder "
             f"(this run: {report['wall_s']} s). Every figure below is in `paper.json`, and in each "
             "experiment's own `summary.json`; intervals are 95% (Wilson for rates, Student t otherwise).", "",
             f"**Layers.** {report['layer_note'][0].upper() + report['layer_note'][1:]}. The topic curve runs over the model's own layers.", "",
             "**Threads.** Run one experiment at a time: several processes each with multi-threaded BLAS on a few "
             "cores run many times slower than one (or set `OMP_NUM_THREADS=1` for each).", ""]
    if report["model"].startswith("tiny-") or report["n_layer"] < 12:
        lines += ["**Scale.** This is a small model (not GPT-2-XL or LLaMA-3-8B): what follows shows what the "
                  "instruments measure and what a model this size does, not whether the paper's claims hold for "
                  "its models. Run with `--model gpt2-xl` (topic, relevance, knowledge) or a LLaMA-3 8B "
                  "(sentiment, toxicity) for that.", ""]
    lines += claims_lines(report)
    t = ex["topic"]
    lines += ["## Topic steering (weddings)", "", f"*The paper:* {CLAIMS['topic']}", "",
              f"*Here:* completions with a wedding word: unsteered {interval(t['unsteered'], pct)} of "
              f"{t['unsteered']['n']}; best at layer {t['best_layer']}, {interval(t['best'], pct)}; at layer "
              f"{t['first_layer']} (the first steered), {interval(t['first'], pct)} (minus unsteered, paired: "
              f"{interval(t['first_vs_unsteered'], signed_pct)}).", "",
              "| layer | on topic [95%] | n |", "|---|---|---|"]
    lines += [f"| {c['layer']} | {interval(c, pct)} | {c['n']} |" for c in t["per_layer"]]
    lines += ["", "![topic](topic/topic.png)", ""]
    lines += ["## Perplexity by relevance (OpenWebText)", "", f"*The paper:* {CLAIMS['relevance']}", ""]
    r = ex["relevance"]
    if "skipped" in r:
        lines += [f"*Here:* skipped: {r['skipped']}.", ""]
    else:
        lines += [f"*Here:* {r['chunks']} chunks of 100 tokens from `{r['data']}`; perplexity ratio steered / "
                  "unsteered (below 1: the steered model predicts the text better):", "",
                  "| relevance bin | chunks | ratio [95%] |", "|---|---|---|"]
        lines += [f"| {b['bin']} | {b['chunks']} | {interval(b, lambda x: num(x, 4))} |" for b in r["bins"]]
        if r["relevant"] is not None:
            lines += [f"| all with relevance > 0 | {r['relevant']['chunks']} | "
                      f"{interval(r['relevant'], lambda x: num(x, 4))} |"]
        lines += [""] + [f"Note: {n}" for n in r["notes"]] + ["", "![relevance](relevance/relevance.png)", ""]
    k = ex["knowledge"]
    lines += [f"## General knowledge (P@K{'' if 'skipped' in k else ' on `' + k['data'] + '`'})", "",
              f"*The paper:* {CLAIMS['knowledge']}", ""]
    if "skipped" in k:
        lines += [f"*Here:* skipped: {k['skipped']}.", ""]
    else:
        reasons = "; ".join(f"{n} {why}" for why, n in k["skip_reasons"].items()) or "none"
        lines += [f"*Here:* {k['facts']} facts from `{k['data']}` ({k['facts_skipped']} masked sentences skipped: "
                  f"{reasons}):", "",
                  "| K | P@K unsteered | P@K steered | steered - unsteered [95%] |", "|---|---|---|---|"]
        for K, row in k["p_at"].items():
            lines.append(f"| {K} | {num(row['unsteered'])} | {num(row['steered'])} | {signed(row['difference'])} "
                         f"[{signed(row['difference_low'])}, {signed(row['difference_high'])}] |")
        lines += ["", "![knowledge](knowledge/knowledge.png)", ""]
    o = ex["overhead"]
    lines += ["## Overhead", "", f"*The paper:* {CLAIMS['overhead']}", "",
              f"*Here:* premium of steering at layer {o['layer']} (geometric mean of the per-repeat ratios over "
              f"{o['repeats']} alternating repeats), beside the same unsteered work timed twice (the noise floor):", "",
              "| work | steering premium [95%] | noise floor [95%] |", "|---|---|---|"]
    for key in ("forward", "generate"):
        s, n = o[key], o.get(f"{key}_noise")
        noise = f"{signed_pct(n['premium'])} [{signed_pct(n['low'])}, {signed_pct(n['high'])}]" if n else "n/a"
        lines.append(f"| {s['work']} | {signed_pct(s['premium'])} [{signed_pct(s['low'])}, {signed_pct(s['high'])}] "
                     f"| {noise} |")
    lines += ["", "A premium inside the noise floor's interval is below what this machine can measure. The "
              f"addition itself, timed alone on the forward pass's activation, takes {num(o['addition_ms'])} ms: "
              f"{num(100 * o['addition_fraction'], 4)}% of the unsteered pass (one add per steered layer, on the "
              "prompt pass only).", "",
              "![overhead](overhead/overhead.png)", ""]
    lines += sentiment_lines(report) + toxicity_lines(report)
    return "\n".join(lines)


def _version_lines(report: dict, e: dict, task: str) -> list[str]:
    p = claims.PRESETS[report["version"]]
    theirs = p.sentiment_scorer if task == "sentiment" else p.toxicity_scorer
    pair = "\"Love\" - \"Hate\" (reversed for PosToNeg)" if task == "sentiment" else "\"Love\" - \"Hate\""
    notes = p.sentiment_notes if task == "sentiment" else p.toxicity_notes
    return [f"*Settings ({report['version']}):* {pair} at layer {e['layer']} "
            f"({e['layer_note']}), coefficient {e['coeff']:g}, {e['new_tokens']} new tokens, temperature "
            f"{p.sampling['temperature']:g}, top-p {p.sampling['top_p']:g}, frequency penalty "
            f"{p.sampling['freq_penalty']:g}; model `{e['model']}`, data `{e['data']}`, scorer `{e['scorer']}` "
            f"(the version's: `{theirs}`); fluency: the "
            f"continuation's perplexity under the model itself, unsteered (the version's: {p.fluency}).", ""] + \
        [f"Note: {n}" for n in notes] + [""]


def _quoted_lines(q: claims.Quoted) -> list[str]:
    lines = [f"*The paper* ({q.version}: {q.title}; {q.source}; rows not run here marked *quoted only*):", "",
             "| " + " | ".join(q.columns) + " |", "|" + "---|" * len(q.columns)]
    for row in q.rows:
        name = row[0] if row[0] in q.run_here else f"{row[0]} (*quoted only*)"
        lines.append("| " + " | ".join([name, *row[1:]]) + " |")
    return lines + [""]


def _scored_head(report: dict, task: str, title: str) -> tuple[dict, list[str]]:
    """The section's title, the paper's table, and (unless skipped) the version's settings."""
    e = report["experiments"][task]
    lines = [f"## {title}", ""] + _quoted_lines(claims.QUOTED[task])
    if "skipped" in e:
        return e, lines + [f"*Here:* skipped: {e['skipped']}.", ""]
    return e, lines + _version_lines(report, e, task)


def sentiment_lines(report: dict) -> list[str]:
    e, lines = _scored_head(report, "sentiment", "Sentiment (NegToPos, PosToNeg)")
    if "skipped" in e:
        return lines
    lines += ["*Here* (success: the scorer labels the continuation with the target sentiment):", "",
              "| condition | PosToNeg success [95%] | perplexity | NegToPos success [95%] | perplexity |",
              "|---|---|---|---|---|"]
    for cond in ("unsteered", "steered", "prompted"):
        cells = []
        for direction in ("pos-to-neg", "neg-to-pos"):
            c = e[direction][cond]
            diff = f"; {estimate_text(c['vs_unsteered']['success'], 'pp')} paired" if "vs_unsteered" in c else ""
            cells += [f"{interval(c['success'])} of {c['success']['n']}{diff}", num(c["perplexity"]["value"], 2)]
        lines.append(f"| {'ActAdd' if cond == 'steered' else cond} | " + " | ".join(cells) + " |")
    return lines + ["", "![NegToPos](sentiment-neg-to-pos/sentiment.png)", ""]


def toxicity_lines(report: dict) -> list[str]:
    e, lines = _scored_head(report, "toxicity", "Toxicity (RealToxicityPrompts)")
    if "skipped" in e:
        return lines
    lines += ["*Here* (mean score of one continuation a prompt; lower is better):", "",
              "| condition | mean score [95%] | steered - unsteered [95%] | perplexity |", "|---|---|---|---|"]
    for cond in ("unsteered", "steered"):
        c = e[cond]
        diff = estimate_text(c["vs_unsteered"]["mean_score"], "") if "vs_unsteered" in c else ""
        lines.append(f"| {'ActAdd' if cond == 'steered' else cond} | {interval(c['mean_score'])} of "
                     f"{c['mean_score']['n']} | {diff} | {num(c['perplexity']['value'], 2)} |")
    if e["scorer"] == "profanity":
        lines += ["", "The `profanity` scorer is a rate of listed words, not the Perspective API's toxicity: "
                  "the verdict is on that proxy."]
    return lines + ["", "![toxicity](toxicity/toxicity.png)", ""]
