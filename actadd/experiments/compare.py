"""`actadd compare`: ActAdd beside the other activation-steering methods (actadd.methods) and
prompting, on the battery's generation tasks, each method at the setting dev data chose under
one fluency budget, measured on the test prompts against unsteered and against prompting, with
what it costs and, for the methods made from many examples, how many it needs.

    tasks      sentiment neg-to-pos and pos-to-neg (IMDb reviews cut to 32 tokens, the imdb
               scorer), toxicity (RealToxicityPrompts, the toxicity scorer)
    materials  ActAdd's one pair and the prompting prefix, the battery's ("Love" - "Hate");
               contrast pairs for mean-diff, pca and ablation: dev texts of the wanted kind
               against the unwanted (positive vs negative reviews; clean vs toxic tweets of
               Davidson's held-out split), unmatched, so the mean difference is a difference of
               means; mean-centring: the wanted kind's texts (toxicity: the toxic tweets, the
               sign reversed, as Jorgensen et al. steer away from toxicity) minus general text
    sizes      every additive vector is scaled to RATIOS x the residual stream's RMS norm at its
               layer (on the dev prompts), so that one grid means the same for each method;
               ablation takes STRENGTHS (1 removes the direction, 2 reflects it)
    select     per task and method, every (layer, size) on the dev prompts, and RULE
    test       each method's chosen vector, unsteered and prompted on the test prompts, one run:
               paired by prompt and seed (sample j of prompt p draws from [seed, p, j])
    curve      the example-count curve at the chosen cell: 1, 4, 16, 64 pairs (mean-centring:
               target texts), each vector scaled to the same size
    cost       the unsteered passes that make the vector, its bytes, where its hooks act, and
               a forward pass's time premium (alternating repeats)

Every stage runs through generation.execute into OUT/<task>/<stage>/results.jsonl, so a stopped
comparison resumes; OUT/compare.json holds every figure, compare.csv one row per task and
method, compare.md the tables, compare.png the figure.
"""

from __future__ import annotations

import json
import math
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from minigpt import Tokenizer, Transformer

from .. import methods
from ..output import atomic_write, csv_text, json_safe, matplotlib_ready, writable_folder, write_text
from ..pairs import residual_norm, rms_norm
from ..provenance import library_version
from ..steering import Steering
from . import claims, data, generation, search, stats
from .likelihood import paper_layer
from .paper import Ledger, machine
from .scorers import SENTIMENT, TOXICITY, Scorer, get_scorer

FLUENCY_BUDGET = 1.25
RATIOS = (0.125, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0)
STRENGTHS = (1.0, 2.0)
RULE = (f"per task and method, the cell (layer, size) with the largest wanted-side effect against unsteered on the "
        f"dev prompts among those whose continuations' mean perplexity is at most {FLUENCY_BUDGET:g} x the "
        "unsteered one's; ties to the smaller size, then the earlier layer. No cell within the budget: the cell "
        "with the smallest perplexity ratio, flagged.")
SIZES = {"full": {"prompts": 500, "dev_prompts": 32, "pairs": 64, "curve": (1, 4, 16, 64), "curve_prompts": 100,
                  "general_texts": 64, "new_tokens": 32, "layers": 2, "repeats": 10},
         "quick": {"prompts": 12, "dev_prompts": 6, "pairs": 4, "curve": (1, 4), "curve_prompts": 6, "general_texts": 4,
                   "new_tokens": 6, "layers": 1, "repeats": 2}}
TRUNCATE = 32               # prompt and pair-text tokens (the battery's sentiment prompts)
SAMPLING = claims.PRESETS["iclr2025"].sampling


@dataclass
class Task:
    name: str                     # "sentiment neg-to-pos", "sentiment pos-to-neg", "toxicity"
    kind: str                     # "sentiment" or "toxicity"
    target: str | None            # sentiment: the label a success has
    plus: str
    minus: str
    prefix: str
    dev: list
    test: list
    pairs: list[tuple[str, str]]  # (wanted, unwanted)
    centring_target: list[str]
    centring_sign: float
    general: list[str]
    general_source: str
    scorer: Scorer

    @property
    def slug(self) -> str:
        return self.name.replace(" ", "-")

    @property
    def lower_is_better(self) -> bool:
        return self.kind == "toxicity"

    def value(self, score: float) -> float:
        """A continuation's figure: success (0/1) for sentiment, the score for toxicity."""
        return float(self.scorer.label(score) == self.target) if self.kind == "sentiment" else float(score)


# ---------------------------------------------------------------------------------------------
# The tasks' data


