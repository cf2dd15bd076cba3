"""minigpt's LLaMA against transformers' LlamaForCausalLM (PyTorch CPU) on the same random
bfloat16 weights of Llama-3.2-1B's shape, both computing in float32 (minigpt with
weights="float32"), both engines in one process:

    python benchmarks/bench_llama.py [--repeats 3] [--json out.json]

    prefill 128      one forward pass over 128 tokens, logits for every position
    decode b1 / b8   greedy generation of 32 new tokens after a 16-token prompt, batch 1 / 8
                     (tok/s counts new tokens of all rows; the prefill is included)

transformers runs `model(...)` and `model.generate(do_sample=False)` with its KV cache; minigpt
runs `model(...)` and `minigpt.generate(temperature=0)`. Every repeat runs every case on both
engines, the order alternating between repeats (benchmarks/alternate.py); the table gives
medians, and minigpt's speed relative to transformers. The prefill's logits must agree within
the parity tests' tolerance (the benchmark stops otherwise); with random weights greedy tokens
can part at near-ties, so their agreement is reported, not required. Needs the test extra.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
import transformers

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import alternate  # noqa: E402
import minigpt  # noqa: E402
from bench_llama_memory import write_checkpoint  # noqa: E402



def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", type=Path, help="default: benchmarks/bench_llama.json")
    args = parser.parse_args()
    args.json = args.json or HERE / "bench_llama.json"
    args.shape = "llama-3.2-1b"
    torch.set_num_threads(os.cpu_count() or 1)

    folder = Path(tempfile.mkdtemp(prefix="bench-llama-"))
    write_checkpoint(folder, args.shape)                       # random bfloat16 weights (sd 0.02)
    hf = transformers.LlamaForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    config = hf.config
    ours = minigpt.from_pretrained(folder, weights="float32")
    rng = np.random.default_rng(0)
    long_ids = rng.integers(4, config.vocab_size, (1, 128))
    prompts = rng.integers(4, config.vocab_size, (8, 16))
    prompts[:, 0] = 128000                                     # <|begin_of_text|>

    def hf_generate(batch):
        ids = torch.as_tensor(prompts[:batch])
        with torch.no_grad():
            out = hf.generate(input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=False, max_new_tokens=32,
                              min_new_tokens=32, pad_token_id=0)
        return out[:, 16:].tolist()

    def ours_generate(batch):
        return minigpt.generate(ours, prompts[:batch].tolist(), max_new_tokens=32, temperature=0,
                                stop_at_eos=False).tokens

    def hf_prefill():
        with torch.no_grad():
            hf(torch.as_tensor(long_ids))

    # Random weights give nearly flat logits over 128k tokens, where float32 rounding can swap a
    # greedy choice: the check is the prefill's logits (scaled error, as the parity tests), and
    # the fraction of greedy tokens that agree is reported.
    with torch.no_grad():
        ref = hf(torch.as_tensor(long_ids)).logits.numpy()
    got = ours(long_ids)
    scaled = float((np.abs(got - ref) / (1 + np.abs(ref).max(axis=-1, keepdims=True))).max())
    if scaled > 1e-4:
        raise SystemExit(f"minigpt's logits differ from transformers' (scaled error {scaled:.2e})")
    a, b = np.array(ours_generate(8)), np.array(hf_generate(8))
    agree = float((a == b).mean())
    cases = {
        "prefill 128": (128, {"transformers": hf_prefill, "minigpt": lambda: ours(long_ids)}),
        "decode b1": (32, {"transformers": lambda: hf_generate(1), "minigpt": lambda: ours_generate(1)}),
        "decode b8": (8 * 32, {"transformers": lambda: hf_generate(8), "minigpt": lambda: ours_generate(8)}),
    }
    alternate.warm_up(cases)
    times = alternate.time_alternating(cases, args.repeats)
    rows = alternate.rows(cases, times, baseline="transformers")
    c = config
    print(f"{args.shape} shape ({c.num_hidden_layers} x {c.hidden_size}, vocab {c.vocab_size}), bfloat16 file, float32; "
          f"{args.repeats} repeats; numpy {np.__version__}, torch {torch.__version__} ({torch.get_num_threads()} "
          f"threads), {os.cpu_count()} cores; prefill logits' scaled error {scaled:.1e}; greedy tokens equal: "
          f"{agree:.0%}")
    print(f"{'case':<12} {'engine':<13} {'median s':>9} {'min':>7} {'max':>7} {'tok/s':>8} {'x transformers':>15}")
    for r in rows:
        print(f"{r['case']:<12} {r['engine']:<13} {r['median_s']:>9.3f} {r['min_s']:>7.3f} {r['max_s']:>7.3f} "
              f"{r['tokens_per_s']:>8.1f} {r['speedup_vs_transformers']:>15.2f}")
    args.json.write_text(json.dumps({"shape": args.shape, "repeats": args.repeats, "prefill_scaled_error": scaled, "greedy_tokens_equal_fraction": agree,
                                     "rows": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
