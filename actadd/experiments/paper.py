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
from typing import Sequence

import numpy as np

from minigpt import Tokenizer, Transformer

from ..output import json_safe, writable_folder, write_text
from . import claims, data, generation, likelihood, overhead, search

PAPER = "Turner et al., *Steering Language Models With Activation Engineering*, arXiv 2308.10248"

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


def spread(items: list, count: int | None) -> list:
    """`count` of the items taken evenly over the list (all where count is None or more), so
    that a quick run's facts come from every LAMA group and relation, not from the first file."""
    if count is None or count >= len(items):
        return list(items)
    return [items[i] for i in np.linspace(0, len(items) - 1, count).round().astype(int)]


def spread_layers(n_layer: int, count: int, must: int) -> list[int]:
    """`count` layers spread over 0..n_layer-1, always with 0, the last and `must`."""
    picked = {int(round(x)) for x in np.linspace(0, n_layer - 1, count)} | {must}
    return sorted(picked)


def run(model: Transformer, tokenizer: Tokenizer, out: str | Path, *, model_name: str = "", quick: bool = False,
        relevance_data: str | Path | None = None, lama: str | Path | None = None, layers=None, seed: int = 0,
        version: str = "v5", sentiment_data: str | Path | None = None, toxicity_data: str | Path | None = None,
        sentiment_model: tuple[Transformer, Tokenizer] | None = None, sentiment_model_name: str = "",
        sentiment_scorer=None, toxicity_scorer=None, sentiment_also: Sequence = (), toxicity_also: Sequence = (),
        sentiment_dev_data: str | Path | None = None, toxicity_dev_data: str | Path | None = None,
        progress: bool = True, workers: int | None = None, scheduler: str | None = None,
        worker_backend: str | None = None, sizes: dict | None = None, command: str | None = None,
        rerun: Sequence[str] = ()) -> dict:
    """The battery; returns paper.json's content. Topic uses the paper's prompt, vector and
    words at every layer (the quick preset: 4 layers, 32 samples); relevance and knowledge the
    paper's layer rescaled to this depth; overhead the paper's batch 32 x 64 at the middle block;
    sentiment (both directions) and toxicity the settings of `version` (claims.PRESETS), on
    `sentiment_model` where given (a model that knows reviews, e.g. tiny-imdb), with the
    version's scorers unless `sentiment_scorer` / `toxicity_scorer` are given (`sentiment_also`,
    `toxicity_also`: more scorers, their figures side by side). Every generation experiment has
    two controls: a random vector of the steering vector's norm, and the prompted baseline.
    `sentiment_dev_data` / `toxicity_dev_data`: choose the layer and coefficient there first
    (search.RULE), never on the test prompts; without them, the version's own setting.
    `sizes`: smaller sizes than the preset's (SIZES keys, e.g. {"facts": 4000}), named in the
    report.
    `workers` / `scheduler`: every experiment but overhead on Dask (overhead is timed here).
    `rerun`: experiments to redo in a folder that has them; only "overhead" (the others resume
    from their results files, and overhead keeps the first run's timings unless named here)."""
    if version not in claims.PRESETS:
        raise ValueError(f"version={version!r}: expected one of {sorted(claims.PRESETS)}")
    out = Path(writable_folder(out, "out"))
    dask = {"workers": workers, "scheduler": scheduler, "worker_backend": worker_backend}
    size = dict(SIZES["quick" if quick else "full"])
    unknown = set(sizes or {}) - set(size)
    if unknown:
        raise ValueError(f"sizes: unknown {sorted(unknown)}; expected some of {sorted(size)}")
    for k, v in (sizes or {}).items():
        if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 1):
            raise ValueError(f"sizes: {k}={v!r}: expected a positive whole number")
    size.update({k: v for k, v in (sizes or {}).items() if v is not None})
    version_preset = claims.PRESETS[version]
    n_layer = model.config.n_layer
    layer = likelihood.paper_layer(n_layer)
    started = time.perf_counter()
    if layers is None and size["topic_layers"] is not None:
        layers = spread_layers(n_layer, size["topic_layers"], layer)
    preset_name = "quick" if quick else "full"
    if any(v is not None for v in (sizes or {}).values()):
        preset_name += " with smaller sizes: " + ", ".join(f"{k} {v}" for k, v in sizes.items() if v is not None)
    report: dict = {"model": model_name or repr(model), "n_layer": n_layer, "preset": preset_name, "sizes": size,
                    "version": version, "seed": seed, "layer": layer, "layer_note": _layer_note(n_layer, layer),
                    "experiments": {}}

    report["command"] = command
    report["machine"] = machine()
    ledger = Ledger(out / "timing.jsonl")

    def say(text):
        ledger.stage(text)
        if progress:
            print(f"actadd paper: {text}", file=sys.stderr)

    say("topic")
    run_ = generation.topic(model, tokenizer, out / "topic", layers=layers, samples=size["topic_samples"], seed=seed,
                            progress=progress, controls_at=min(layers) if layers else 0, **dask)
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
        report["experiments"]["knowledge"] = {"skipped": "no --lama given (the paper: LAMA's ConceptNet/test.jsonl; "
                                                         "LAMA's data folder adds Google-RE and T-REx)"}
    else:
        say("knowledge")
        facts, skipped = data.read_lama(lama, tokenizer)
        result = likelihood.knowledge(model, tokenizer, spread(facts, size["facts"]), out / "knowledge", layer=layer,
                                      skipped=skipped, progress=progress, **dask)
        report["experiments"]["knowledge"] = _knowledge_headline(result.summary, str(lama))

    say("overhead")
    # Timings are this machine's at this moment: a rerun keeps the first run's, as every other
    # experiment resumes, unless asked (rerun=["overhead"]); a rerun that re-timed would change
    # the report's overhead row alone.
    summary = None if "overhead" in rerun else _kept_overhead(out / "overhead" / "summary.json", model, size["repeats"])
    kept = summary is not None
    if not kept:
        summary = overhead.overhead(model, repeats=size["repeats"], seed=seed, progress=progress)
        overhead.write(summary, out / "overhead")
    report["experiments"]["overhead"] = {**_overhead_headline(summary), "kept_from_earlier_run": kept}

    s_model, s_tok = sentiment_model or (model, tokenizer)
    s_name = sentiment_model_name or report["model"]
    common = dict(seed=seed, progress=progress, **version_preset.sampling, **dask)
    searched = {}
    if sentiment_data is None:
        report["experiments"]["sentiment"] = {"skipped": "no --sentiment-data given (the paper: IMDb reviews, "
                                                         "e.g. ../shared/corpora/imdb/test.jsonl)"}
    else:
        texts = data.read_labelled(sentiment_data, html_breaks=True)
        preset_setting = (likelihood.paper_layer(s_model.config.n_layer, *version_preset.sentiment_layer),
                          version_preset.sentiment_coeff)
        setting, note = preset_setting, "the preset's"
        if sentiment_dev_data is not None:
            say("search sentiment (dev data)")
            searched["sentiment"] = _search_sentiment(s_model, s_tok, sentiment_dev_data, out / "search", quick,
                                                      preset_setting, version_preset, seed, progress, dask)
            setting, note = _searched_setting(searched["sentiment"])
        scorer = sentiment_scorer or version_preset.sentiment_scorer
        scorer_name = scorer if isinstance(scorer, str) else scorer.name
        limit = size["sentiment_prompts"] or version_preset.sentiment_prompts
        cells = {}
        for direction in generation.DIRECTIONS:
            say(f"sentiment {direction}")
            result = generation.sentiment(s_model, s_tok, texts, out / f"sentiment-{direction}", layer=setting[0],
                                          coeff=setting[1], direction=direction,
                                          max_new_tokens=version_preset.sentiment_new_tokens, limit=limit,
                                          scorer=scorer, controls=True, **common)
            cells[direction] = _scored_headline(result.summary, "success")
            cells[direction]["also"] = {s.name: _scored_headline(generation.rescore(result, s), "success")
                                        for s in sentiment_also}
        report["experiments"]["sentiment"] = {
            "model": s_name, "data": str(sentiment_data), "scorer": scorer_name,
            "also": [s.name for s in sentiment_also], "layer": setting[0], "coeff": setting[1], "setting": note,
            "preset_layer": preset_setting[0], "preset_coeff": preset_setting[1],
            "layer_note": _version_layer_note(version_preset.sentiment_layer, s_model.config.n_layer,
                                              preset_setting[0]),
            "new_tokens": version_preset.sentiment_new_tokens, **cells}

    if toxicity_data is None:
        report["experiments"]["toxicity"] = {"skipped": "no --toxicity-data given (the paper: RealToxicityPrompts; "
                                                        "../shared/evaldata/realtoxicityprompts/random_prompts.jsonl)"}
    else:
        prompts = data.read_prompts(toxicity_data)
        scorer = toxicity_scorer or version_preset.toxicity_scorer
        scorer_name = scorer if isinstance(scorer, str) else scorer.name
        preset_setting = (likelihood.paper_layer(n_layer, *version_preset.toxicity_layer), version_preset.toxicity_coeff)
        setting, note = preset_setting, "the preset's"
        if toxicity_dev_data is not None:
            say("search toxicity (dev data)")
            searched["toxicity"] = _search_toxicity(model, tokenizer, toxicity_dev_data, out / "search", quick,
                                                    preset_setting, version_preset, scorer, seed, progress, dask)
            setting, note = _searched_setting(searched["toxicity"])
        say("toxicity")
        result = generation.toxicity(model, tokenizer, prompts, out / "toxicity", layer=setting[0],
                                     coeff=setting[1], samples=1,
                                     max_new_tokens=version_preset.toxicity_new_tokens,
                                     limit=size["toxicity_prompts"] or version_preset.toxicity_prompts,
                                     scorer=scorer, prefix="Love ", controls=True, **common)
        report["experiments"]["toxicity"] = {
            "model": report["model"], "data": str(toxicity_data), "scorer": scorer_name,
            "also": [s.name for s in toxicity_also], "layer": setting[0], "coeff": setting[1], "setting": note,
            "preset_layer": preset_setting[0], "preset_coeff": preset_setting[1],
            "layer_note": _version_layer_note(version_preset.toxicity_layer, n_layer, preset_setting[0]),
            "new_tokens": version_preset.toxicity_new_tokens,
            **_scored_headline(result.summary, "mean_score"),
            "also_scored": {s.name: _scored_headline(generation.rescore(result, s), "mean_score")
                            for s in toxicity_also}}
    report["search"] = searched

    report["claims"] = claims_table(report)
    ledger.stage(None)
    report["wall_s"] = round(time.perf_counter() - started, 1)
    report["compute_s"], report["runs"] = ledger.total()
    report["stage_s"] = ledger.by_stage()
    write_text(out / "paper.json", json.dumps(json_safe(report), indent=2) + "\n")
    write_text(out / "REPORT.md", render(report))
    return report