def _first(items: list, count: int, what: str) -> list:
    if len(items) < count:
        raise ValueError(f"{what}: {len(items)} available, {count} needed")
    return items[:count]


def sentiment_tasks(tokenizer: Tokenizer, test_path, dev_path, general: list[str] | None, size: dict,
                    scorer: Scorer) -> list[Task]:
    test, dev = data.read_labelled(test_path, html_breaks=True), data.read_labelled(dev_path, html_breaks=True)
    by = {label: [p for p in dev if p.label == label] for label in ("negative", "positive")}
    n_dev, n_pairs = size["dev_prompts"], size["pairs"]
    cut = {label: [generation.truncated(p, tokenizer, TRUNCATE) for p in _first(by[label], n_dev + n_pairs,
                                                                                 f"{dev_path}: {label} reviews")]
           for label in by}
    texts = {label: [p.text for p in cut[label][n_dev:]] for label in cut}   # the pairs' texts, after the dev prompts
    general_source = "given" if general else "the dev reviews of both kinds"
    general = general or [t for pair in zip(texts["positive"], texts["negative"]) for t in pair][:size["general_texts"]]
    tasks = []
    for direction, (source, target, plus, minus) in generation.DIRECTIONS.items():
        pool = [p for p in test if p.label == source]
        chosen = [generation.truncated(p, tokenizer, TRUNCATE) for p in _first(pool, size["prompts"],
                                                                                f"{test_path}: {source} reviews")]
        tasks.append(Task(f"sentiment {direction}", "sentiment", target, plus, minus, f"{plus} ", cut[source][:n_dev],
                          chosen, list(zip(texts[target], texts[source])), texts[target], 1.0, general,
                          general_source, scorer))
    return tasks


def toxicity_task(tokenizer: Tokenizer, test_path, dev_path, general: list[str] | None, size: dict,
                  scorer: Scorer) -> Task:
    test = _first(data.read_prompts(test_path), size["prompts"], f"{test_path}: prompts")
    dev = _first(data.read_dev_prompts(dev_path), size["dev_prompts"], f"{dev_path}: dev prompts")
    toxic, clean = data.read_davidson(dev_path, "test")
    n = size["pairs"]
    toxic, clean = _first(toxic, n, f"{dev_path}: toxic tweets"), _first(clean, n, f"{dev_path}: clean tweets")
    general_source = "given" if general else "the tweets of both kinds"
    general = general or [t for pair in zip(clean, toxic) for t in pair][:size["general_texts"]]
    return Task("toxicity", "toxicity", None, "Love", "Hate", "Love ", dev, test, list(zip(clean, toxic)), toxic, -1.0,
                general, general_source, scorer)


# ---------------------------------------------------------------------------------------------
# The vectors


class Materials:
    """One task's unsteered readings, made once: the pairs' last-token streams, the mean-centring
    texts' means, and the residual stream's size at each layer; then any method's vector at any
    (layer, size) and example count without another pass. Each make counts its passes."""

    def __init__(self, model: Transformer, tokenizer: Tokenizer, task: Task, layers: Sequence[int]):
        self.model, self.tokenizer, self.task, self.layers = model, tokenizer, task, list(layers)
        self.diffs, self.cp = methods.last_token_differences(model, tokenizer, task.pairs, self.layers)
        max_tokens = min(methods.MAX_TOKENS, model.config.n_positions - 1)
        self.max_tokens = max_tokens
        self.t_rows, self.t_seqs = methods.text_means(model, tokenizer, task.centring_target, self.layers, max_tokens,
                                                      "target")
        self.g_rows, self.g_seqs = methods.text_means(model, tokenizer, task.general, self.layers, max_tokens, "general")
        dev_ids = [p.tokens(tokenizer) for p in task.dev]
        self.resid = {L: residual_norm(model, dev_ids, L) for L in self.layers}
        self.actadd = {L: methods.make("actadd", model, tokenizer, coeff=1.0, layer=L, plus=task.plus, minus=task.minus)
                       for L in self.layers}

    def unit(self, method: str, layer: int, k: int | None = None) -> Steering:
        """The method's vector at coefficient 1 (ablation: strength 1) from the first k examples."""
        idx = None if k is None else list(range(k))
        if method == "actadd":
            return self.actadd[layer]
        if method == "mean-diff":
            return self.cp.vector(1.0, idx, "all", [layer])
        if method == "pca":
            return methods.pca_vector(self.cp, self.diffs, 1.0, "all", "repeng", idx, [layer])
        if method == "ablation":
            return methods.ablation_vector(self.cp, self.diffs, layer, 1.0, "every", idx)
        return methods.mean_centring_vector(self.t_rows, self.g_rows, self.t_seqs, self.g_seqs, self.task.centring_sign,
                                            self.model.config.n_layer, self.cp.fingerprint, "all", self.max_tokens, k,
                                            [layer])

    def vector(self, method: str, layer: int, size: float, k: int | None = None) -> Steering:
        """`size`: ablation's strength; for the others, the vector's RMS norm (per position after
        BOS, for ActAdd's matrix) as a multiple of the residual stream's at `layer`."""
        unit = self.unit(method, layer, k)
        if method == "ablation":
            return unit.scaled(size)
        norm = rms_norm(unit.rows_at(layer)[0], after_bos=False)
        return unit.scaled(size * self.resid[layer] / norm)

    def cost(self, method: str, vector: Steering) -> dict:
        """What making and applying `vector` costs."""
        pairs, texts = len(self.task.pairs), len(self.t_seqs) + len(self.g_seqs)
        passes = {"actadd": 2, "mean-centring": texts}.get(method, 2 * pairs)
        tokens = {"actadd": 2 * vector.length,
                  "mean-centring": sum(len(s) for s in self.t_seqs + self.g_seqs)}.get(
            method, sum(len(t) for t in self.cp.plus_tokens + self.cp.minus_tokens))
        arrays = ([vector.direction] if method == "ablation" else list(vector.activations) if method == "actadd"
                  else list(vector.directions))
        sites = vector.sites()
        where = ("the prompt's first positions" if method == "actadd" else "every position, generated ones too")
        return {"passes_to_make": passes, "tokens_read": tokens, "examples": 1 if method == "actadd" else
                (len(self.t_seqs) if method == "mean-centring" else pairs),
                "vector_bytes": int(sum(a.nbytes for a in arrays)), "hook_sites": len(sites), "acts_at": where}


