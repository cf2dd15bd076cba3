"""minigpt on the GPU (backend="cupy") against PyTorch eager (transformers) on the same GPU and
the same random float32 weights, both in one process:

    python benchmarks/bench_cuda.py [--shape gpt2|gpt2-xl] [--repeats 5] [--json out.json]

    prefill 1024   one forward pass over 1024 tokens, logits for every position
    decode b1/b8   greedy generation of 64 new tokens after a 16-token prompt, batch 1 / 8
                   (tok/s counts the new tokens of every row; the prefill is included)

Every timed run ends with the device synchronised (minigpt's generation reads the sampled ids
on the host each step anyway; a prefill is followed by a synchronize). Each case is run once
before timing (CuPy compiles its kernels on first use; PyTorch picks its cuBLAS algorithms).
Repeats alternate the order of the engines; the table gives medians, min and max.

`--backend numpy --torch-device cpu --shape tiny` runs the same script on a CPU, to check it
without a GPU (its figures say nothing about GPUs). Needs the test extra, and CuPy for the GPU.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import sys
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))
sys.path.insert(0, str(HERE))

import alternate  # noqa: E402
import minigpt  # noqa: E402
import reference  # noqa: E402
from minigpt import GPT2, GPT2Config  # noqa: E402
from minigpt.backend import get_backend  # noqa: E402

SHAPES = {"gpt2": GPT2Config(), "gpt2-xl": GPT2Config(n_layer=48, n_head=25, n_embd=1600),
          "tiny": GPT2Config(n_layer=2, n_head=2, n_embd=64, n_positions=1024, vocab_size=512)}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", choices=SHAPES, default="gpt2")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--backend", choices=("cupy", "numpy"), default="cupy")
    parser.add_argument("--torch-device", default="cuda")
    parser.add_argument("--json", type=Path, help="default: benchmarks/bench_cuda_SHAPE.json")
    args = parser.parse_args()
    args.json = args.json or HERE / f"bench_cuda_{args.shape}.json"
    backend, device = get_backend(args.backend), torch.device(args.torch_device)

    def sync():
        if args.backend == "cupy":
            backend.xp.cuda.Device().synchronize()
        if device.type == "cuda":
            torch.cuda.synchronize()

    config = SHAPES[args.shape]
    hf = reference.random_hf_model(config, seed=0)
    state = {k: t.detach().numpy() for k, t in hf.state_dict().items() if not k.startswith("lm_head")}
    ours = GPT2(config, state, backend=backend)             # the same floats, moved to the device
    hf = hf.to(device)
    del state
    rng = np.random.default_rng(0)
    long_ids = rng.integers(0, config.vocab_size, (1, 1024))
    prompts = rng.integers(0, config.vocab_size, (8, 16))

    def hf_prefill():
        with torch.no_grad():
            hf(torch.as_tensor(long_ids, device=device))
        sync()

    def ours_prefill():
        ours(long_ids)
        sync()

    def hf_generate(batch):
        ids = torch.as_tensor(prompts[:batch], device=device)
        out = hf.generate(input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=False, max_new_tokens=64,
                          min_new_tokens=64, pad_token_id=0)
        assert out.shape == (batch, 16 + 64)

    def ours_generate(batch):
        out = minigpt.generate(ours, prompts[:batch].tolist(), max_new_tokens=64, temperature=0)
        assert all(len(t) == 64 for t in out.tokens)

    cases = {  # name: (tokens of work, {engine: run})
        "prefill 1024": (1024, {"pytorch": hf_prefill, "minigpt": ours_prefill}),
        "decode b1": (64, {"pytorch": lambda: hf_generate(1), "minigpt": lambda: ours_generate(1)}),
        "decode b8": (8 * 64, {"pytorch": lambda: hf_generate(8), "minigpt": lambda: ours_generate(8)}),
    }
    alternate.warm_up(cases)
    rows = alternate.rows(cases, alternate.time_alternating(cases, args.repeats), baseline="pytorch")
    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else "none (CPU run)"
    versions = {"python": platform.python_version(), "numpy": np.__version__, "torch": torch.__version__,
                "cupy": backend.xp.__version__ if args.backend == "cupy" else None}
    c = config
    print(f"{args.shape} shape ({c.n_layer} x {c.n_embd}, vocab {c.vocab_size}), float32; {args.repeats} repeats; "
          f"minigpt on {args.backend}, pytorch eager on {device}; GPU: {gpu}; " +
          ", ".join(f"{k} {v}" for k, v in versions.items() if v))
    print(f"{'case':<14} {'engine':<9} {'median s':>9} {'min':>7} {'max':>7} {'tok/s':>9} {'x pytorch':>10}")
    for r in rows:
        print(f"{r['case']:<14} {r['engine']:<9} {r['median_s']:>9.4f} {r['min_s']:>7.4f} {r['max_s']:>7.4f} "
              f"{r['tokens_per_s']:>9.1f} {r['speedup_vs_pytorch']:>10.2f}")
    args.json.write_text(json.dumps({"shape": args.shape, "config": dataclasses.asdict(config), "repeats": args.repeats,
                                     "backend": args.backend, "torch_device": str(device), "gpu": gpu, **versions,
                                     "rows": rows}, indent=2))
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