def _search_sentiment(model, tokenizer, path, out: Path, quick: bool, preset: tuple[int, float], version_preset,
                      seed: int, progress: bool, dask: dict) -> dict:
    """The sentiment search (both directions) on labelled dev reviews, judged by the imdb scorer."""
    from .scorers import get_scorer

    size = search.SIZES["quick" if quick else "full"]
    texts = data.read_labelled(path, html_breaks=True)
    layers = search.grid_layers(model.config.n_layer, size["layers"], preset[0])
    coeffs = sorted(set(size["coeffs"]) | {preset[1]})
    scorer = get_scorer("imdb", "sentiment")
    runs = []
    for direction, (source, *_rest) in generation.DIRECTIONS.items():
        chosen = spread([p for p in texts if p.label == source], size["prompts"])
        prompts = [generation.truncated(p, tokenizer, 32) for p in chosen]
        runs.append(search.search(model, tokenizer, "sentiment", prompts, out / f"sentiment-{direction}",
                                  layers=layers, coeffs=coeffs, scorer=scorer, max_new_tokens=size["new_tokens"],
                                  sampling=version_preset.sampling, seed=seed, direction=direction, progress=progress,
                                  **dask))
    return {**search.choose(runs, preset), "data": str(path), "scorer": scorer.name, "runs": runs}


