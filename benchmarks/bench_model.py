"""minigpt against transformers (PyTorch CPU) on the same random weights of the real `gpt2` shape
(12 layers, 768 wide, vocab 50257, float32), in one process:

    python benchmarks/bench_generate.py [--repeats 3] [--json out.json]

    prefill 128 / 1024   one forward pass over that many tokens, logits for every position
    decode b1 / b8       greedy generation of 64 new tokens after a 16-token prompt, batch 1 / 8
                         (tok/s counts new tokens of all rows; the 16-token prefill is included)
    weights read once    one matrix-vector product with every weight matrix (the four per block,
                         and wte for the logits): the least a batch-1 decode step can cost when
                         the weights do not fit in cache, i.e. this machine's bandwidth limit

transformers runs its own `model(...)` and `model.generate(do_sample=False)` with its KV cache;
minigpt runs `model(...)` and `minigpt.generate(temperature=0)`. Each repeat runs every case on
both engines, the engine order alternating between repeats (the machines are noisy); the table
gives medians, min and max, and minigpt's speed relative to transformers. Needs the test extra.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))

import minigpt  # noqa: E402
import reference  # noqa: E402
from minigpt import GPT2, GPT2Config  # noqa: E402


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", type=Path, default=HERE / "bench_generate.json")
    args = parser.parse_args()
    torch.set_num_threads(os.cpu_count() or 1)  # the reference module sets 1 for its tiny test models

    config = GPT2Config()
    folder = Path(tempfile.mkdtemp(prefix="bench-gpt2-"))
    reference.write_checkpoint(folder, config, seed=0, layout="prefixed")
    hf = reference.transformers.GPT2LMHeadModel.from_pretrained(folder, dtype=torch.float32).eval()
    ours = GPT2.from_pretrained(folder)
    rng = np.random.default_rng(0)
    long_ids = rng.integers(0, config.vocab_size, (1, 1024))
    prompts = rng.integers(0, config.vocab_size, (8, 16))

    def hf_generate(batch):
        ids = torch.as_tensor(prompts[:batch])
        out = hf.generate(input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=False, max_new_tokens=64,
                          min_new_tokens=64, pad_token_id=0)
        assert out.shape == (batch, 16 + 64)

    def ours_generate(batch):
        out = minigpt.generate(ours, prompts[:batch].tolist(), max_new_tokens=64, temperature=0)
        assert all(len(t) == 64 for t in out.tokens)

    def hf_prefill(n):
        with torch.no_grad():
            hf(torch.as_tensor(long_ids[:, :n]))

    matrices = [ours.wte.T] + [layer[a][b]["weight"] for layer in ours.h
                               for a, b in (("attn", "c_attn"), ("attn", "c_proj"), ("mlp", "c_fc"), ("mlp", "c_proj"))]
    weight_bytes = sum(w.nbytes for w in matrices)
    vector = np.ones((1, config.n_embd), np.float32)

    def read_weights_once():
        for w in matrices:
            (vector if w.shape[0] == config.n_embd else np.ones((1, w.shape[0]), np.float32)) @ w

    cases = {  # name: (units of work, transformers, minigpt)
        "prefill 128": (128, lambda: hf_prefill(128), lambda: ours(long_ids[:, :128])),
        "prefill 1024": (1024, lambda: hf_prefill(1024), lambda: ours(long_ids)),
        "decode b1 (64 after 16)": (64, lambda: hf_generate(1), lambda: ours_generate(1)),
        "decode b8 (64 after 16)": (8 * 64, lambda: hf_generate(8), lambda: ours_generate(8)),
    }
    for _, run_hf, run_ours in cases.values():  # warm-up: page in the weights, build kernels
        run_hf(), run_ours()
    read_weights_once()
    limit_times = []

    times = {(case, engine): [] for case in cases for engine in ("transformers", "minigpt")}
    for r in range(args.repeats):
        for case, (_, run_hf, run_ours) in cases.items():
            order = [("transformers", run_hf), ("minigpt", run_ours)]
            for engine, run in (order if r % 2 == 0 else order[::-1]):
                start = time.perf_counter()
                run()
                times[case, engine].append(time.perf_counter() - start)
        start = time.perf_counter()
        read_weights_once()
        limit_times.append(time.perf_counter() - start)

    rows = []
    for case, (units, _, _) in cases.items():
        med = {e: statistics.median(times[case, e]) for e in ("transformers", "minigpt")}
        for engine in ("transformers", "minigpt"):
            ts = times[case, engine]
            rows.append({"case": case, "engine": engine, "median_s": med[engine], "min_s": min(ts), "max_s": max(ts),
                         "tokens_per_s": units / med[engine], "speedup_vs_transformers": med["transformers"] / med[engine]})

    limit = statistics.median(limit_times)
    b1 = next(r for r in rows if r["case"].startswith("decode b1") and r["engine"] == "minigpt")
    print(f"gpt2 shape (12 x 768, vocab 50257), float32; {args.repeats} repeats; Python {platform.python_version()}, "
          f"numpy {np.__version__}, torch {torch.__version__} ({torch.get_num_threads()} threads), {os.cpu_count()} cores")
    print(f"{'case':<26} {'engine':<13} {'median s':>9} {'min':>7} {'max':>7} {'tok/s':>8} {'x transformers':>15}")
    for row in rows:
        print(f"{row['case']:<26} {row['engine']:<13} {row['median_s']:>9.3f} {row['min_s']:>7.3f} {row['max_s']:>7.3f} "
              f"{row['tokens_per_s']:>8.1f} {row['speedup_vs_transformers']:>15.2f}")
    print(f"weights read once: {weight_bytes / 1e6:.0f} MB in {limit * 1e3:.1f} ms = {weight_bytes / limit / 1e9:.1f} GB/s, "
          f"so batch-1 decode is bound near {1 / limit:.1f} tok/s; minigpt reaches {b1['tokens_per_s'] * limit:.0%} of it")
    args.json.write_text(json.dumps({"repeats": args.repeats, "python": platform.python_version(),
                                     "numpy": np.__version__, "torch": torch.__version__, "rows": rows,
                                     "weights_read_once": {"bytes": weight_bytes, "seconds": limit,
                                                           "decode_bound_tokens_per_s": 1 / limit}}, indent=2))
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