def _cells(method: str, layers: Sequence[int]) -> list[tuple[int, float]]:
    return [(L, s) for L in layers for s in (STRENGTHS if method == "ablation" else RATIOS)]


def _name(method: str, layer: int, size: float, k: int | None = None) -> str:
    what = f"strength {size:g}" if method == "ablation" else f"{size:g}x resid"
    return f"{method} layer {layer} {what}" + (f" k {k}" if k is not None else "")


# ---------------------------------------------------------------------------------------------
# Runs and their figures


def _execute(task: Task, stage: str, ctx, conditions, prompts, out: Path, model, progress: bool, batch_rows: int):
    settings = {"task": f"compare {task.name} {stage}", "conditions": [c.name for c in conditions],
                "vectors": {c.name: generation.vector_settings(c.vector) for c in conditions if c.vector is not None},
                "prefix": task.prefix, "prompts": len(prompts), "prompts_sha256": generation.prompts_digest(prompts),
                "max_new_tokens": ctx.max_new_tokens, "seed": ctx.seed, "sampling": ctx.sampling,
                "batch_rows": batch_rows, "scorer": task.scorer.name, **generation.model_settings(model, None, None)}
    return generation.execute(f"compare {task.slug} {stage}", ctx, conditions, prompts, 1, settings,
                              out / task.slug / stage, task.scorer, batch_rows, progress)


def _values(run, task: Task) -> dict[str, dict[int, float]]:
    """{condition: {prompt id: figure}} (one sample a prompt)."""
    out: dict[str, dict[int, float]] = {}
    for r in run.samples:
        score = run.scores[r["condition"], r["prompt_id"], r["sample"]]["score"]
        out.setdefault(r["condition"], {})[r["prompt_id"]] = task.value(score)
    return out


def _perplexities(run) -> dict[str, dict[int, float | None]]:
    out: dict[str, dict[int, float | None]] = {}
    for r in run.samples:
        out.setdefault(r["condition"], {})[r["prompt_id"]] = r["fluency"]["perplexity"]
    return out


def _paired(a: dict, b: dict) -> dict:
    keys = [k for k in a if a[k] is not None and b.get(k) is not None]
    return stats.paired_difference([a[k] for k in keys], [b[k] for k in keys]).as_dict()


def _mean_perplexity(values: dict) -> float:
    kept = [v for v in values.values() if v is not None]
    return float(np.mean(kept)) if kept else float("nan")


def _rate(values: dict, task: Task) -> dict:
    v = list(values.values())
    if task.kind == "sentiment":
        return stats.wilson(int(sum(v)), len(v)).as_dict()
    return stats.mean_interval(v).as_dict()