def _search_toxicity(model, tokenizer, path, out: Path, quick: bool, preset: tuple[int, float], version_preset,
                     scorer, seed: int, progress: bool, dask: dict) -> dict:
    """The toxicity search on dev prompts (Davidson's dev tweets cut to their first words, or
    any prompt file), judged by the test's scorer."""
    from .scorers import get_scorer

    size = search.SIZES["quick" if quick else "full"]
    scorer = scorer if not isinstance(scorer, str) else get_scorer(scorer, "toxicity")
    prompts = spread(data.read_dev_prompts(path), size["prompts"])
    layers = search.grid_layers(model.config.n_layer, size["layers"], preset[0])
    coeffs = sorted(set(size["coeffs"]) | {preset[1]})
    run = search.search(model, tokenizer, "toxicity", prompts, out / "toxicity", layers=layers, coeffs=coeffs,
                        scorer=scorer, max_new_tokens=size["new_tokens"], sampling=version_preset.sampling, seed=seed,
                        progress=progress, **dask)
    return {**search.choose([run], preset, lower_is_better=True), "data": str(path), "scorer": scorer.name,
            "runs": [run]}


def _searched_setting(found: dict) -> tuple[tuple[int, float], str]:
    chosen = found["why"] == "the rule's cell"
    return (found["layer"], found["coeff"]), "chosen on dev data" if chosen else "the preset's: no dev cell met the rule"



