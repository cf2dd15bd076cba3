"""minigpt against transformers (PyTorch CPU) on the same random weights of a real GPT-2 shape
(float32), both engines in one process, plus the machine's own limits measured in the same run:

    python benchmarks/bench_model.py [--shape gpt2|gpt2-medium] [--repeats 5] [--json out.json]

    prefill 128 / 1024   one forward pass over that many tokens, logits for every position
    decode b1 / b8       greedy generation of 64 new tokens after a 16-token prompt, batch 1 / 8
                         (tok/s counts new tokens of all rows; the 16-token prefill is included)
    decode b1 steered    the same with an ActAdd vector (two 4-token additions at the middle
                         layer) on the prompt's positions: minigpt against minigpt unsteered
    load                 a fresh process loading the local float32 checkpoint: seconds, and its
                         peak resident memory (VmHWM) against the checkpoint's bytes

    limits               bandwidth: every weight matrix read once, the least a batch-1 decode
                         step can cost when the weights do not fit in cache; compute: float32
                         GEMM GFLOP/s at the prefill's shapes, which with the prefill's FLOPs
                         bounds prefill tok/s. Each is the FASTEST of several methods x repeats
                         (limits.py), measured after the engines, and the run fails (exit 1,
                         after writing the JSON) if any engine is above 100% of a bound

transformers runs its own `model(...)` and `model.generate(do_sample=False)` with its KV cache;
minigpt runs `model(...)` and `minigpt.generate(temperature=0)`. Every repeat runs every case on
both engines, the order alternating between repeats (the machines are noisy); the table gives
medians, min and max, and minigpt's speed relative to transformers. Needs the test extra.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import threadpoolctl
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))
sys.path.insert(0, str(HERE))

import alternate  # noqa: E402
import limits as machine  # noqa: E402
import minigpt  # noqa: E402
import reference  # noqa: E402
from actadd import ActivationAddition, SteeringVector  # noqa: E402
from minigpt import GPT2, GPT2Config  # noqa: E402

SHAPES = {"gpt2": GPT2Config(), "gpt2-medium": GPT2Config(n_layer=24, n_head=16, n_embd=1024)}

LOAD = {  # engine: (imports, the load), run in a fresh process for each measurement
    "minigpt": ("import minigpt", "minigpt.GPT2.from_pretrained(folder)"),
    "transformers": ("import torch, transformers",
                     "transformers.GPT2LMHeadModel.from_pretrained(folder, dtype=torch.float32)"),
}
LOAD_SCRIPT = """
import sys, time
{imports}
def peak_rss_kb(): return int(next(l for l in open('/proc/self/status') if l.startswith('VmHWM')).split()[1])
folder = sys.argv[1]
before = peak_rss_kb(); start = time.perf_counter()
model = {load}
print(time.perf_counter() - start, before, peak_rss_kb())
"""


def load_in_fresh_process(engine: str, folder: Path) -> tuple[float, int, int]:
    """Seconds to load, and peak RSS in bytes before (after the imports) and after loading."""
    imports, load = LOAD[engine]
    script = LOAD_SCRIPT.format(imports=imports, load=load)
    out = subprocess.run([sys.executable, "-c", script, str(folder)], check=True, capture_output=True, text=True)
    seconds, before, after = out.stdout.split()
    return float(seconds), int(before) * 1024, int(after) * 1024


def prefill_flops(config: GPT2Config, n: int) -> float:
    """Multiply-adds x 2 of a prefill of n tokens with all logits: the four matrices per block,
    the causal half of q k^T and pattern v, and the unembedding."""
    d, L = config.n_embd, config.n_layer
    per_token = L * (d * 3 * d + d * d + 2 * d * config.d_mlp) + d * config.vocab_size
    attention = L * 2 * d * n * (n + 1) / 2
    return 2 * (n * per_token + attention)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", choices=SHAPES, default="gpt2")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--json", type=Path, help="default: benchmarks/bench_model_SHAPE.json")
    args = parser.parse_args()
    args.json = args.json or HERE / f"bench_model_{args.shape}.json"
    torch.set_num_threads(os.cpu_count() or 1)  # the reference module sets 1 for its tiny test models

    config = SHAPES[args.shape]
    folder = Path(tempfile.mkdtemp(prefix=f"bench-{args.shape}-"))
    reference.write_checkpoint(folder, config, seed=0, layout="prefixed")
    checkpoint_bytes = (folder / "model.safetensors").stat().st_size
    hf = reference.transformers.GPT2LMHeadModel.from_pretrained(folder, dtype=torch.float32).eval()
    ours = GPT2.from_pretrained(folder)
    rng = np.random.default_rng(0)
    long_ids = rng.integers(0, config.vocab_size, (1, 1024))
    prompts = rng.integers(0, config.vocab_size, (8, 16))
    layer = config.n_layer // 2
    plus, minus = (tuple(rng.integers(0, config.vocab_size, 4)) for _ in range(2))
    additions = (ActivationAddition(plus, 4.0, layer), ActivationAddition(minus, -4.0, layer))
    vector = SteeringVector(additions, tuple(a.coeff * ours.run_with_cache(list(a.tokens))[1][
        f"blocks.{layer}.hook_resid_pre"][0] for a in additions))

    def hf_generate(batch):
        ids = torch.as_tensor(prompts[:batch])
        out = hf.generate(input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=False, max_new_tokens=64,
                          min_new_tokens=64, pad_token_id=0)
        assert out.shape == (batch, 16 + 64)

    def ours_generate(batch, hooks=()):
        out = minigpt.generate(ours, prompts[:batch].tolist(), max_new_tokens=64, temperature=0, fwd_hooks=hooks)
        assert all(len(t) == 64 for t in out.tokens)

    def hf_prefill(n):
        with torch.no_grad():
            hf(torch.as_tensor(long_ids[:, :n]))

    matrices = [ours.wte] + [block[a][b]["weight"] for block in ours.h
                             for a, b in (("attn", "c_attn"), ("attn", "c_proj"), ("mlp", "c_fc"), ("mlp", "c_proj"))]
    weight_bytes = sum(w.nbytes for w in matrices)
    d = config.n_embd
    gemm_shapes = [(1024, d, 3 * d), (1024, d, d), (1024, d, config.d_mlp), (1024, config.d_mlp, d),
                   (1024, d, config.vocab_size)]                 # a 1024-token prefill's products

    steer = vector.hooks(prompt_lengths=16)
    cases = {  # name: (units of work, {engine: run})
        "prefill 128": (128, {"transformers": lambda: hf_prefill(128), "minigpt": lambda: ours(long_ids[:, :128])}),
        "prefill 1024": (1024, {"transformers": lambda: hf_prefill(1024), "minigpt": lambda: ours(long_ids)}),
        "decode b1": (64, {"transformers": lambda: hf_generate(1), "minigpt": lambda: ours_generate(1),
                           "minigpt steered": lambda: ours_generate(1, steer)}),
        "decode b8": (8 * 64, {"transformers": lambda: hf_generate(8), "minigpt": lambda: ours_generate(8)}),
    }
    alternate.warm_up(cases)
    load = {engine: [] for engine in LOAD}

    def loads(r):
        for engine in (list(LOAD) if r % 2 == 0 else list(LOAD)[::-1]):
            load[engine].append(load_in_fresh_process(engine, folder))

    times = alternate.time_alternating(cases, args.repeats, after_each_repeat=loads)
    rows = alternate.rows(cases, times, baseline="transformers")
    row = {(r["case"], r["engine"]): r for r in rows}

    # The machine's limits, each the fastest of several methods x repeats: a bound must be one
    # that no engine exceeds (limits.py says how it once was not).
    read = machine.fastest(machine.read_methods(matrices), repeats=max(10, args.repeats))
    compute = machine.fastest(machine.gemm_methods(gemm_shapes), repeats=max(5, args.repeats))
    bandwidth_s, gflops = weight_bytes / read["rate"], compute["rate"] / 1e9
    limits = {
        "weights_read_once": {"bytes": weight_bytes, "seconds": bandwidth_s, "GB_per_s": read["rate"] / 1e9,
                              "method": read["method"], "GB_per_s_by_method": {k: v / 1e9 for k, v in read["per_method_rate"].items()},
                              "decode_b1_bound_tokens_per_s": 1 / bandwidth_s},
        "gemm": {"shapes": gemm_shapes, "GFLOP_per_s": gflops, "method": compute["method"],
                 "GFLOP_per_s_by_shape": {k: v / 1e9 for k, v in compute["per_method_rate"].items()},
                 "prefill_bound_tokens_per_s": {n: n / (prefill_flops(config, n) / (gflops * 1e9)) for n in (128, 1024)}},
    }
    bounds = {"decode b1": 1 / bandwidth_s, **{f"prefill {n}": b for n, b in limits["gemm"]["prefill_bound_tokens_per_s"].items()}}
    violations = machine.check_bounds({f"{r['case']} {r['engine']}": r["tokens_per_s"] for r in rows}, bounds)
    loads = {}
    for engine, runs in load.items():
        secs, before, after = zip(*runs)
        loads[engine] = {"median_s": statistics.median(secs), "min_s": min(secs), "max_s": max(secs),
                         "peak_rss_before_load": statistics.median(before), "peak_rss_after_load": statistics.median(after),
                         "peak_rss_after_load_over_checkpoint": statistics.median(after) / checkpoint_bytes}
    steered_ratio = row["decode b1", "minigpt steered"]["median_s"] / row["decode b1", "minigpt"]["median_s"]
    blas = threadpoolctl.threadpool_info()

    c = config
    print(f"{args.shape} shape ({c.n_layer} x {c.n_embd}, vocab {c.vocab_size}), float32; {args.repeats} repeats; "
          f"Python {platform.python_version()}, numpy {np.__version__}, torch {torch.__version__} "
          f"({torch.get_num_threads()} threads), {os.cpu_count()} cores")
    print("threads: " + "; ".join(f"{b['internal_api']} {b.get('version') or ''} {b.get('architecture') or ''} "
                                  f"{b['num_threads']} threads ({b['prefix']})" for b in blas))
    print(f"{'case':<14} {'engine':<16} {'median s':>9} {'min':>7} {'max':>7} {'tok/s':>8} {'x transformers':>15}")
    for r in rows:
        print(f"{r['case']:<14} {r['engine']:<16} {r['median_s']:>9.3f} {r['min_s']:>7.3f} {r['max_s']:>7.3f} "
              f"{r['tokens_per_s']:>8.1f} {r['speedup_vs_transformers']:>15.2f}")
    for engine, l in loads.items():
        print(f"{'load':<14} {engine:<16} {l['median_s']:>9.3f} {l['min_s']:>7.3f} {l['max_s']:>7.3f}   peak RSS "
              f"{l['peak_rss_after_load'] / 1e6:.0f} MB (before loading {l['peak_rss_before_load'] / 1e6:.0f} MB) = "
              f"{l['peak_rss_after_load_over_checkpoint']:.2f}x the {checkpoint_bytes / 1e6:.0f} MB checkpoint")
    b1 = row["decode b1", "minigpt"]["tokens_per_s"]
    print(f"steered decode b1 takes {steered_ratio:.3f}x the time of unsteered")
    print(f"limit, bandwidth: {weight_bytes / 1e6:.0f} MB of weights read once in {bandwidth_s * 1e3:.1f} ms "
          f"= {weight_bytes / bandwidth_s / 1e9:.1f} GB/s (fastest: {read['method']}; "
          + ", ".join(f"{k} {v / 1e9:.1f}" for k, v in read["per_method_rate"].items())
          + f"), so batch-1 decode is bound near {1 / bandwidth_s:.1f} tok/s; "
          f"minigpt reaches {b1 * bandwidth_s:.0%} of it, transformers "
          f"{row['decode b1', 'transformers']['tokens_per_s'] * bandwidth_s:.0%}")
    for n, bound in limits["gemm"]["prefill_bound_tokens_per_s"].items():
        print(f"limit, compute: GEMM {gflops:.0f} GFLOP/s (fastest shape {compute['method']}), so prefill {n} is bound near {bound:.0f} tok/s; minigpt "
              f"reaches {row[f'prefill {n}', 'minigpt']['tokens_per_s'] / bound:.0%} of it, transformers "
              f"{row[f'prefill {n}', 'transformers']['tokens_per_s'] / bound:.0%}")
    args.json.write_text(json.dumps({
        "shape": args.shape, "config": dataclasses.asdict(config),
        "repeats": args.repeats, "python": platform.python_version(), "numpy": np.__version__,
        "torch": torch.__version__, "torch_threads": torch.get_num_threads(), "cores": os.cpu_count(),
        "threadpools": blas, "rows": rows, "load": {"checkpoint_bytes": checkpoint_bytes, **loads},
        "steered_over_unsteered_decode_b1": steered_ratio, "limits": limits, "bound_violations": violations},
        indent=2, default=str))
    print(f"wrote {args.json}")
    machine.enforce(violations)


if __name__ == "__main__":
    main()
