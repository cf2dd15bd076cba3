"""Samples per second of `actadd eval`'s generation, and what sharing a prompt's pass saves:

    python benchmarks/bench_eval.py [--repeats 3] [--json benchmarks/bench_eval.json]

Each case samples one steered condition the way the eval does, in one run on both engines
(order alternating between repeats, medians; benchmarks/alternate.py):

    shared     generate(prompts, samples=k): each prompt's pass once, its keys and values
               copied to its k rows (what actadd eval does)
    per row    the prompts repeated k times: every row runs its own prompt pass

The cases: the topic task's shape (one prompt x 64 samples, 40 new tokens) and the sentiment
task's (8 prompts of 32 tokens x 8 samples, 64 new tokens), on tiny-books and on random weights
of the `gpt2` shape with the genuine tokenizer. The two engines' tokens must be equal (the
benchmark stops otherwise). Last, `generation.topic` end to end (unsteered + one steered cell,
fluency included) on both models: the samples/s a user sees.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))
sys.path.insert(0, str(HERE))

import actadd  # noqa: E402
import minigpt  # noqa: E402
from actadd.experiments import generation  # noqa: E402
from alternate import time_alternating, warm_up  # noqa: E402
from conftest import write_model_folder  # noqa: E402

SHARED = HERE.parent.parent / "shared"


def gpt2_shape(tokenizer: Path):
    folder = Path(tempfile.mkdtemp(prefix="bench-eval-"))
    write_model_folder(folder, minigpt.GPT2Config(), seed=0)
    for name in ("vocab.json", "merges.txt"):
        (folder / name).write_bytes((tokenizer / name).read_bytes())
    return minigpt.load(folder)


def generation_cases(name, model, tok, layer, book: Path):
    vector = actadd.steering_vector(model, actadd.x_vector(tok, " weddings", "", 1.0, layer))
    hooks = vector.hooks()                       # as the eval: each prompt pass steers its whole prompt
    text = tok.encode(book.read_text(encoding="utf-8")[:20000])
    long_prompts = [[tok.bos_token_id] + text[i * 100:i * 100 + 31] for i in range(8)]  # 32 tokens with BOS
    cases, check = {}, []
    for case, prompts, k, new in ((f"{name}: topic, 1 prompt x 64 samples, 40 new", [actadd.tokens_with_bos(
            tok, generation.TOPIC_PROMPT)], 64, 40), (f"{name}: sentiment, 8 prompts of 32 x 8 samples, 64 new",
                                                      long_prompts, 8, 64)):
        kw = dict(max_new_tokens=new, stop_at_eos=False, fwd_hooks=hooks, **actadd.PAPER_SAMPLING)
        out = {}

        def shared(prompts=prompts, k=k, kw=kw, out=out):
            out["shared"] = minigpt.generate(model, prompts, samples=k, **kw).tokens

        def per_row(prompts=prompts, k=k, kw=kw, out=out):
            out["per row"] = minigpt.generate(model, [p for p in prompts for _ in range(k)], **kw).tokens
        cases[case] = (len(prompts) * k, {"shared": shared, "per row": per_row})
        check.append((case, out))
    return cases, check


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokenizer", type=Path, default=Path(os.environ.get("MINIGPT_GPT2_TOKENIZER",
                                                                              SHARED / "gpt2-tokenizer")))
    parser.add_argument("--book", type=Path, default=Path(os.environ.get("MINIGPT_CORPORA", SHARED / "corpora"))
                        / "gutenberg" / "pg1342.txt")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", type=Path, default=HERE / "bench_eval.json")
    args = parser.parse_args()

    models = {"tiny-books": (minigpt.load("tiny-books"), 0), "gpt2 shape": (gpt2_shape(args.tokenizer), 6)}
    cases, checks = {}, []
    for name, ((model, tok), layer) in models.items():
        more, check = generation_cases(name, model, tok, layer, args.book)
        cases.update(more)
        checks += check
    warm_up(cases)
    times = time_alternating(cases, args.repeats)
    for case, out in checks:
        assert out["shared"] == out["per row"], f"{case}: the engines' tokens differ"

    rows = []
    print(f"numpy {np.__version__}, {args.repeats} repeats, medians; samples/s")
    print(f"{'case':<58} {'shared':>9} {'per row':>9} {'speedup':>8}")
    for case, (samples, _) in cases.items():
        med = {e: statistics.median(times[case, e]) for e in ("shared", "per row")}
        rows.append({"case": case, "samples": samples, **{f"{e}_s": med[e] for e in med},
                     **{f"{e}_samples_per_s": samples / med[e] for e in med}, "speedup": med["per row"] / med["shared"],
                     "min_max_s": {e: [min(times[case, e]), max(times[case, e])] for e in med}})
        print(f"{case:<58} {samples / med['shared']:>9.1f} {samples / med['per row']:>9.1f} "
              f"{med['per row'] / med['shared']:>7.2f}x")

    print("\nactadd eval topic end to end (unsteered + 1 steered cell, 64 samples each, 40 new tokens, fluency "
          "included)")
    end_to_end = []
    for name, ((model, tok), layer) in models.items():
        start = time.perf_counter()
        generation.topic(model, tok, None, layers=[layer], samples=64, progress=False)
        seconds = time.perf_counter() - start
        end_to_end.append({"model": name, "samples": 128, "seconds": seconds, "samples_per_s": 128 / seconds})
        print(f"{name:<58} {128 / seconds:>9.1f} samples/s ({seconds:.1f} s)")
    args.json.write_text(json.dumps({"numpy": np.__version__, "repeats": args.repeats, "generation": rows,
                                     "end_to_end": end_to_end}, indent=2) + "\n")
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