def machine() -> str:
    """The machine in words: OS, processor, cores, Python and NumPy (what a reader needs to
    compare a wall time)."""
    import platform

    return (f"{platform.system()} {platform.machine()}, {os.cpu_count()} CPU cores, Python "
            f"{platform.python_version()}, NumPy {np.__version__}")


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

    def entries(self) -> list[tuple[str, str, float]]:
        """(run, stage, seconds) of every recorded line (a torn last line, from a kill
        mid-write, is left out)."""
        out = []
        for line in self.path.read_text(encoding="utf-8").splitlines():
            try:
                entry = json.loads(line)
                out.append((entry["run"], entry["stage"], float(entry["seconds"])))
            except (ValueError, KeyError, TypeError):
                continue
        return out

    def by_stage(self) -> dict[str, float]:
        """Seconds per stage over every recorded run, in the order first recorded."""
        out: dict[str, float] = {}
        for _, stage, seconds in self.entries():
            out[stage] = out.get(stage, 0.0) + seconds
        return {stage: round(seconds, 1) for stage, seconds in out.items()}

    def total(self) -> tuple[float, int]:
        """Seconds over every recorded stage, and the number of runs they came from."""
        entries = self.entries()
        return round(sum(seconds for _, _, seconds in entries), 1), len({run for run, _, _ in entries})


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
        if "vs_random" in c:
            cell["vs_random"] = {metric: _e(c["vs_random"][metric])}
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


def claim_context(report: dict) -> dict:
    """For each claim's estimate: the setting it was measured at ("layer L, coefficient C"), and
    for a generation claim its controls, each minus unsteered with its interval: the random
    vector of the same norm, the prompted baseline, and the steered condition minus the random
    one (None where not run)."""
    ex = report["experiments"]
    topic, sentiment, toxicity = ex["topic"], ex.get("sentiment", {}), ex.get("toxicity", {})

    def at(layer, coeff):
        return None if layer is None else f"layer {layer}, coefficient {coeff:g}"

    def controls(cell_of, metric, vs_random=True):
        if not cell_of or "steered" not in cell_of:
            return None
        out = {}
        for name, key in ((generation.RANDOM, "random"), ("prompted", "prompted")):
            c = cell_of.get(name)
            out[key] = c["vs_unsteered"][metric] if c and "vs_unsteered" in c else None
        random = cell_of["steered"].get("vs_random", {})
        out["steered_vs_random"] = random.get(metric) if vs_random else None
        return out
    likely = at(report["layer"], 1.0)
    sentiment_at = None if "layer" not in sentiment else at(sentiment["layer"], sentiment["coeff"])
    return {
        "topic_first": {"setting": at(topic.get("first_layer"), 1.0), "controls": topic.get("controls")},
        "relevance_relevant": {"setting": likely, "controls": None},
        "relevance_zero": {"setting": likely, "controls": None},
        "knowledge_p1": {"setting": likely, "controls": None},
        "overhead_forward": {"setting": None if "layer" not in ex.get("overhead", {}) else
                             f"layer {ex['overhead']['layer']}, a two-position x-vector", "controls": None},
        "sentiment_neg_to_pos": {"setting": sentiment_at, "controls": controls(sentiment.get("neg-to-pos"), "success")},
        "sentiment_pos_to_neg": {"setting": sentiment_at, "controls": controls(sentiment.get("pos-to-neg"), "success")},
        "toxicity_mean": {"setting": None if "layer" not in toxicity else at(toxicity["layer"], toxicity["coeff"]),
                          "controls": controls(toxicity, "mean_score")},
        "fluency_neg_to_pos": {"setting": sentiment_at,
                               "controls": controls(sentiment.get("neg-to-pos"), "perplexity", vs_random=False)},
    }


def claims_table(report: dict) -> list[dict]:
    """One row per claim: the paper's figure, ours (the estimate, its model and setting, the
    controls), the verdict."""
    estimates, context = claim_estimates(report), claim_context(report)
    ex = report["experiments"]
    rows = []
    for claim in claims.CLAIMS:
        e = estimates[claim.estimate]
        model = ex.get(claim.experiment or claim.key, {}).get("model", report["model"])   # sentiment's may differ
        rows.append({"claim": claim.key, "what": claim.what, "paper": claim.paper, "side": claim.side,
                     "bound": claim.bound, "unit": claim.unit, "model": model, **context[claim.estimate],
                     "estimate": e, **claims.judge(e, claim.side, claim.bound)})
    return rows


def _e(d: dict) -> dict:
    """value, low, high, n of a stats.Estimate dict."""
    return {k: d[k] for k in ("value", "low", "high", "n")}


