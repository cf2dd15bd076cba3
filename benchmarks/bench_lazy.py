"""The paper's models on this CPU: each weight policy on a half-precision checkpoint of a published
shape with random weights, against the machine's limits measured in the same run.

    python benchmarks/bench_lazy.py [--shape llama-3.2-1b|llama-3-8b|opt-1.3b|opt-6.7b ...]
                                    [--folder DIR] [--delete] [--no-reference] [--json out.json]

The checkpoint (bfloat16 for LLaMA, float16 for OPT, as published; sd 0.02, norms 1) is written
once into --folder (default ~/.cache/minigpt-bench/SHAPE: 16 GB for llama-3-8b) and reused;
--delete removes it at the end. For each policy that fits in memory ("float32" needs 4 bytes a
parameter: not the 8B shapes on 24 GiB), a fresh process loads the model and measures: peak RSS
(VmHWM, which counts the mapped file's pages), a 32-token prefill, decode at batch 1 (tokens/s
over 4 steps with a KV cache) and at batch 64 (2 steps after a 4-token prefill). transformers
(bfloat16/float16 on the CPU, as loaded) runs the same steps where its weights fit.

Bounds (benchmarks/limits.py, measured in this run, before the models): decode batch 1 can go
no faster than reading the half-precision file once a token (the fastest read of 2 GB of memory
seen here); decode batch 64 no faster than its matrix products at the fastest float32 GEMM
rate seen here for the pass's shapes. The projection: the paper's sentiment experiment (1,000
prompts x 64 new tokens, ICLR 2025 / v5) and toxicity (2,000 x 32) at batch 64.

Run it alone: two processes each running multithreaded BLAS on 2 cores run many times slower.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import limits  # noqa: E402

LLAMA_VOCAB = dict(vocab_size=128256, max_position_embeddings=8192, rope_theta=500000.0, rms_norm_eps=1e-5)
SHAPES = {
    "llama-3.2-1b": ("llama", "BF16", dict(hidden_size=2048, intermediate_size=8192, num_hidden_layers=16,
                                           num_attention_heads=32, num_key_value_heads=8, tie_word_embeddings=True,
                                           **LLAMA_VOCAB)),
    "llama-3-8b": ("llama", "BF16", dict(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                                         num_attention_heads=32, num_key_value_heads=8, tie_word_embeddings=False,
                                         **LLAMA_VOCAB)),
    "opt-1.3b": ("opt", "F16", dict(hidden_size=2048, ffn_dim=8192, num_hidden_layers=24, num_attention_heads=32,
                                    vocab_size=50272, max_position_embeddings=2048)),
    "opt-6.7b": ("opt", "F16", dict(hidden_size=4096, ffn_dim=16384, num_hidden_layers=32, num_attention_heads=32,
                                    vocab_size=50272, max_position_embeddings=2048)),
}
PAPER = {"sentiment (1,000 x 64 new tokens)": (1000, 64), "toxicity (2,000 x 32 new tokens)": (2000, 32)}


# ---------------------------------------------------------------------------------------------
# The checkpoint, written a tensor at a time (an 8B model's tensors would not fit beside their file)


def tensor_shapes(family: str, fields: dict) -> dict[str, tuple[int, ...]]:
    """Every tensor under the name a Hugging Face file stores it."""
    if family == "llama":
        from minigpt.llama import LlamaConfig, expected_shapes
        shapes = expected_shapes(LlamaConfig(**fields))
        return {("" if n == "lm_head.weight" else "model.") + n: s for n, s in shapes.items()}
    from minigpt.opt import OPTConfig, expected_shapes
    shapes = expected_shapes(OPTConfig(**fields))
    return {("" if n == "lm_head.weight" else "model.decoder.") + n: s for n, s in shapes.items()}


def write_checkpoint(folder: Path, shape: str) -> int:
    """config.json and model.safetensors of random weights in the shape's published dtype;
    kept if one of the same config and size is there. Returns the file's size."""
    family, dtype, fields = SHAPES[shape]
    config = {"model_type": family, "torch_dtype": "bfloat16" if dtype == "BF16" else "float16", **fields}
    if family == "opt":
        config.update(activation_function="relu", do_layer_norm_before=True, word_embed_proj_dim=fields["hidden_size"])
    shapes = tensor_shapes(family, fields)
    header, offset = {}, 0
    for name, dims in shapes.items():
        nbytes = 2 * math.prod(dims)
        header[name] = {"dtype": dtype, "shape": list(dims), "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    raw = json.dumps(header).encode()
    raw = raw.ljust((len(raw) + 7) // 8 * 8)                          # the data 8-byte aligned
    size = 8 + len(raw) + offset
    path = folder / "model.safetensors"
    if (folder / "config.json").is_file() and json.loads((folder / "config.json").read_text()) == config \
            and path.is_file() and path.stat().st_size == size:
        return size
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    block = 1 << 24
    partial = path.with_suffix(".partial")
    with open(partial, "wb") as f:
        f.write(len(raw).to_bytes(8, "little") + raw)
        for name, dims in shapes.items():
            count = math.prod(dims)
            for start in range(0, count, block):
                n = min(block, count - start)
                x = np.ones(n, np.float32) if "norm" in name else rng.standard_normal(n, dtype=np.float32) * np.float32(0.02)
                f.write(((x.view(np.uint32) >> 16).astype(np.uint16) if dtype == "BF16" else x.astype(np.float16)).tobytes())
    partial.replace(path)                                            # nothing half-written under the real name
    (folder / "config.json").write_text(json.dumps(config))
    return size


# ---------------------------------------------------------------------------------------------
# Measurements, each in a fresh process

CHILD = r"""
import json, sys, time
import numpy as np
engine, folder, policy = sys.argv[1:4]
timing = {}
t = time.perf_counter()
if engine == "minigpt":
    import minigpt
    model = minigpt.from_pretrained(folder, weights=policy)
    assert model.lazy_weights == (policy == "lazy")
    def new_cache(rows, length): return model.new_cache(rows, length)
    def step(ids, cache): return model(ids, cache=cache, last_only=True)
else:
    import torch, transformers
    torch.set_grad_enabled(False)
    model = transformers.AutoModelForCausalLM.from_pretrained(folder, torch_dtype="auto").eval()
    def new_cache(rows, length): return transformers.DynamicCache()
    def step(ids, cache):
        return model(torch.as_tensor(ids), past_key_values=cache, use_cache=True, logits_to_keep=1).logits
timing["load_s"] = time.perf_counter() - t

def run(rows, prompt, steps):
    cache = new_cache(rows, prompt + steps)
    ids = np.arange(1, prompt + 1)[None].repeat(rows, 0)
    t = time.perf_counter(); step(ids, cache); prefill = time.perf_counter() - t
    times = []
    for _ in range(steps):
        t = time.perf_counter(); step(np.full((rows, 1), 7), cache); times.append(time.perf_counter() - t)
    return prefill, times

run(1, 4, 1)                                                   # touches every page of the file once
prefill, times = run(1, 32, 4)
timing["prefill_32_s"] = prefill
timing["decode_b1_step_s"] = sorted(times)[len(times) // 2]
prefill, times = run(64, 4, 2)
timing["decode_b64_step_s"] = min(times)
timing["peak_rss_bytes"] = int(next(l for l in open("/proc/self/status") if l.startswith("VmHWM")).split()[1]) * 1024
print(json.dumps(timing))
"""


def measure(engine: str, folder: Path, policy: str) -> dict:
    out = subprocess.run([sys.executable, "-c", CHILD, engine, str(folder), policy], capture_output=True, text=True)
    if out.returncode:
        raise SystemExit(f"{engine} {policy} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def available_bytes() -> int:
    return int(next(l for l in open("/proc/meminfo") if l.startswith("MemAvailable")).split()[1]) * 1024


def bounds(shape: str) -> dict:
    """The read rate (bytes/s) and float32 GEMM rate (FLOP/s) of this machine, the fastest seen."""
    family, _, fields = SHAPES[shape]
    d = fields["hidden_size"]
    f = fields.get("intermediate_size") or fields["ffn_dim"]
    matrices = [np.ones((4096, 8192), np.float32) for _ in range(16)]             # 2.1 GB, past any cache
    read = limits.fastest(limits.read_methods(matrices), repeats=3)
    del matrices
    gemm = limits.fastest(limits.gemm_methods([(64, d, d), (64, d, f), (64, f, d)]), repeats=3)
    return {"read_bytes_per_s": read["rate"], "read_method": read["method"],
            "gemm_flops_per_s": gemm["rate"], "gemm_method": gemm["method"]}


def matmul_parameters(shape: str) -> int:
    """The parameters a token multiplies by (every matrix but the embedding lookup tables)."""
    family, _, fields = SHAPES[shape]
    shapes = tensor_shapes(family, fields)
    lookups = ("embed_positions",) + (("embed_tokens",) if family == "llama" and not fields["tie_word_embeddings"] else ())
    return sum(math.prod(s) for n, s in shapes.items() if len(s) == 2 and not any(k in n for k in lookups))


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", choices=SHAPES, nargs="+", default=["llama-3.2-1b"])
    parser.add_argument("--folder", type=Path, help="where checkpoints are kept (default ~/.cache/minigpt-bench)")
    parser.add_argument("--delete", action="store_true", help="delete each checkpoint after its measurements")
    parser.add_argument("--no-reference", action="store_true", help="skip transformers")
    parser.add_argument("--json", type=Path, help="default: benchmarks/bench_lazy_SHAPE.json")
    args = parser.parse_args()
    for shape in args.shape:
        folder = (args.folder or Path.home() / ".cache" / "minigpt-bench") / shape
        t = time.perf_counter()
        size = write_checkpoint(folder, shape)
        written = time.perf_counter() - t
        params = sum(math.prod(s) for s in tensor_shapes(SHAPES[shape][0], SHAPES[shape][2]).values())
        mm = matmul_parameters(shape)
        limit = bounds(shape)
        b1_bound = limit["read_bytes_per_s"] / size                                # tokens/s
        b64_bound = limit["gemm_flops_per_s"] / (2.0 * mm)                         # tokens/s
        rows = []
        runs = [("minigpt", "lazy")]
        if 4 * params < 0.8 * available_bytes():
            runs.append(("minigpt", "float32"))
        if not args.no_reference and 2 * params + size < 0.9 * available_bytes():
            runs.append(("transformers", "half"))
        for engine, policy in runs:
            m = measure(engine, folder, policy)
            row = {"engine": engine, "policy": policy, **m,
                   "decode_b1_tokens_per_s": 1 / m["decode_b1_step_s"],
                   "decode_b64_tokens_per_s": 64 / m["decode_b64_step_s"]}
            row["b1_of_read_bound"] = row["decode_b1_tokens_per_s"] / b1_bound
            row["b64_of_gemm_bound"] = row["decode_b64_tokens_per_s"] / b64_bound
            row["rss_over_file_bytes"] = m["peak_rss_bytes"] - size
            row["projected_hours_b64"] = {k: n * new / row["decode_b64_tokens_per_s"] / 3600
                                          for k, (n, new) in PAPER.items()}
            rows.append(row)
        limits.enforce(limits.check_bounds(
            {f"b1 {r['engine']} {r['policy']}": r["decode_b1_tokens_per_s"] for r in rows if r["engine"] == "minigpt"} |
            {f"b64 {r['engine']} {r['policy']}": r["decode_b64_tokens_per_s"] for r in rows if r["engine"] == "minigpt"},
            {"b1": b1_bound, "b64": b64_bound}))
        print(f"\n{shape}: {params / 1e9:.2f}B parameters, {SHAPES[shape][1]} file {size / 1e9:.2f} GB "
              f"(written or found in {written:.0f} s). Bounds this run: read {limit['read_bytes_per_s'] / 1e9:.1f} GB/s "
              f"-> decode b1 <= {b1_bound:.2f} tok/s; GEMM {limit['gemm_flops_per_s'] / 1e9:.0f} GFLOP/s -> "
              f"decode b64 <= {b64_bound:.1f} tok/s")
        print("| engine | weights | peak RSS (GB) | RSS - file | prefill 32 (s) | decode b1 (tok/s) | % read bound "
              "| decode b64 (tok/s) | % GEMM bound | sentiment at b64 (h) | toxicity at b64 (h) |")
        print("|---|---|---|---|---|---|---|---|---|---|---|")
        for r in rows:
            hours = list(r["projected_hours_b64"].values())
            print(f"| {r['engine']} | {r['policy']} | {r['peak_rss_bytes'] / 1e9:.2f} | {r['rss_over_file_bytes'] / 1e9:+.2f} | "
                  f"{r['prefill_32_s']:.2f} | {r['decode_b1_tokens_per_s']:.2f} | {r['b1_of_read_bound']:.0%} | "
                  f"{r['decode_b64_tokens_per_s']:.1f} | {r['b64_of_gemm_bound']:.0%} | {hours[0]:.1f} | {hours[1]:.1f} |",
                  flush=True)
        result = {"shape": shape, "dtype": SHAPES[shape][1], "fields": SHAPES[shape][2], "parameters": params,
                  "matmul_parameters": mm, "file_bytes": size, "bounds": limit,
                  "decode_b1_bound_tokens_per_s": b1_bound, "decode_b64_bound_tokens_per_s": b64_bound,
                  "cpu_count": os.cpu_count(), "rows": rows}
        (args.json if args.json and len(args.shape) == 1 else HERE / f"bench_lazy_{shape}.json").write_text(
            json.dumps(result, indent=2) + "\n")
        if args.delete:
            shutil.rmtree(folder)


if __name__ == "__main__":
    main()