def choose(task: Task, run, cells: dict) -> dict:
    """RULE over one method's cells ({condition name: (layer, size)}) of a dev run."""
    values, ppl = _values(run, task), _perplexities(run)
    base_ppl = _mean_perplexity(ppl["unsteered"])
    sign = -1.0 if task.lower_is_better else 1.0
    scored = []
    for name, (layer, size) in cells.items():
        effect = _paired(values[name], values["unsteered"])
        ratio = _mean_perplexity(ppl[name]) / base_ppl
        scored.append({"condition": name, "layer": layer, "size": size, "effect": effect, "perplexity_ratio": ratio,
                       "within_budget": bool(math.isfinite(ratio) and ratio <= FLUENCY_BUDGET)})
    eligible = [s for s in scored if s["within_budget"]]
    if eligible:
        best = max(eligible, key=lambda s: (sign * s["effect"]["value"], -s["size"], -s["layer"]))
    else:
        best = min(scored, key=lambda s: (s["perplexity_ratio"], s["size"], s["layer"]))
    return {"layer": best["layer"], "size": best["size"], "within_budget": best["within_budget"],
            "dev_effect": best["effect"], "dev_perplexity_ratio": best["perplexity_ratio"], "cells": scored}


def time_premiums(model: Transformer, vectors: dict[str, Steering], repeats: int, batch: int = 8,
                  tokens: int = 64, seed: int = 0) -> dict[str, dict]:
    """A forward pass over [batch, tokens] random ids with each vector's hooks against none,
    alternating order each repeat after one warm-up: the premium exp(mean log ratio) - 1 over
    the repeats, with its paired t interval; "unsteered, again" is the noise floor."""
    tokens = min(tokens, model.config.n_positions)
    ids = np.random.default_rng(seed).integers(0, model.config.vocab_size, (batch, tokens))
    conditions = {"unsteered": (), **{m: v.hooks() for m, v in vectors.items()}, "unsteered, again": ()}

    def forward(hooks):
        model.backend.to_host(model.run_with_hooks(ids, hooks)[:1, -1, :1])
    for hooks in conditions.values():
        forward(hooks)
    times: dict[str, list[float]] = {c: [] for c in conditions}
    for r in range(repeats):
        order = list(conditions.items()) if r % 2 == 0 else list(conditions.items())[::-1]
        for name, hooks in order:
            start = time.perf_counter()
            forward(hooks)
            times[name].append(time.perf_counter() - start)
    base = times["unsteered"]
    out = {}
    for name, ts in times.items():
        if name == "unsteered":
            continue
        e = stats.mean_interval([math.log(t / b) for t, b in zip(ts, base)])
        out[name] = {"median_s": statistics.median(ts), "premium": math.exp(e.value) - 1,
                     "premium_low": math.exp(e.low) - 1 if e.n > 1 else None,
                     "premium_high": math.exp(e.high) - 1 if e.n > 1 else None, "repeats": repeats}
    out["unsteered"] = {"median_s": statistics.median(base), "shape": [batch, tokens]}
    return out


# ---------------------------------------------------------------------------------------------
# The comparison


def check_tasks(sentiment_data, sentiment_dev_data, toxicity_data, toxicity_dev_data) -> None:
    if (sentiment_data is None) != (sentiment_dev_data is None) or (toxicity_data is None) != (toxicity_dev_data is None):
        raise ValueError("each task needs its test data and its dev data (--sentiment-data with --sentiment-dev-data, "
                         "--toxicity-data with --toxicity-dev-data)")
    if sentiment_data is None and toxicity_data is None:
        raise ValueError("no task: give --sentiment-data/--sentiment-dev-data or --toxicity-data/--toxicity-dev-data")