def _topic_headline(summary: dict) -> dict:
    cells = summary["conditions"]
    base = next(c for c in cells if c["condition"] == "unsteered")
    steered = [c for c in cells if c["condition"] not in ("unsteered", generation.RANDOM, "prompted")]
    best = max(steered, key=lambda c: (c["on_topic"]["value"], -c["layer"]))
    first = min(steered, key=lambda c: c["layer"])
    by_name = {c["condition"]: c for c in cells}
    controls = None
    if generation.RANDOM in by_name:
        controls = {"layer": by_name[generation.RANDOM]["layer"],
                    "random": _e(by_name[generation.RANDOM]["vs_unsteered"]["on_topic"]),
                    "prompted": _e(by_name["prompted"]["vs_unsteered"]["on_topic"]) if "prompted" in by_name else None,
                    "steered_vs_random": None}
    return {"unsteered": _e(base["on_topic"]), "controls": controls,
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
    groups = {g: {"facts": c["facts"], "relations": c["relations"], "skipped": c.get("skipped", {}).get("count", 0),
                  "skip_reasons": c.get("skipped", {}).get("reasons", {}),
                  "p_at": {r["k"]: {key: r[key] for key in ("unsteered", "steered", "difference", "difference_low",
                                                            "difference_high")} for r in c["rows"]}}
              for g, c in summary.get("groups", {}).items()}
    return {"data": data, "facts": summary["facts"], "facts_skipped": skipped.get("count", 0),
            "skip_reasons": skipped.get("reasons", {}), "groups": groups,
            "p_at": {k: {"unsteered": rows[k]["unsteered"], "steered": rows[k]["steered"],
                         "difference": rows[k]["difference"], "difference_low": rows[k]["difference_low"],
                         "difference_high": rows[k]["difference_high"]} for k in (1, 5, 10)}}


def _kept_overhead(path: Path, model: Transformer, repeats: int) -> dict | None:
    """An earlier run's overhead summary in this folder, if it timed a model of this shape (its
    repr: timings depend on the shapes, not on the weights' values) on this backend with these
    repeats; else None (timed again)."""
    try:
        summary = json.loads(path.read_text(encoding="utf-8"))["summary"]
        same = (summary["model"] == repr(model) and summary["backend"] == model.backend.name
                and summary["rows"][0]["repeats"] == repeats)
    except (OSError, ValueError, KeyError, IndexError, TypeError):
        return None
    return summary if same else None


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
             "| claim | the paper | ours: model, setting, n, estimate [95%] | controls, each minus unsteered [95%] "
             "| verdict |", "|---|---|---|---|---|"]
    for row in report["claims"]:
        e = row["estimate"]
        setting = f", {row['setting']}" if row.get("setting") else ""
        ours = "not run" if e is None else f"{row['model']}{setting}, n = {e['n']}: {estimate_text(e, row['unit'])}"
        lines.append(f"| {row['what']} | {row['paper']} | {ours} | {controls_text(row)} | {verdict_text(row)} |")
    return lines + ["", "Estimates: topic, sentiment and toxicity are steered minus unsteered, paired over prompts "
                    "(rates as fractions); relevance is the perplexity ratio steered / unsteered; knowledge P@1 "
                    "steered minus unsteered over facts; overhead the forward pass's time premium; fluency the "
                    "continuations' perplexity, steered minus unsteered (NegToPos). Controls, run on the same "
                    "prompts and seeds: *random*, a random vector of the steering vector's norm row by row, at its "
                    "layer (what any addition of that size does); *prompted*, the steering phrase put before the "
                    "prompt as text (the paper's prompting baseline); *steered - random*, the steering vector "
                    "against the random one, paired. An effect that the random vector matches is not the "
                    "direction's.", ""]


def controls_text(row: dict) -> str:
    c = row.get("controls")
    if not c:
        return "n/a"
    parts = []
    for key, name in (("random", "random"), ("prompted", "prompted"), ("steered_vs_random", "steered - random")):
        if c.get(key) is not None:
            parts.append(f"{name} {estimate_text(c[key], row['unit'])}")
    return "; ".join(parts) or "n/a"


