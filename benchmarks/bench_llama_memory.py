"""Peak memory and speed of a LLaMA under each weight policy, on a bfloat16 checkpoint of a
published shape with random weights (written here with NumPy, no torch):

    python benchmarks/bench_llama_memory.py [--shape llama-3.2-1b|llama-3-8b] [--json out.json]

For each policy ("float32": every matrix widened at load; "lazy": matrices left in the mapped
bfloat16 file, each block's widened when it runs), a fresh process loads the model, runs one
forward pass over 16 tokens and a greedy generation of 8 tokens, and reports its peak resident
memory (VmHWM, which counts the file's pages it touched) and the seconds of each step.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
SHAPES = {
    "llama-3.2-1b": dict(hidden_size=2048, intermediate_size=8192, num_hidden_layers=16, num_attention_heads=32,
                         num_key_value_heads=8, tie_word_embeddings=True, rms_norm_eps=1e-5),
    "llama-3-8b": dict(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
                       num_key_value_heads=8, tie_word_embeddings=False, rms_norm_eps=1e-5),
}
CHILD = """
import json, sys, time
import numpy as np
import minigpt
t = time.perf_counter()
model = minigpt.from_pretrained(sys.argv[1], weights=sys.argv[2])
load = time.perf_counter() - t
ids = np.arange(1, 17)[None]
t = time.perf_counter(); model(ids, last_only=True); forward = time.perf_counter() - t
t = time.perf_counter(); minigpt.generate(model, ids.tolist(), max_new_tokens=8, temperature=0); gen = time.perf_counter() - t
peak = int(next(l for l in open("/proc/self/status") if l.startswith("VmHWM")).split()[1]) * 1024
print(json.dumps({"load_s": load, "forward_16_s": forward, "generate_8_s": gen, "peak_rss_bytes": peak}))
"""


def write_checkpoint(folder: Path, shape: str) -> int:
    """config.json and a bfloat16 model.safetensors of random weights (sd 0.02; norms 1)."""
    from safetensors.numpy import save_file

    from minigpt.llama import LlamaConfig, expected_shapes

    fields = dict(vocab_size=128256, max_position_embeddings=8192, rope_theta=500000.0, **SHAPES[shape])
    config = LlamaConfig(**fields)
    rng = np.random.default_rng(0)
    tensors = {}
    for name, dims in expected_shapes(config).items():
        x = np.ones(dims, np.float32) if "norm" in name else rng.standard_normal(dims, dtype=np.float32) * np.float32(0.02)
        tensors[("" if name == "lm_head.weight" else "model.") + name] = (x.view(np.uint32) >> 16).astype(np.uint16)
    path = folder / "model.safetensors"
    save_file({k: v for k, v in tensors.items()}, str(path))        # uint16 bits...
    # ...relabelled as BF16 in the header (safetensors.numpy has no bfloat16)
    raw = path.read_bytes()
    n = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8:8 + n])
    for k, v in header.items():
        if k != "__metadata__":
            v["dtype"] = "BF16"
    new = json.dumps(header).encode()
    new = new.ljust((len(new) + 7) // 8 * 8)                         # keep the data 8-byte aligned
    path.write_bytes(len(new).to_bytes(8, "little") + new + raw[8 + n:])
    (folder / "config.json").write_text(json.dumps({"model_type": "llama", **fields}))
    return path.stat().st_size


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", choices=SHAPES, default="llama-3.2-1b")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix=f"bench-{args.shape}-"))
    size = write_checkpoint(folder, args.shape)
    rows = []
    for policy in ("float32", "lazy"):
        out = subprocess.run([sys.executable, "-c", CHILD, str(folder), policy], capture_output=True, text=True,
                             check=True)
        row = {"policy": policy, **json.loads(out.stdout.strip().splitlines()[-1])}
        rows.append(row)
        print(f"{args.shape} ({size / 1e9:.2f} GB bfloat16 file), weights={policy}: peak RSS "
              f"{row['peak_rss_bytes'] / 1e9:.2f} GB; load {row['load_s']:.1f} s, forward of 16 tokens "
              f"{row['forward_16_s']:.1f} s, 8 greedy tokens {row['generate_8_s']:.1f} s", flush=True)
    (args.json or HERE / f"bench_llama_memory_{args.shape}.json").write_text(
        json.dumps({"shape": args.shape, "file_bytes": size, "rows": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
