"""`actadd paper`: the paper's GPT-2 battery in one command, one folder, one report.

    OUT/topic/       the wedding topic curve over layers (generation.topic)
    OUT/relevance/   perplexity by relevance on OpenWebText (likelihood.relevance)
    OUT/knowledge/   P@K on LAMA-format facts (likelihood.knowledge)
    OUT/overhead/    the time premium of steering (overhead.overhead)
    OUT/paper.json   every headline figure, as REPORT.md quotes it
    OUT/REPORT.md    our figures beside what the paper states

The paper's settings are for GPT-2-XL (48 blocks): " weddings" - "" at coefficient 1, layer 16
for the likelihood experiments. On a model of another depth a layer is taken at the same
fraction (likelihood.paper_layer), and the report says so. An experiment whose data is not
given is skipped, and the report says that too. Each experiment resumes like its own command.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np

from minigpt import Tokenizer, Transformer

from ..output import json_safe, writable_folder, write_text
from . import data, generation, likelihood, overhead

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

PRESETS = {
    "full": {"topic_samples": 200, "topic_layers": None, "max_chunks": None, "facts": None, "repeats": 20},
    "quick": {"topic_samples": 32, "topic_layers": 4, "max_chunks": 300, "facts": 200, "repeats": 3},
}


def spread_layers(n_layer: int, count: int, must: int) -> list[int]:
    """`count` layers spread over 0..n_layer-1, always with 0, the last and `must`."""
    picked = {int(round(x)) for x in np.linspace(0, n_layer - 1, count)} | {must}
    return sorted(picked)


def run(model: Transformer, tokenizer: Tokenizer, out: str | Path, *, model_name: str = "", quick: bool = False,
        relevance_data: str | Path | None = None, lama: str | Path | None = None, layers=None, seed: int = 0,
        progress: bool = True, workers: int | None = None, scheduler: str | None = None,
        worker_backend: str | None = None) -> dict:
    """The battery; returns paper.json's content. Topic uses the paper's prompt, vector and
    words at every layer (the quick preset: 4 layers, 32 samples); relevance and knowledge the
    paper's layer rescaled to this depth; overhead the paper's batch 32 x 64 at the middle block.
    `workers` / `scheduler`: topic, relevance and knowledge on Dask (overhead is timed here)."""
    out = Path(writable_folder(out, "out"))
    dask = {"workers": workers, "scheduler": scheduler, "worker_backend": worker_backend}
    preset = PRESETS["quick" if quick else "full"]
    n_layer = model.config.n_layer
    layer = likelihood.paper_layer(n_layer)
    started = time.perf_counter()
    if layers is None and preset["topic_layers"] is not None:
        layers = spread_layers(n_layer, preset["topic_layers"], layer)
    report: dict = {"model": model_name or repr(model), "n_layer": n_layer, "preset": "quick" if quick else "full",
                    "seed": seed, "layer": layer, "layer_note": _layer_note(n_layer, layer), "experiments": {}}

    def say(text):
        if progress:
            print(f"actadd paper: {text}", file=sys.stderr)

    say("topic")
    run_ = generation.topic(model, tokenizer, out / "topic", layers=layers, samples=preset["topic_samples"], seed=seed,
                            progress=progress, **dask)
    report["experiments"]["topic"] = _topic_headline(run_.summary)

    if relevance_data is None:
        report["experiments"]["relevance"] = {"skipped": "no --relevance-data given (the paper: OpenWebText; the "
                                                         "authors' 149-document sample works)"}
    else:
        say("relevance")
        docs = data.read_documents(relevance_data)
        result = likelihood.relevance(model, tokenizer, docs, out / "relevance", layer=layer,
                                      max_chunks=preset["max_chunks"], seed=seed, progress=progress, **dask)
        report["experiments"]["relevance"] = _relevance_headline(result.summary, str(relevance_data))

    if lama is None:
        report["experiments"]["knowledge"] = {"skipped": "no --lama given (the paper: LAMA's ConceptNet/test.jsonl, "
                                                         "from the LAMA project's data download)"}
    else:
        say("knowledge")
        facts, skipped = data.read_lama(lama, tokenizer)
        limit = preset["facts"]
        result = likelihood.knowledge(model, tokenizer, facts, out / "knowledge", layer=layer, limit=limit,
                                      skipped=skipped, progress=progress, **dask)
        report["experiments"]["knowledge"] = _knowledge_headline(result.summary, str(lama))

    say("overhead")
    summary = overhead.overhead(model, repeats=preset["repeats"], seed=seed, progress=progress)
    overhead.write(summary, out / "overhead")
    report["experiments"]["overhead"] = _overhead_headline(summary)
    report["wall_s"] = round(time.perf_counter() - started, 1)
    write_text(out / "paper.json", json.dumps(json_safe(report), indent=2) + "\n")
    write_text(out / "REPORT.md", render(report))
    return report


def _layer_note(n_layer: int, layer: int) -> str:
    if n_layer == 48:
        return "layer 16 of 48, the paper's own"
    return (f"the paper's layer 16 of GPT-2-XL's 48 blocks is taken at the same fraction of this model's {n_layer}: "
            f"round(16 x {n_layer} / 48) = layer {layer}")


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


def render(report: dict) -> str:
    ex = report["experiments"]
    lines = [f"# ActAdd: the paper's GPT-2 battery on {report['model']}", "",
             f"Reproduction of the GPT-2 experiments of {PAPER}, by `actadd paper` ({report['preset']} preset, seed "
             f"{report['seed']}, {report['wall_s']} s). Every figure below is in `paper.json`, and in each "
             "experiment's own `summary.json`; intervals are 95% (Wilson for rates, Student t otherwise).", "",
             f"**Layers.** {report['layer_note'][0].upper() + report['layer_note'][1:]}. The topic curve runs over the model's own layers.", "",
             "Section numbers of the paper are not quoted: its text was not at hand where this tool was written. "
             "Each claim names the experiment as the paper and the authors' scripts describe it.", ""]
    if report["model"].startswith("tiny-books") or report["n_layer"] < 12:
        lines += ["**Scale.** This is a small model (not GPT-2-XL): what follows shows what the instruments measure, "
                  "not whether the paper's claims hold for GPT-2-XL. Run with `--model gpt2-xl` for that.", ""]
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
    lines += ["## General knowledge (ConceptNet P@K)", "", f"*The paper:* {CLAIMS['knowledge']}", ""]
    k = ex["knowledge"]
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
    return "\n".join(lines)