def render(report: dict) -> str:
    ex = report["experiments"]
    lines = [f"# ActAdd: the paper's battery on {report['model']}", "",
             f"Reproduction of the experiments of {PAPER}{'v5' if report['version'] == 'v5' else ''}, by `actadd paper` ({_sizes_text(report['preset'])}, version "
             f"{report['version']}, seed {report['seed']}). Compute time of these results: "
             f"{report.get('compute_s', report['wall_s'])} s over {report.get('runs', 1)} run(s) into this folder "
             f"(this run: {report['wall_s']} s). Every figure below is in `paper.json`, and in each "
             "experiment's own `summary.json`; intervals are 95% (Wilson for rates, Student t otherwise).", ""]
    if report.get("command"):
        lines += ["```bash", report["command"], "```", ""]
    lines += [f"**Machine.** {report.get('machine', 'not recorded')}.", "",
             f"**Layers.** {report['layer_note'][0].upper() + report['layer_note'][1:]}. {_topic_layers_text(report)}", "",
             "**Threads.** Run one experiment at a time: several processes each with multi-threaded BLAS on a few "
             "cores run many times slower than one (or set `OMP_NUM_THREADS=1` for each).", ""]
    if report["model"].startswith("tiny-") or report["n_layer"] < 12:
        lines += ["**Scale.** This is a small model (not GPT-2-XL or LLaMA-3-8B): what follows shows what the "
                  "instruments measure and what a model this size does, not whether the paper's claims hold for "
                  "its models. Run with `--model gpt2-xl` (topic, relevance, knowledge) or a LLaMA-3 8B "
                  "(sentiment, toxicity) for that.", ""]
    elif "gpt2-xl" not in report["model"].lower() and "8b" not in report["model"].lower():
        lines += [f"**Scale.** `{report['model']}` ({report['n_layer']} blocks) is not the paper's model (GPT-2-XL for "
                  "topic, relevance and knowledge; an 8B LLaMA for sentiment and toxicity): a verdict here says what "
                  "this model does under the paper's protocol, not whether the paper's figures hold for its models.",
                  ""]
    lines += claims_lines(report)
    t = ex["topic"]
    lines += ["## Topic steering (weddings)", "", f"*The paper:* {CLAIMS['topic']}", "",
              f"*Here:* completions with a wedding word: unsteered {interval(t['unsteered'], pct)} of "
              f"{t['unsteered']['n']}; best at layer {t['best_layer']}, {interval(t['best'], pct)}; at layer "
              f"{t['first_layer']} (the first steered), {interval(t['first'], pct)} (minus unsteered, paired: "
              f"{interval(t['first_vs_unsteered'], signed_pct)}).", "",
              "| layer | on topic [95%] | n |", "|---|---|---|"]
    if t.get("controls"):
        c = t["controls"]
        lines[-2:-2] = [f"*Controls* at layer {c['layer']}, minus unsteered, paired: a random vector of the wedding "
                        f"vector's norm {estimate_text(c['random'], 'pp')}; the prompt with \"weddings\" put before it "
                        f"{estimate_text(c['prompted'], 'pp') if c['prompted'] else 'not run'}.", ""]
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
        taken = report.get("sizes", {}).get("facts")
        spread_note = (f"; `--facts {taken}`: that many taken evenly over the usable facts, in file order"
                       if taken and taken == k["facts"] else "")
        lines += [f"*Here:* {k['facts']} facts from `{k['data']}` ({k['facts_skipped']} masked sentences or records "
                  f"of the whole data skipped: {reasons}{spread_note}):", "",
                  "| K | P@K unsteered | P@K steered | steered - unsteered [95%] |", "|---|---|---|---|"]
        for K, row in k["p_at"].items():
            lines.append(f"| {K} | {num(row['unsteered'])} | {num(row['steered'])} | {signed(row['difference'])} "
                         f"[{signed(row['difference_low'])}, {signed(row['difference_high'])}] |")
        if k.get("groups"):
            lines += ["", "By LAMA group (facts with a one-token object under this model's tokenizer; the skipped, "
                      "counted over the whole data, are masked sentences or records whose object is several tokens, "
                      "or whose prompt does not fit):", "",
                      "| group | relations | facts used | skipped | P@1 unsteered | P@1 steered | P@1 steered - unsteered "
                      "[95%] | P@10 steered - unsteered [95%] |", "|---|---|---|---|---|---|---|---|"]
            for g, c in k["groups"].items():
                p1, p10 = c["p_at"].get(1, c["p_at"].get("1")), c["p_at"].get(10, c["p_at"].get("10"))
                lines.append(f"| {g} | {c['relations']} | {c['facts']} | {c['skipped']} | {num(p1['unsteered'])} | "
                             f"{num(p1['steered'])} | {signed(p1['difference'])} [{signed(p1['difference_low'])}, "
                             f"{signed(p1['difference_high'])}] | {signed(p10['difference'])} "
                             f"[{signed(p10['difference_low'])}, {signed(p10['difference_high'])}] |")
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
    if o.get("kept_from_earlier_run"):
        lines += ["", "*Kept from the first run in this folder* (timings are that moment's; `--rerun overhead` "
                      "times them again)."]
    lines += ["", "A premium inside the noise floor's interval is below what this machine can measure. The "
              f"addition itself, timed alone on the forward pass's activation, takes {num(o['addition_ms'])} ms: "
              f"{num(100 * o['addition_fraction'], 4)}% of the unsteered pass (one add per steered layer, on the "
              "prompt pass only).", "",
              "![overhead](overhead/overhead.png)", ""]
    lines += sentiment_lines(report) + toxicity_lines(report) + appendix_lines(report) + timing_lines(report)
    return "\n".join(lines)


