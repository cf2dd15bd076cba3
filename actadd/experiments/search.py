"""Choosing the steering setting on dev data, never on the test prompts: the search that
`actadd paper --sentiment-dev-data ... --toxicity-dev-data ...` runs before sentiment and
toxicity, written down in the report's appendix.

    grid          the layers and coefficients tried (the preset's own cell always among them)
    search        one task over the grid: every cell against unsteered, paired over dev prompts
    choose        the rule, stated once in RULE

The search is a smaller run than the test (fewer prompts, shorter continuations): it picks a
cell, the test measures it. Each task's grid runs as one `execute` into OUT/search/TASK/, so it
resumes like every other experiment.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Sequence

from minigpt import Tokenizer, Transformer

from ..steering import steering_vector, x_vector
from . import generation
from .data import Prompt
from .runner import open_runner
from .scorers import Scorer

FLUENCY_BUDGET = 1.5
RULE = (f"the cell with the largest steered - unsteered effect on the dev prompts (for sentiment, the mean of "
        f"both directions' success differences; for toxicity, the fall in mean score) among the cells whose "
        f"continuations' mean perplexity is at most {FLUENCY_BUDGET:g} x the unsteered one's (about the paper's own "
        "fluency cost, 29.30 / 18.49 = 1.58) and whose effect's 95% interval lies wholly on the wanted side of zero; "
        "ties to the smaller coefficient, then the earlier layer. No such cell: the preset's own.")
SIZES = {"full": {"prompts": 48, "new_tokens": 32, "coeffs": (2.0, 4.0, 8.0), "layers": 4},
         "quick": {"prompts": 8, "new_tokens": 12, "coeffs": (4.0, 12.0), "layers": 2}}


def grid_layers(n_layer: int, count: int, preset_layer: int) -> list[int]:
    """`count` layers spread from the model's first tenth to its two-thirds (where the paper's
    searches found steering works), and the preset's own."""
    if count == 1:
        return [preset_layer]
    low, high = max(1, round(0.07 * n_layer)), round(0.67 * n_layer)
    picked = {round(low + (high - low) * i / (count - 1)) for i in range(count)}
    return sorted(picked | {preset_layer})


def search(model: Transformer, tokenizer: Tokenizer, task: str, prompts: Sequence[Prompt], out: str | Path, *,
           layers: Sequence[int], coeffs: Sequence[float], scorer: Scorer, max_new_tokens: int, sampling: dict,
           seed: int = 0, direction: str | None = None, progress: bool = True, batch_rows: int = 64,
           workers: int | None = None, scheduler: str | None = None, worker_backend: str | None = None) -> dict:
    """Every (layer, coefficient) of the grid and unsteered on the dev prompts: each cell's
    effect (paired over prompts) and its continuations' mean perplexity against unsteered.
    `workers` / `scheduler`: the units on Dask, as every generating experiment (the same file)."""
    if task == "sentiment":
        _, target, plus, minus = generation.DIRECTIONS[direction]
    else:
        target, plus, minus = None, "Love", "Hate"
    ctx = generation.make_context(model, tokenizer, max_new_tokens, sampling, seed, None, None)
    cells = [(int(L), float(c)) for L in layers for c in coeffs]
    conditions = [generation.Condition("unsteered")] + [
        generation.Condition(f"layer {L} coeff {c:g}", steering_vector(model, x_vector(tokenizer, plus, minus, c, L)),
                             layer=L, coeff=c) for L, c in cells]
    kept = [p for p in prompts if len(p.tokens(tokenizer)) >= max(v.vector.length for v in conditions[1:])]
    settings = {"task": f"search {task}", "direction": direction, "target": target, "plus": plus, "minus": minus,
                "cells": [list(c) for c in cells], "prompts": len(kept), "prompts_sha256": generation.prompts_digest(kept),
                "max_new_tokens": max_new_tokens, "seed": seed, "sampling": ctx.sampling, "batch_rows": batch_rows,
                "scorer": scorer.name, **generation.model_settings(model, None, None)}
    with open_runner(workers, scheduler, worker_backend) as runner:
        run = generation.execute(f"search {task}", ctx, conditions, kept, 1, settings, out, scorer, batch_rows, progress,
                                 runner)
    summary = generation.summarize_scored(run, task, scorer)
    metric = "success" if task == "sentiment" else "mean_score"
    base = next(c for c in summary["conditions"] if c["condition"] == "unsteered")
    rows = []
    for c in summary["conditions"]:
        if c["condition"] == "unsteered":
            continue
        rows.append({"layer": c["layer"], "coeff": c["coeff"], "effect": c["vs_unsteered"][metric],
                     "perplexity": c["perplexity"]["value"],
                     "perplexity_ratio": c["perplexity"]["value"] / base["perplexity"]["value"]})
    return {"task": task, "direction": direction, "metric": metric, "prompts": len(kept),
            "new_tokens": max_new_tokens, "unsteered": {metric: base[metric], "perplexity": base["perplexity"]["value"]},
            "cells": rows}


def choose(searches: Sequence[dict], preset: tuple[int, float], lower_is_better: bool = False) -> dict:
    """The rule (RULE) over one task's searches (sentiment: both directions, averaged; cells
    matched by layer and coefficient): the chosen (layer, coeff), why, and each cell's score."""
    keyed: dict[tuple[int, float], list[dict]] = {}
    for s in searches:
        for row in s["cells"]:
            keyed.setdefault((row["layer"], row["coeff"]), []).append(row)
    sign = -1.0 if lower_is_better else 1.0
    scored = []
    for (layer, coeff), rows in keyed.items():
        effect = sum(r["effect"]["value"] for r in rows) / len(rows)
        wanted = all(sign * r["effect"]["low" if sign > 0 else "high"] > 0 for r in rows)
        ratio = max(r["perplexity_ratio"] for r in rows)
        fluent = math.isfinite(ratio) and ratio <= FLUENCY_BUDGET
        scored.append({"layer": layer, "coeff": coeff, "effect": effect, "clear_of_zero": wanted,
                       "perplexity_ratio": ratio, "within_budget": fluent})
    eligible = [s for s in scored if s["clear_of_zero"] and s["within_budget"]]
    if eligible:
        best = max(eligible, key=lambda s: (sign * s["effect"], -s["coeff"], -s["layer"]))
        chosen, why = (best["layer"], best["coeff"]), "the rule's cell"
    else:
        chosen, why = preset, "no cell met the rule: the preset's own"
    return {"layer": chosen[0], "coeff": chosen[1], "why": why, "preset": list(preset), "cells": scored}
