"""minigpt's OPT against transformers' OPTForCausalLM (PyTorch CPU) on the same random weights of
a real OPT shape (float32), both engines in one process:

    python benchmarks/bench_opt.py [--shape opt-125m|opt-1.3b] [--repeats 3] [--json out.json]

    prefill 128      one forward pass over 128 tokens, logits for every position
    decode b1 / b8   greedy generation of 32 new tokens after a 16-token prompt, batch 1 / 8
                     (tok/s counts new tokens of all rows; the prefill is included)

transformers runs `model(...)` and `model.generate(do_sample=False)` with its KV cache; minigpt
runs `model(...)` and `minigpt.generate(temperature=0)`. Every repeat runs every case on both
engines, the order alternating between repeats (benchmarks/alternate.py); the table gives
medians, and minigpt's speed relative to transformers (benchmarks/alternate.py's
versus_transformers: the prefill's logits must agree within the parity tolerance, and the
share of equal greedy tokens is reported). Needs the test extra.
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

SHAPES = {  # the published configs' sizes
    "opt-125m": dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, ffn_dim=3072,
                     word_embed_proj_dim=768),
    "opt-1.3b": dict(hidden_size=2048, num_hidden_layers=24, num_attention_heads=32, ffn_dim=8192,
                     word_embed_proj_dim=2048),
}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", choices=SHAPES, default="opt-125m")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", type=Path, help="default: benchmarks/bench_opt_SHAPE.json")
    args = parser.parse_args()
    args.json = args.json or HERE / f"bench_opt_{args.shape}.json"
    torch.set_num_threads(os.cpu_count() or 1)

    config = transformers.OPTConfig(vocab_size=50272, max_position_embeddings=2048, pad_token_id=1, bos_token_id=2,
                                    eos_token_id=2, **SHAPES[args.shape])
    torch.manual_seed(0)
    hf = transformers.OPTForCausalLM(config).eval()          # transformers' own initialisation (sd 0.02)
    folder = Path(tempfile.mkdtemp(prefix=f"bench-{args.shape}-"))
    hf.save_pretrained(folder)
    ours = minigpt.from_pretrained(folder)
    c = config
    title = f"{args.shape} shape ({c.num_hidden_layers} x {c.hidden_size}, vocab {c.vocab_size}), float32"
    doc = alternate.versus_transformers(hf, ours, bos=2, pad=1, repeats=args.repeats, title=title)
    args.json.write_text(json.dumps({"shape": args.shape, **doc}, indent=2) + "\n")


if __name__ == "__main__":
    main()