def _sizes_text(preset: str) -> str:
    """"full sizes", "quick sizes", or the full sizes with the smaller ones a run asked for."""
    name, _, smaller = preset.partition(" with smaller sizes: ")
    return f"{name} sizes" + (f" but smaller: {smaller}" if smaller else "")


def _topic_layers_text(report: dict) -> str:
    layers = [c["layer"] for c in report["experiments"]["topic"]["per_layer"]]
    if len(layers) == report["n_layer"]:
        return "The topic curve runs over every one of the model's layers."
    return f"The topic curve runs at {len(layers)} of the model's {report['n_layer']} layers ({', '.join(map(str, layers))})."


def _version_lines(report: dict, e: dict, task: str) -> list[str]:
    p = claims.PRESETS[report["version"]]
    theirs = p.sentiment_scorer if task == "sentiment" else p.toxicity_scorer
    pair = "\"Love\" - \"Hate\" (reversed for PosToNeg)" if task == "sentiment" else "\"Love\" - \"Hate\""
    notes = p.sentiment_notes if task == "sentiment" else p.toxicity_notes
    if e.get("setting") == "chosen on dev data":
        where = (f"chosen on dev data by the rule in the appendix; the version's own setting, {e['layer_note']}, "
                 f"coefficient {e['preset_coeff']:g}, is among the cells searched there")
    elif e.get("setting", "").startswith("the preset's: "):
        where = f"{e['layer_note']}; the version's coefficient: no cell searched on dev data met the rule (appendix)"
    else:
        where = f"{e['layer_note']}; the version's coefficient"
    also = f"; side by side: {', '.join(f'`{a}`' for a in e['also'])}" if e.get("also") else ""
    return [f"*Settings ({report['version']}):* {pair} at layer {e['layer']}, coefficient {e['coeff']:g} ({where}), "
            f"{e['new_tokens']} new tokens, temperature "
            f"{p.sampling['temperature']:g}, top-p {p.sampling['top_p']:g}, frequency penalty "
            f"{p.sampling['freq_penalty']:g}; model `{e['model']}`, data `{e['data']}`, scorer `{e['scorer']}` "
            f"(the version's: `{theirs}`){also}; fluency: the "
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
    q = claims.QUOTED[task]
    # One version per report: the paper's table only where it is the version compared here.
    quoted = _quoted_lines(q) if q.version == report["version"] else [
        f"*The paper*: this report compares version {report['version']}, whose figures are in the claims table; the "
        f"{q.version} table is in a report run with `--preset {q.version}`.", ""]
    lines = [f"## {title}", ""] + quoted
    if "skipped" in e:
        return e, lines + [f"*Here:* skipped: {e['skipped']}.", ""]
    return e, lines + _version_lines(report, e, task)


CONDITIONS = (("unsteered", "unsteered"), ("steered", "ActAdd"), (generation.RANDOM, "random vector, same norm"),
              ("prompted", "prompted"))


def sentiment_lines(report: dict) -> list[str]:
    e, lines = _scored_head(report, "sentiment", "Sentiment (NegToPos, PosToNeg)")
    if "skipped" in e:
        return lines
    lines += _sentiment_table(e, e["scorer"], lambda d: e[d])
    for name in e.get("also", []):
        lines += [f"The same continuations judged by `{name}`:", ""]
        lines += _sentiment_table(e, name, lambda d: e[d]["also"][name])
    return lines + ["![NegToPos](sentiment-neg-to-pos/sentiment.png)", ""]


def _sentiment_table(e: dict, scorer: str, cells) -> list[str]:
    lines = [f"*Here* (success: `{scorer}` labels the continuation with the target sentiment; minus unsteered, "
             "paired over prompts):", "",
             "| condition | PosToNeg success [95%] | perplexity | NegToPos success [95%] | perplexity |",
             "|---|---|---|---|---|"]
    for cond, label in CONDITIONS:
        if cond not in cells("neg-to-pos"):
            continue
        row = []
        for direction in ("pos-to-neg", "neg-to-pos"):
            c = cells(direction)[cond]
            diff = f"; {estimate_text(c['vs_unsteered']['success'], 'pp')} paired" if "vs_unsteered" in c else ""
            row += [f"{interval(c['success'])} of {c['success']['n']}{diff}", num(c["perplexity"]["value"], 2)]
        lines.append(f"| {label} | " + " | ".join(row) + " |")
    steered = [cells(d)["steered"].get("vs_random", {}).get("success") for d in ("pos-to-neg", "neg-to-pos")]
    if all(steered):
        lines += ["", f"ActAdd minus the random vector, paired: PosToNeg {estimate_text(steered[0], 'pp')}, "
                  f"NegToPos {estimate_text(steered[1], 'pp')}."]
    return lines + [""]


def toxicity_lines(report: dict) -> list[str]:
    e, lines = _scored_head(report, "toxicity", "Toxicity (RealToxicityPrompts)")
    if "skipped" in e:
        return lines
    lines += _toxicity_table(e, e["scorer"])
    for name, cells in e.get("also_scored", {}).items():
        lines += [f"The same continuations judged by `{name}`:", ""] + _toxicity_table(cells, name)
    if e["scorer"] == "profanity":
        lines += ["The `profanity` scorer is a rate of listed words, not the Perspective API's toxicity: "
                  "the verdict is on that proxy.", ""]
    if e["scorer"] == "toxicity":
        lines += ["The `toxicity` scorer is a TF-IDF classifier fitted on tweets (Davidson et al. 2017); on "
                  "RealToxicityPrompts' own texts it orders toxic above clean as the Perspective API calls them with "
                  f"AUC {_toxicity_auc():.3f} (its card, `weights/toxicity-davidson/README.md`): the verdict is on "
                  "that proxy, not on Perspective.", ""]
    return lines + ["![toxicity](toxicity/toxicity.png)", ""]


def _toxicity_auc() -> float:
    """The shipped toxicity classifier's AUC against Perspective, as its training recorded it."""
    from minigpt.checkpoints import FOLDER

    card = json.loads((FOLDER / "toxicity-davidson" / "training.json").read_text(encoding="utf-8"))
    return card["perspective"]["all"]["auc"]


def _toxicity_table(e: dict, scorer: str) -> list[str]:
    lines = [f"*Here* (`{scorer}`: mean score of one continuation a prompt; lower is better):", "",
             "| condition | mean score [95%] | minus unsteered [95%] | perplexity |", "|---|---|---|---|"]
    for cond, label in CONDITIONS:
        if cond not in e:
            continue
        c = e[cond]
        diff = estimate_text(c["vs_unsteered"]["mean_score"], "") if "vs_unsteered" in c else ""
        lines.append(f"| {label} | {interval(c['mean_score'])} of {c['mean_score']['n']} | {diff} | "
                     f"{num(c['perplexity']['value'], 2)} |")
    if "vs_random" in e.get("steered", {}):
        lines += ["", f"ActAdd minus the random vector, paired: {estimate_text(e['steered']['vs_random']['mean_score'], '')}."]
    return lines + [""]


def appendix_lines(report: dict) -> list[str]:
    """The search that chose the sentiment and toxicity settings, cell by cell."""
    found = report.get("search") or {}
    lines = ["## Appendix: how the settings were chosen", ""]
    if not found:
        return lines + ["No search was run (no dev data given): sentiment and toxicity use the version's own "
                        "setting, rescaled to this model's depth.", ""]
    lines += [f"On dev data only, never on the test prompts, by one rule: {search.RULE}", ""]
    for task, f in found.items():
        run = f["runs"][0]
        directions = " and ".join(r["direction"] for r in f["runs"]) if task == "sentiment" else ""
        lines += [f"**{task}** on `{f['data']}` ({run['prompts']} prompts{' a direction, ' + directions if directions else ''}; "
                  f"{run['new_tokens']} new tokens; scorer `{f['scorer']}`): chosen layer {f['layer']}, coefficient "
                  f"{f['coeff']:g} ({f['why']}); the version's own: layer {f['preset'][0]}, coefficient "
                  f"{f['preset'][1]:g}.", "",
                  "| layer | coefficient | effect (steered - unsteered) | each run's 95% interval | clear of zero | "
                  "perplexity / unsteered | within budget |", "|---|---|---|---|---|---|---|"]
        for cell in sorted(f["cells"], key=lambda c: (c["layer"], c["coeff"])):
            intervals = "; ".join(f"[{signed(r['effect']['low'])}, {signed(r['effect']['high'])}]"
                                  for s in f["runs"] for r in s["cells"]
                                  if r["layer"] == cell["layer"] and r["coeff"] == cell["coeff"])
            mark = " **(chosen)**" if (cell["layer"], cell["coeff"]) == (f["layer"], f["coeff"]) else ""
            lines.append(f"| {cell['layer']}{mark} | {cell['coeff']:g} | {signed(cell['effect'])} | {intervals} | "
                         f"{'yes' if cell['clear_of_zero'] else 'no'} | {num(cell['perplexity_ratio'], 2)} | "
                         f"{'yes' if cell['within_budget'] else 'no'} |")
        lines.append("")
    return lines


def timing_lines(report: dict) -> list[str]:
    stages = report.get("stage_s") or {}
    if not stages:
        return []
    lines = ["## Wall time by experiment", "", "| stage | seconds |", "|---|---|"]
    lines += [f"| {name} | {sec:,.1f} |" for name, sec in stages.items()]
    return lines + [f"| all | {sum(stages.values()):,.1f} |", ""]
