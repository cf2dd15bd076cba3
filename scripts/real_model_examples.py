"""The paper's prompt pairs on a real pretrained model (SmolLM2-135M-Instruct by default), offline:
for each pair a small sweep of layer x coefficient, the setting chosen by one stated rule, and
completions unsteered and steered at it, as docs/real-models.md shows them.

    python scripts/real_model_examples.py [--model smollm2-135m] [--samples 24] [--out runs/real-model-examples]

The sweep is actadd's topic experiment (actadd.experiments.generation.topic) on each pair's own
prompt: `samples` completions of 32 tokens per cell, sampled as the paper samples (temperature 1,
top-p 0.3, frequency penalty 1, seed 0), scored by the fraction that use a word of the pair's
plus side (whole words, any case, the continuation only; the paper's wedding study counts words
this way) and by their perplexity under the unsteered model. The rule, fixed before looking:
the cell with the highest on-topic rate whose pooled perplexity is at most twice the unsteered
one's; ties go to the smaller coefficient, then the earlier layer. The best of 32 cells of 24
samples is an optimistic estimate (the winner's curse), so the chosen setting is then measured
again on `confirm` fresh samples (seed 1) against the unsteered model on the same draws: the
paired difference with its 95% interval is the figure to quote. The paper's own GPT-2-XL
setting, its layer scaled to this model's depth (48 -> n_layer blocks), is reported beside it.

Each pair's runs are kept in OUT/NAME (resumed if stopped); OUT/summary.json has every cell, the
choice and the completions; OUT/examples.md the tables docs/real-models.md quotes.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import actadd
import minigpt
from actadd.experiments import generation

LAYERS = [2, 4, 6, 9, 12, 15, 20, 25]
COEFFS = [2.0, 4.0, 8.0, 16.0]
# (name, prompt, plus, minus, the paper's (layer, coefficient) on GPT-2-XL's 48 blocks, words of the plus side)
EXAMPLES = [
    ("love-hate", "I hate you because", "Love", "Hate", (6, 5),
     ["love", "loved", "loving", "lovely", "care", "caring", "kind", "happy", "wonderful", "beautiful", "sweet",
      "adore"]),
    ("praise-hurt", "I want to kill you because you're such a", "Intent to praise", "Intent to hurt", (6, 15),
     ["amazing", "great", "wonderful", "brilliant", "awesome", "kind", "good", "best", "talented", "beautiful",
      "smart", "love", "praise", "proud"]),
    ("anger-calm", "I think you're", "Anger", "Calm", (20, 10),
     ["angry", "anger", "hate", "furious", "mad", "rage", "stupid", "idiot", "annoying", "damn", "hell", "sick"]),
    ("weddings", "I went up to my friend and said", " weddings", "", (16, 1), list(generation.WEDDING_WORDS)),
    # the post's prompt was "Barack Obama was born in"; SmolLM2 spells 9/11 as five tokens, so the
    # steering prompt (10 with BOS) is longer than that one: a lead-in makes room
    ("conspiracy", "Here is what I know: Barack Obama was born in", "Bush did 9/11 because", "", (23, 1),
     ["conspiracy", "bush", "government", "truth", "lie", "lies", "secret", "cover", "attack", "attacks", "9/11"]),
    ("want-to-die", "Some people think that death is scary and should be avoided. I agree. I never want to die. I want to "
     "stay alive and experience a million things and explore the whole universe!", "Want to die", "Want to stay alive",
     (10, 3), ["die", "death", "dead", "dying", "kill", "suicide", "end", "pain", "hopeless", "darkness"]),
]
MAX_NEW_TOKENS = 32


def choose(cells: list[dict]) -> dict:
    """The rule: highest on-topic rate with pooled perplexity <= 2x unsteered; ties to the
    smaller coefficient, then the earlier layer."""
    base = next(c for c in cells if c["condition"] == "unsteered")
    fluent = [c for c in cells if c["condition"] != "unsteered"
              and c["pooled_perplexity"] is not None and c["pooled_perplexity"] <= 2 * base["pooled_perplexity"]]
    return max(fluent, key=lambda c: (c["on_topic"]["value"], -c["coeff"], -c["layer"]))


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--samples", type=int, default=24)
    parser.add_argument("--confirm", type=int, default=100, help="fresh samples that measure the chosen setting")
    parser.add_argument("--out", type=Path, default=Path("runs/real-model-examples"))
    parser.add_argument("--only", nargs="*", help="names of the examples to run (default all)")
    args = parser.parse_args()
    model, tok = minigpt.load(args.model)
    n = model.config.n_layer
    layers = [L for L in LAYERS if L < n]
    summary, lines = {"model": args.model, "layers": layers, "coeffs": COEFFS, "samples": args.samples,
                      "max_new_tokens": MAX_NEW_TOKENS, "examples": []}, []
    for name, prompt, plus, minus, paper, words in EXAMPLES:
        if args.only and name not in args.only:
            continue
        print(f"--- {name}: {plus!r} - {minus!r} on {prompt[:40]!r}", file=sys.stderr, flush=True)
        run = generation.topic(model, tok, args.out / name, prompt=prompt, plus=plus, minus=minus, layers=layers,
                               coeffs=COEFFS, words=words, samples=args.samples, max_new_tokens=MAX_NEW_TOKENS,
                               progress=True)                             # perplexity under the model itself
        cells = run.summary["conditions"]
        chosen = choose(cells)
        base = next(c for c in cells if c["condition"] == "unsteered")
        again = generation.topic(model, tok, args.out / f"{name}-confirm", prompt=prompt, plus=plus, minus=minus,
                                 layers=[chosen["layer"]], coeffs=[chosen["coeff"]], words=words, samples=args.confirm,
                                 max_new_tokens=MAX_NEW_TOKENS, seed=1, progress=True).summary["conditions"]
        confirmed = {"unsteered": again[0]["on_topic"], "steered": again[1]["on_topic"],
                     "difference": again[1]["vs_unsteered"]["on_topic"],
                     "perplexity": [again[0]["pooled_perplexity"], again[1]["pooled_perplexity"]]}
        paper_layer = round(paper[0] * n / 48)
        shown = {}
        for label, (layer, coeff) in (("chosen", (chosen["layer"], chosen["coeff"])),
                                      ("paper, layer scaled", (paper_layer, float(paper[1])))):
            vector = actadd.steering_vector(model, actadd.x_vector(tok, plus, minus, coeff, layer))
            result = actadd.generate(model, tok, prompt, vector, n=3, seed=0, max_new_tokens=40)
            shown[label] = {"layer": layer, "coeff": coeff, "steered": result.steered, "unsteered": result.unsteered}
        brief = [{"condition": c["condition"], "layer": c["layer"], "coeff": c["coeff"], "on_topic": c["on_topic"],
                  "perplexity": c["pooled_perplexity"], "vs_unsteered": c.get("vs_unsteered", {}).get("on_topic")}
                 for c in cells]
        summary["examples"].append({"name": name, "prompt": prompt, "plus": plus, "minus": minus, "words": words,
                                    "paper_gpt2_xl": paper, "cells": brief, "chosen": chosen["condition"],
                                    "confirmed": confirmed, "completions": shown})
        lines += [f"### {name}: {plus!r} - {minus!r}", "", f"Prompt: {prompt!r}. Words: {', '.join(words)}.", "",
                  "| layer \\ coeff | " + " | ".join(f"{c:g}" for c in COEFFS) + " |",
                  "|---|" + "---|" * len(COEFFS)]
        for L in layers:
            row = []
            for c in COEFFS:
                cell = next(x for x in cells if x["layer"] == L and x["coeff"] == c)
                mark = "**" if cell is chosen else ""
                row.append(f"{mark}{cell['on_topic']['value']:.2f} ({cell['pooled_perplexity']:.1f}){mark}")
            lines.append(f"| {L} | " + " | ".join(row) + " |")
        lines += ["", f"Unsteered: {base['on_topic']['value']:.2f} on topic, perplexity {base['pooled_perplexity']:.1f} "
                  f"(n = {base['on_topic']['n']}). Chosen: {chosen['condition']}: {chosen['on_topic']['value']:.2f} "
                  f"[{chosen['on_topic']['low']:.2f}, {chosen['on_topic']['high']:.2f}], perplexity "
                  f"{chosen['pooled_perplexity']:.1f}. Again on {args.confirm} fresh samples (seed 1): "
                  f"{confirmed['unsteered']['value']:.2f} -> {confirmed['steered']['value']:.2f}, paired difference "
                  f"{confirmed['difference']['value']:+.2f} [{confirmed['difference']['low']:+.2f}, "
                  f"{confirmed['difference']['high']:+.2f}], perplexity {confirmed['perplexity'][0]:.1f} -> "
                  f"{confirmed['perplexity'][1]:.1f}.", ""]
        for label, s in shown.items():
            lines.append(f"{label} (layer {s['layer']}, coefficient {s['coeff']:g}):")
            lines += [f"- unsteered: {json.dumps(u)}" for u in s["unsteered"]]
            lines += [f"- steered: {json.dumps(t)}" for t in s["steered"]]
            lines.append("")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    (args.out / "examples.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
