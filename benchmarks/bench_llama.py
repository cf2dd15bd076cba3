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

import torch
import transformers

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import alternate  # noqa: E402
import minigpt  # noqa: E402
from bench_lazy import write_checkpoint  # noqa: E402



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
    ours = minigpt.from_pretrained(folder, weights="float32")
    c = hf.config
    title = (f"{args.shape} shape ({c.num_hidden_layers} x {c.hidden_size}, vocab {c.vocab_size}), bfloat16 file, "
             "float32")
    doc = alternate.versus_transformers(hf, ours, bos=128000, pad=0, repeats=args.repeats, title=title)
    args.json.write_text(json.dumps({"shape": args.shape, **doc}, indent=2) + "\n")


if __name__ == "__main__":
    main()
