"""Time `actadd pairs` on 16 contrast pairs, on random weights of the real `gpt2` shape (float32)
with the genuine GPT-2 tokenizer, in both readings:

    python benchmarks/bench_pairs.py [--controls 8] [--json benchmarks/bench_pairs.json]

Reported: the whole command (`actadd pairs ...`, a fresh process: loading included), and in one
process its stages: the 32 prompts' residual streams (one unsteered pass each), and the report
(the effects of 1 + 16 + 16 + controls vectors on the metric's prompt, 8 a pass, and the cosines). The
residual-stream stage is timed in the same run against transformers reading the same
hidden_states (output_hidden_states=True, one pass per prompt, the whole model), as a ratio; ours
stop at the layer read (stop_at_layer). Both give the same streams: the largest difference is
printed, absolute and scaled as the parity tests bound it.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))

import minigpt  # noqa: E402
from actadd import pairs as P  # noqa: E402
from conftest import scaled_error, write_model_folder  # noqa: E402

SHARED = HERE.parent.parent / "shared"
PAIRS = [("The whale", "The horse"), ("the sea", "the land"), ("The ship sailed", "The carriage drove"),
         ("the waves", "the fields"), ("the harpoon", "the sword"), ("the ocean", "the town"),
         ("The sailors", "The soldiers"), ("the boat", "the house"), ("a storm at sea", "a storm in the hills"),
         ("the captain of the ship", "the captain of the guard"), ("salt water", "fresh bread"),
         ("the tide came in", "the train came in"), ("on the deck", "on the porch"), ("the harbour", "the market"),
         ("the crew", "the family"), ("sea birds", "farm animals")]
PROMPT = "In the morning I went out and looked at the"
TOPIC = [" sea", " whale", " ship", " boat", " water", " ocean", " captain", " deck"]


def best(fn, repeats):
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - start)
    return min(times), out


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokenizer", type=Path, default=Path(os.environ.get("MINIGPT_GPT2_TOKENIZER", SHARED / "gpt2-tokenizer")))
    parser.add_argument("--layer", type=int, default=6)
    parser.add_argument("--coeff", type=float, default=4.0)
    parser.add_argument("--controls", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3, help="best of this many, per in-process stage")
    parser.add_argument("--json", type=Path, default=HERE / "bench_pairs.json")
    args = parser.parse_args()

    import torch
    import transformers

    torch.set_num_threads(os.cpu_count())
    folder = Path(tempfile.mkdtemp(prefix="bench-pairs-"))
    write_model_folder(folder, minigpt.GPT2Config(), seed=0)
    for name in ("vocab.json", "merges.txt"):
        (folder / name).write_bytes((args.tokenizer / name).read_bytes())
    (folder / "pairs.tsv").write_text("".join(f"{p}\t{m}\n" for p, m in PAIRS), encoding="utf-8")
    model, tok = minigpt.load(folder)
    hf = transformers.GPT2LMHeadModel.from_pretrained(folder, dtype=torch.float32).eval()
    metric = P.effectiveness_metric(model, tok, PROMPT, [tok.encode(w)[0] for w in TOPIC])

    rows = []
    for reading in ("actadd", "last"):
        command = [sys.executable, "-m", "actadd", "pairs", "--model", str(folder), "--pairs", str(folder / "pairs.tsv"),
                   "--layer", str(args.layer), "--coeff", str(args.coeff), "--reading", reading, "--prompt", PROMPT,
                   "--topic", *TOPIC, "--controls", str(args.controls), "--out", str(folder / f"out-{reading}"),
                   "--no-progress"]
        start = time.perf_counter()
        subprocess.run(command, check=True, capture_output=True)
        cli = time.perf_counter() - start

        ours_s, cp = best(lambda: P.ContrastPairs.compute(model, tok, PAIRS, [args.layer], reading), args.repeats)

        def theirs():
            out = {}
            with torch.no_grad():
                for tokens in cp.plus_tokens + cp.minus_tokens:
                    out[tokens] = hf(torch.tensor([list(tokens)]), output_hidden_states=True).hidden_states[args.layer][0].numpy()
            return out
        ref_s, ref = best(theirs, args.repeats)
        diff = max(float(np.abs(cp.resid[t, args.layer] - ref[t]).max()) for t in ref)
        scaled = max(scaled_error(cp.resid[t, args.layer], ref[t]) for t in ref)   # the tests' parity measure
        report_s, report = best(lambda: P.pair_report(model, tok, PAIRS, args.layer, args.coeff, metric, reading,
                                                       controls=args.controls), 1)
        rows.append({"reading": reading, "pairs": len(PAIRS), "controls": args.controls, "command_s": round(cli, 2),
                     "residual_streams_s": round(ours_s, 3), "transformers_s": round(ref_s, 3),
                     "speed_vs_transformers": round(ref_s / ours_s, 2), "max_abs_diff": diff, "max_scaled_diff": scaled,
                     "report_s": round(report_s, 2), "flagged": report.document()["flagged"]})

    print(f"actadd pairs, {len(PAIRS)} pairs, gpt2 shape (random weights), layer {args.layer}, "
          f"{args.controls} controls; threads: numpy BLAS default, torch {torch.get_num_threads()}")
    print(f"{'reading':<8} {'command s':>10} {'streams s':>10} {'transformers s':>15} {'x':>6} {'report s':>9} {'max diff':>9} {'scaled':>8}")
    for r in rows:
        print(f"{r['reading']:<8} {r['command_s']:>10} {r['residual_streams_s']:>10} {r['transformers_s']:>15} "
              f"{r['speed_vs_transformers']:>6} {r['report_s']:>9} {r['max_abs_diff']:>9.1e} {r['max_scaled_diff']:>8.1e}")
    args.json.write_text(json.dumps({"benchmark": "bench_pairs", "cpu_count": os.cpu_count(), "rows": rows}, indent=2) + "\n")
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