def compare(model: Transformer, tokenizer: Tokenizer, out: str | Path, *, model_name: str = "",
            sentiment_data=None, sentiment_dev_data=None, toxicity_data=None, toxicity_dev_data=None,
            general_data=None, which: Sequence[str] = methods.METHODS, quick: bool = False,
            sizes: dict | None = None, sentiment_scorer: str | Scorer = "imdb",
            toxicity_scorer: str | Scorer = "toxicity", seed: int = 0, batch_rows: int = 64,
            progress: bool = True, command: str | None = None, layers: Sequence[int] | None = None) -> dict:
    """The comparison (see the module's docstring); returns compare.json's content. `layers`:
    the grid's layers (default: the model's first tenth, two-thirds, and the ICLR setting's)."""
    out = Path(writable_folder(out, "out"))
    size = dict(SIZES["quick" if quick else "full"])
    for k, v in (sizes or {}).items():
        if k not in size:
            raise ValueError(f"sizes: unknown {k!r}; expected some of {sorted(size)}")
        size[k] = v
    if any(c > size["pairs"] for c in size["curve"]):
        raise ValueError(f"curve {list(size['curve'])}: at most the {size['pairs']} pairs read")
    for m in which:
        methods.check_method(m)
    check_tasks(sentiment_data, sentiment_dev_data, toxicity_data, toxicity_dev_data)
    general = None
    if general_data is not None:
        general = [text for _, text in data.read_documents(general_data)][:size["general_texts"]]
    tasks: list[Task] = []
    if sentiment_data is not None:
        scorer = sentiment_scorer if isinstance(sentiment_scorer, Scorer) else get_scorer(sentiment_scorer, SENTIMENT)
        tasks += sentiment_tasks(tokenizer, sentiment_data, sentiment_dev_data, general, size, scorer)
    if toxicity_data is not None:
        scorer = toxicity_scorer if isinstance(toxicity_scorer, Scorer) else get_scorer(toxicity_scorer, TOXICITY)
        tasks.append(toxicity_task(tokenizer, toxicity_data, toxicity_dev_data, general, size, scorer))
    for task in tasks:
        short = [p for p in task.dev + task.test if len(p.tokens(tokenizer)) < 4]
        if short:
            raise ValueError(f"{task.name}: {len(short)} prompts have fewer than 3 tokens after BOS (the first: "
                             f"{short[0].source}); ActAdd's Love - Hate matrix needs 3 positions")
    n_layer = model.config.n_layer
    preset = claims.PRESETS["iclr2025"]
    if layers is None:
        layers = search.grid_layers(n_layer, size["layers"], paper_layer(n_layer, *preset.sentiment_layer))
    layers = [int(L) for L in layers]
    if not layers or any(not 0 <= L < n_layer for L in layers):
        raise ValueError(f"layers {layers}: expected blocks from 0 to {n_layer - 1}")
    ctx = generation.make_context(model, tokenizer, size["new_tokens"], dict(SAMPLING), seed, None, None)
    started = time.perf_counter()
    report = {"model": model_name or repr(model), "n_layer": n_layer, "methods": list(which), "layers": layers,
              "ratios": list(RATIOS), "strengths": list(STRENGTHS), "fluency_budget": FLUENCY_BUDGET, "rule": RULE,
              "sizes": {k: list(v) if isinstance(v, tuple) else v for k, v in size.items()}, "seed": seed,
              "sampling": ctx.sampling, "command": command, "machine": machine(), "library_version": library_version(),
              "tasks": {}}

    out.mkdir(parents=True, exist_ok=True)
    ledger = Ledger(out / "timing.jsonl")                # compute time over every run into the folder

    def say(text, stage=None):
        if stage is not None:
            ledger.stage(stage)
        if progress:
            print(f"actadd compare: {text}", file=sys.stderr)

    for task in tasks:
        say(f"{task.name}: reading the examples", f"{task.name} examples")
        mat = Materials(model, tokenizer, task, layers)
        cells = {m: {_name(m, L, s): (L, s) for L, s in _cells(m, layers)} for m in which}
        conditions = [generation.Condition("unsteered")] + [
            generation.Condition(name, mat.vector(m, L, s), layer=L, coeff=s) for m in which
            for name, (L, s) in cells[m].items()]
        say(f"{task.name}: dev, {len(conditions) - 1} cells on {len(task.dev)} prompts", f"{task.name} dev")
        dev_run = _execute(task, "dev", ctx, conditions, task.dev, out, model, progress, batch_rows)
        chosen = {m: choose(task, dev_run, cells[m]) for m in which}
        vectors = {m: mat.vector(m, chosen[m]["layer"], chosen[m]["size"]) for m in which}
        test_conditions = [generation.Condition("unsteered"), generation.Condition("prompted", prefix=task.prefix)] + [
            generation.Condition(m, vectors[m], layer=chosen[m]["layer"], coeff=chosen[m]["size"]) for m in which]
        say(f"{task.name}: test, {len(task.test)} prompts x {len(test_conditions)} conditions", f"{task.name} test")
        test_run = _execute(task, "test", ctx, test_conditions, task.test, out, model, progress, batch_rows)
        values, ppl = _values(test_run, task), _perplexities(test_run)
        base_ppl = _mean_perplexity(ppl["unsteered"])
        side = "below" if task.lower_is_better else "above"
        rows = {}
        for name in ["unsteered", "prompted", *which]:
            row = {"value": _rate(values[name], task), "perplexity": _mean_perplexity(ppl[name]),
                   "perplexity_ratio": _mean_perplexity(ppl[name]) / base_ppl}
            if name != "unsteered":
                row["vs_unsteered"] = _paired(values[name], values["unsteered"])
                row["verdict_vs_unsteered"] = claims.judge(row["vs_unsteered"], side)["verdict"]
                row["perplexity_vs_unsteered"] = _paired(ppl[name], ppl["unsteered"])
            if name not in ("unsteered", "prompted"):
                row["vs_prompted"] = _paired(values[name], values["prompted"])
                row["verdict_vs_prompted"] = claims.judge(row["vs_prompted"], side)["verdict"]
                row["within_budget"] = bool(row["perplexity_ratio"] <= FLUENCY_BUDGET)
                row["chosen"] = {k: v for k, v in chosen[name].items() if k != "cells"}
                row["cost"] = mat.cost(name, vectors[name])
                row["describe"] = vectors[name].describe()
            rows[name] = row
        curve = {}
        curve_methods = [m for m in which if m != "actadd"]
        ks = [k for k in size["curve"]]
        if curve_methods and ks:
            prompts = task.test[:size["curve_prompts"]]
            conds = [generation.Condition("unsteered")]
            for m in curve_methods:
                for k in ks:
                    if m == "pca" and k < 2:
                        continue                                              # the repeng recipe needs two pairs
                    L, s = chosen[m]["layer"], chosen[m]["size"]
                    conds.append(generation.Condition(_name(m, L, s, k), mat.vector(m, L, s, k), layer=L, coeff=s))
            say(f"{task.name}: example-count curve, {len(conds) - 1} vectors on {len(prompts)} prompts",
                f"{task.name} curve")
            curve_run = _execute(task, "curve", ctx, conds, prompts, out, model, progress, batch_rows)
            cv, cp_ = _values(curve_run, task), _perplexities(curve_run)
            for m in curve_methods:
                points = []
                for k in ks:
                    name = _name(m, chosen[m]["layer"], chosen[m]["size"], k)
                    if name in cv:
                        points.append({"k": k, "vs_unsteered": _paired(cv[name], cv["unsteered"]),
                                       "perplexity_ratio": _mean_perplexity(cp_[name]) / _mean_perplexity(cp_["unsteered"])})
                    else:
                        points.append({"k": k, "vs_unsteered": None, "note": "the repeng recipe needs two pairs"})
                curve[m] = points
        report["tasks"][task.name] = {
            "test_prompts": len(task.test), "dev_prompts": len(task.dev), "pairs": len(task.pairs),
            "centring_target_texts": len(task.centring_target), "general_texts": len(task.general),
            "general_source": task.general_source, "scorer": task.scorer.name, "metric":
                "success rate" if task.kind == "sentiment" else "mean toxicity score (lower is better)",
            "plus": task.plus, "minus": task.minus, "prefix": task.prefix, "residual_norm": mat.resid,
            "conditions": rows, "dev": {m: chosen[m]["cells"] for m in which}, "curve": curve,
            "curve_prompts": min(size["curve_prompts"], len(task.test))}
    say(f"timing each method's hooks ({tasks[-1].name}'s vectors)", "timing")
    report["time"] = time_premiums(model, vectors, size["repeats"], seed=seed)
    ledger.stage(None)
    report["wall_s"] = round(time.perf_counter() - started, 1)
    report["compute_s"], report["runs"] = ledger.total()
    report["stage_s"] = ledger.by_stage()
    write(out, report)
    return report


