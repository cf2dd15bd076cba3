"""What per-row steering (`actadd.row_hooks`) saves on a 12 x 5 grid (layers x coefficients):

    python benchmarks/bench_grid.py [--repeats 3] [--json benchmarks/bench_grid.json]

Three grid workloads, each run cell by cell (one vector a pass: how sweeps and evals ran before
row_hooks) and as batches (each row steered by its own cell's vector), in one process,
alternating, medians (benchmarks/alternate.py):

    next-token   the KL sweep's work: the steered next-token logits after a 9-token prompt
    log-probs    the log-prob sweep's work: 8 sentences' log-probs per cell, each pass starting
                 at its layer from the cached unsteered resid_pre
    generation   the topic eval's work: 4 samples x 16 new tokens a cell, top-p 0.3 (units of one
                 condition against units packed to 64 rows)

on tiny-books (4 layers: its grid is 4 x 5) and on random weights of the `gpt2` shape (12 x 5)
with GPT-2's tokenizer.
The two ways' results must agree (to float32 rounding for logits, exactly for tokens), or the
benchmark stops.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import minigpt  # noqa: E402
from actadd import row_hooks, steering_vector, x_vector  # noqa: E402
from actadd.experiments import generation, overhead  # noqa: E402
from actadd.measure import length_batches, picked_logprobs  # noqa: E402
from actadd.steering import site, tokens_with_bos  # noqa: E402
from alternate import time_alternating, warm_up  # noqa: E402

COEFFS = (-1.0, 1.0, 2.0, 4.0, 8.0)
SENTENCES = ["The whale rose from the sea and the men cried out from the boat.",
             "She walked to the window and looked down at the garden below her.",
             "We sailed for three days before we saw the land again.",
             "It was the best of times, it was the worst of times.",
             "The old man sat by the fire and told the children a story.",
             "In the morning the ship was gone, and the harbour lay empty.",
             "He had never seen so many stars above the dark water.",
             "The letter arrived on a cold afternoon in late November."]


def cases(model, tok):
    layers = list(range(model.config.n_layer))
    unit = {L: steering_vector(model, x_vector(tok, "whale", "", 1.0, L)) for L in layers}
    vectors = [unit[L].scaled(c) for L in layers for c in COEFFS]            # cells, layer-major
    prompt = tokens_with_bos(tok, "In the morning we went down to the")
    texts = [tokens_with_bos(tok, s) for s in SENTENCES]
    ((rows, tokens, mask),) = list(length_batches(texts, 4096))
    lengths = [len(texts[i]) for i in rows]
    _, resid = model.run_with_cache(tokens, names=[site(L) for L in layers], attention_mask=mask)
    out = {}

    def next_cells():
        out["next cells"] = np.stack([model.run_with_hooks([prompt], v.hooks(prompt_lengths=len(prompt)),
                                                           last_only=True)[0, -1] for v in vectors])

    def next_rows():
        out["next rows"] = model.run_with_hooks([prompt] * len(vectors), row_hooks(vectors, prompt_lengths=len(prompt)),
                                                last_only=True)[:, -1]

    def logprob_cells():
        out["lp cells"] = np.stack([picked_logprobs(model.run_with_hooks(
            tokens, v.hooks(prompt_lengths=lengths), attention_mask=mask, start_at_layer=v.layers[0],
            resid_pre=resid[site(v.layers[0])]), tokens) for v in vectors])

    def logprob_rows(per_pass=1024 // tokens.size):
        parts = []
        for i in range(0, len(vectors), per_pass):
            chunk = vectors[i:i + per_pass]
            k, first = len(chunk), chunk[0].layers[0]
            copies = np.tile(np.arange(len(rows)), k)
            logits = model.run_with_hooks(np.tile(tokens, (k, 1)), row_hooks([v for v in chunk for _ in rows],
                                                                             prompt_lengths=lengths * k),
                                          attention_mask=np.tile(mask, (k, 1)), start_at_layer=first,
                                          resid_pre=resid[site(first)][copies])
            parts.append(picked_logprobs(logits, np.tile(tokens, (k, 1))).reshape(k, len(rows), -1))
        out["lp rows"] = np.concatenate(parts)

    topic = dict(prompt="In the morning we", plus="whale", layers=layers, coeffs=COEFFS, words=["sea"], samples=4,
                 max_new_tokens=16, progress=False)

    def generate_cells():
        out["gen cells"] = generation.topic(model, tok, None, batch_rows=4, **topic).samples

    def generate_rows():
        out["gen rows"] = generation.topic(model, tok, None, batch_rows=64, **topic).samples

    grid = f"{len(layers)} x {len(COEFFS)}"
    return out, {f"next-token, {grid} cells": (len(vectors), {"cell by cell": next_cells, "row_hooks": next_rows}),
                 f"log-probs of 8 sentences, {grid}": (len(vectors), {"cell by cell": logprob_cells,
                                                                       "row_hooks": logprob_rows}),
                 f"generation, {grid} x 4 samples x 16 tokens": (
                     (len(vectors) + 1) * 4, {"cell by cell": generate_cells, "row_hooks": generate_rows})}


def check(out):
    worst = max(float(np.abs(out["next cells"] - out["next rows"]).max()),
                float(np.abs(out["lp cells"] - out["lp rows"]).max()))
    if worst > 1e-3:
        raise SystemExit(f"row_hooks and cell-by-cell results differ by {worst:.2e}")
    if [r["tokens"] for r in out["gen cells"]] != [r["tokens"] for r in out["gen rows"]]:
        raise SystemExit("row_hooks and cell-by-cell generations differ")
    return worst


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", default=str(HERE / "bench_grid.json"))
    parser.add_argument("--gpt2-tokenizer", default=str(HERE.parent.parent / "shared" / "gpt2-tokenizer"),
                        help="GPT-2's vocab.json and merges.txt (default ../shared/gpt2-tokenizer)")
    args = parser.parse_args()
    books, books_tok = minigpt.load("tiny-books")
    gpt2_tok = minigpt.Tokenizer.from_pretrained(args.gpt2_tokenizer)
    results = []
    for name, model, tok in (("tiny-books", books, books_tok), ("gpt2 shape", overhead.random_model("gpt2"), gpt2_tok)):
        out, work = cases(model, tok)
        warm_up(work)
        worst = check(out)
        times = time_alternating(work, args.repeats)
        for case, (units, runs) in work.items():
            med = {e: statistics.median(times[case, e]) for e in runs}
            results.append({"model": name, "case": case, "units": units, "cell_by_cell_s": med["cell by cell"],
                            "row_hooks_s": med["row_hooks"], "speedup": med["cell by cell"] / med["row_hooks"],
                            "max_abs_logit_diff": worst})
            print(f"{name:<11} {case:<48} cell by cell {med['cell by cell']:8.3f} s   row_hooks "
                  f"{med['row_hooks']:8.3f} s   {med['cell by cell'] / med['row_hooks']:5.2f}x", flush=True)
    print("\n| model | workload | cell by cell (s) | row_hooks (s) | speed-up |\n|---|---|---|---|---|")
    for r in results:
        print(f"| {r['model']} | {r['case']} | {r['cell_by_cell_s']:.3f} | {r['row_hooks_s']:.3f} | {r['speedup']:.2f}x |")
    Path(args.json).write_text(json.dumps({"repeats": args.repeats, "results": results}, indent=2) + "\n")


if __name__ == "__main__":
    main()