# ---------------------------------------------------------------------------------------------
# Output


def csv_rows(report: dict) -> list[dict]:
    rows = []
    for task, t in report["tasks"].items():
        for name, c in t["conditions"].items():
            row = {"task": task, "condition": name, "value": c["value"]["value"], "low": c["value"]["low"],
                   "high": c["value"]["high"], "n": c["value"]["n"], "perplexity": c["perplexity"],
                   "perplexity_ratio": c["perplexity_ratio"]}
            for against in ("vs_unsteered", "vs_prompted"):
                e = c.get(against)
                if e:
                    row.update({f"{against}": e["value"], f"{against}_low": e["low"], f"{against}_high": e["high"]})
            if "chosen" in c:
                row.update(layer=c["chosen"]["layer"], size=c["chosen"]["size"], within_budget=c["within_budget"],
                           passes_to_make=c["cost"]["passes_to_make"], vector_bytes=c["cost"]["vector_bytes"])
            rows.append(row)
    return rows


def _e(e: dict | None, pct: bool) -> str:
    if not e:
        return "-"
    f = (lambda x: f"{100 * x:+.1f}") if pct else (lambda x: f"{x:+.3f}")
    return f"{f(e['value'])} [{f(e['low'])}, {f(e['high'])}]"


def table(report: dict) -> str:
    lines = []
    for task, t in report["tasks"].items():
        pct = t["metric"] == "success rate"
        unit = "points of success rate" if pct else "toxicity score"
        lines += [f"### {task}", "",
                  f"{t['test_prompts']} test prompts, one continuation each; {t['metric']} by `{t['scorer']}`; "
                  f"differences in {unit}, paired by prompt and seed, 95% intervals. Settings chosen on "
                  f"{t['dev_prompts']} dev prompts.", "",
                  "| condition | setting (dev effect, perplexity) | value [95%] | minus unsteered | minus prompted "
                  "| perplexity (x unsteered) | beats unsteered | beats prompting | examples / passes to make |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for name, c in t["conditions"].items():
            v = c["value"]
            val = (f"{100 * v['value']:.1f}% [{100 * v['low']:.1f}, {100 * v['high']:.1f}]" if pct
                   else f"{v['value']:.3f} [{v['low']:.3f}, {v['high']:.3f}]")
            setting = "-"
            if "chosen" in c:
                ch = c["chosen"]
                dev = ch["dev_effect"]["value"] * (100 if pct else 1)
                setting = (f"layer {ch['layer']}, strength {ch['size']:g}" if name == "ablation"
                           else f"layer {ch['layer']}, {ch['size']:g}x resid") + \
                    (f" ({dev:+.1f}, {ch['dev_perplexity_ratio']:.2f}x)" if pct else f" ({dev:+.3f}, {ch['dev_perplexity_ratio']:.2f}x)") + \
                    ("" if ch["within_budget"] else ", no cell within budget")
            elif name == "prompted":
                setting = f"prefix {t['prefix']!r}"
            budget = "" if name in ("unsteered", "prompted") or c.get("within_budget") else " over budget"
            lines.append(f"| {name} | {setting} | {val} | {_e(c.get('vs_unsteered'), pct)} | {_e(c.get('vs_prompted'), pct)} "
                         f"| {c['perplexity']:.1f} ({c['perplexity_ratio']:.2f}x){budget} "
                         f"| {_yes(c.get('verdict_vs_unsteered'))} | {_yes(c.get('verdict_vs_prompted'))} "
                         f"| {_cost(c)} |")
        lines += ["", verdicts(t), ""]
        if t["curve"]:
            ks = sorted({p["k"] for pts in t["curve"].values() for p in pts})
            lines += ["", f"Example-count curve (minus unsteered on the first {t['curve_prompts']} test prompts, at each "
                          "method's chosen cell, every vector scaled to the same size):", "",
                      "| method | " + " | ".join(f"k = {k}" for k in ks) + " |", "|---|" + "---|" * len(ks)]
            for m, pts in t["curve"].items():
                by = {p["k"]: p for p in pts}
                lines.append(f"| {m} | " + " | ".join(_e(by[k]["vs_unsteered"], pct) if k in by and by[k]["vs_unsteered"]
                                                      else "n/a" for k in ks) + " |")
        lines.append("")
    if report.get("time"):
        lines += ["### Cost at inference", "",
                  f"A forward pass of {report['time']['unsteered']['shape'][0]} x {report['time']['unsteered']['shape'][1]} "
                  f"tokens: {1000 * report['time']['unsteered']['median_s']:.1f} ms unsteered (median); each method's "
                  "premium, exp(mean log ratio) - 1 over the alternating repeats, with its 95% interval:", "",
                  "| hooks | premium | sites hooked |", "|---|---|---|"]
        for name, row in report["time"].items():
            if name == "unsteered":
                continue
            sites = next((c["conditions"][name]["cost"]["hook_sites"] for c in report["tasks"].values()
                          if name in c["conditions"]), 0)
            interval = (f" [{100 * row['premium_low']:+.1f}%, {100 * row['premium_high']:+.1f}%]"
                        if row["premium_low"] is not None else "")
            lines.append(f"| {name} | {100 * row['premium']:+.1f}%{interval} | {sites} |")
    return "\n".join(lines) + "\n"


def verdicts(t: dict) -> str:
    """The task's verdicts in one paragraph: which methods beat unsteered and prompting (their
    paired 95% interval wholly on the wanted side) within the fluency budget, which only beyond it."""
    methods_ = [m for m in t["conditions"] if m not in ("unsteered", "prompted")]

    def named(ms):
        return ", ".join(ms) if ms else "none"
    fluent = [m for m in methods_ if t["conditions"][m]["within_budget"]]
    beat = [m for m in fluent if t["conditions"][m]["verdict_vs_unsteered"] == "reproduced"]
    beat_p = [m for m in fluent if t["conditions"][m]["verdict_vs_prompted"] == "reproduced"]
    worse_p = [m for m in methods_ if t["conditions"][m]["verdict_vs_prompted"] == "contradicted"]
    over = [m for m in methods_ if not t["conditions"][m]["within_budget"]
            and t["conditions"][m]["verdict_vs_unsteered"] == "reproduced"]
    prompted = t["conditions"]["prompted"]["verdict_vs_unsteered"]
    return (f"**Verdicts** (test perplexity within {FLUENCY_BUDGET:g}x unsteered, interval clear of zero): beat "
            f"unsteered: {named(beat)}; beat prompting: {named(beat_p)}; worse than prompting: {named(worse_p)}; "
            f"moved the metric only beyond the fluency budget: {named(over)}. Prompting itself against unsteered: "
            f"{_yes(prompted)}.")


def _yes(verdict: str | None) -> str:
    return {"reproduced": "yes", "contradicted": "no (worse)", "inconclusive": "not shown", None: "-"}.get(verdict, verdict)


def _cost(c: dict) -> str:
    if "cost" not in c:
        return "-"
    return f"{c['cost']['examples']} / {c['cost']['passes_to_make']}"


def plot(report: dict, path) -> None:
    import matplotlib.pyplot as plt

    tasks = list(report["tasks"].items())
    fig, axes = plt.subplots(2, len(tasks), figsize=(5 * len(tasks), 8), squeeze=False)
    for i, (task, t) in enumerate(tasks):
        ax = axes[0][i]
        pct = 100 if t["metric"] == "success rate" else 1
        names = [n for n in t["conditions"] if n != "unsteered"]
        for y, name in enumerate(names):
            e = t["conditions"][name]["vs_unsteered"]
            over = name != "prompted" and not t["conditions"][name].get("within_budget", True)
            ax.errorbar(pct * e["value"], y, xerr=[[pct * (e["value"] - e["low"])], [pct * (e["high"] - e["value"])]],
                        fmt="s" if name == "prompted" else "o", color="grey" if over else "C0", capsize=3)
        ax.axvline(0, color="k", lw=0.8)
        ax.set_yticks(range(len(names)), names)
        ax.invert_yaxis()
        ax.set_title(task, fontsize=10)
        ax.set_xlabel(("success rate, points" if pct == 100 else "toxicity score") + " minus unsteered (95%)",
                      fontsize=8)
        ax = axes[1][i]
        for m, pts in t["curve"].items():
            pts = [p for p in pts if p["vs_unsteered"]]
            if pts:
                ax.errorbar([p["k"] for p in pts], [pct * p["vs_unsteered"]["value"] for p in pts],
                            yerr=[[pct * (p["vs_unsteered"]["value"] - p["vs_unsteered"]["low"]) for p in pts],
                                  [pct * (p["vs_unsteered"]["high"] - p["vs_unsteered"]["value"]) for p in pts]],
                            marker="o", capsize=2, label=m)
        ax.axhline(0, color="k", lw=0.8)
        ax.set_xscale("log", base=2)
        ax.set_xlabel("examples (pairs; mean-centring: target texts)", fontsize=8)
        ax.set_ylabel("minus unsteered", fontsize=8)
        ax.legend(fontsize=7)
    fig.suptitle(f"{report['model']}: steering methods at their dev-chosen settings (fluency budget "
                 f"{report['fluency_budget']:g}x)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, format="png", dpi=100)
    plt.close(fig)


def render(report: dict) -> str:
    """compare.md: the command, the machine, the rule, then the tables (from compare.json alone)."""
    head = [f"# Steering methods compared on {report['model']}", ""]
    if report.get("command"):
        head += ["```bash", report["command"], "```", ""]
    if report.get("machine"):
        head += [f"**Machine.** {report['machine']}. Compute time of these results: {report['compute_s']:.0f} s over "
                 f"{report['runs']} run(s) into the folder ({_stages(report)}).", ""]
    return "\n".join(head + [f"**Rule.** {report['rule']}", ""]) + "\n" + table(report)


def _stages(report: dict) -> str:
    return ", ".join(f"{stage} {seconds:.0f} s" for stage, seconds in report.get("stage_s", {}).items()) or "-"


def write(out: Path, report: dict) -> list[Path]:
    """compare.json, compare.md, compare.csv and (with matplotlib) compare.png, each atomically."""
    written = [write_text(out / "compare.json", json.dumps(json_safe(report), indent=2) + "\n"),
               write_text(out / "compare.md", render(report)),
               write_text(out / "compare.csv", csv_text(json_safe(csv_rows(report))))]
    if matplotlib_ready():
        written.append(atomic_write(out / "compare.png", lambda tmp: plot(report, tmp)))
    return written
