"""How long `actadd paper --preset v5|iclr2025` takes on the paper's 8B models, on this machine:
an estimate from measurements on random weights of Llama-3-8B's shape, not a run of it.

    python benchmarks/bench_paper_presets.py [--layers 1,2] [--json out.json]

The whole 8B model does not fit here in float32 (32 GB against 24 GB), so the benchmark builds
the shape with 1 and then 2 of its 32 blocks (random float32 weights, sd 0.02; the embedding
and the untied 128,256 x 4,096 head in full) and times, at each depth, what the experiments do
(batches of 64 rows, as `actadd eval` runs them):

    prefill   a forward pass over 64 x 32 prompt tokens, logits of the last position only
    step      one KV-cached decoding step of 64 rows (generate 5 tokens minus generate 1, / 4)
    score     a forward pass over 16 x 96 tokens with every position's logits (the fluency pass),
              per token

Each is a + b x depth (fitted through the two depths) and extrapolated to 32 blocks. The
estimate multiplies them by the batches, prompt lengths and new tokens of every experiment of
each preset at full size (the counts are exact; the costs ignore attention's growth with
length, small at under 200 positions, and Python overhead between batches). Run alone: on a
2-core machine another process with multi-threaded BLAS makes every figure several times worse.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

import minigpt  # noqa: E402
from actadd.experiments import claims  # noqa: E402
from minigpt.llama import Llama, LlamaConfig, expected_shapes  # noqa: E402

SHAPE = dict(vocab_size=128256, hidden_size=4096, intermediate_size=14336, num_attention_heads=32,
             num_key_value_heads=8, tie_word_embeddings=False, rms_norm_eps=1e-5, rope_theta=500000.0,
             max_position_embeddings=8192)
FULL_DEPTH, ROWS = 32, 64


def model_of_depth(layers: int) -> Llama:
    config = LlamaConfig(num_hidden_layers=layers, **SHAPE)
    rng = np.random.default_rng(0)
    weights = {name: (np.ones(dims, np.float32) if "norm" in name else
                      rng.standard_normal(dims, dtype=np.float32) * np.float32(0.02))
               for name, dims in expected_shapes(config).items()}
    return Llama(config, weights, source=f"random weights, Llama-3-8B's shape with {layers} blocks")


def best_of(fn, repeats: int = 2) -> float:
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def measure(layers: int) -> dict:
    model = model_of_depth(layers)
    rng = np.random.default_rng(1)
    prompts = rng.integers(1, 128000, (ROWS, 32)).tolist()
    scored = rng.integers(1, 128000, (16, 96))
    prefill = best_of(lambda: model(np.array(prompts), last_only=True))
    gen1 = best_of(lambda: minigpt.generate(model, prompts, max_new_tokens=1, temperature=0, stop_at_eos=False))
    gen5 = best_of(lambda: minigpt.generate(model, prompts, max_new_tokens=5, temperature=0, stop_at_eos=False))
    score = best_of(lambda: model(scored))
    return {"layers": layers, "prefill_64x32_s": prefill, "step_64_s": (gen5 - gen1) / 4,
            "score_token_s": score / scored.size}


def extrapolate(rows: list[dict], depth: int = FULL_DEPTH) -> dict:
    (a, b) = rows[0], rows[-1]
    out = {}
    for key in ("prefill_64x32_s", "step_64_s", "score_token_s"):
        slope = (b[key] - a[key]) / (b["layers"] - a["layers"])
        out[key] = a[key] + slope * (depth - a["layers"])
    return out


def work(preset: claims.Preset) -> dict:
    """Batches, prompt tokens, new tokens and scored tokens of each experiment of the full
    battery with this preset on a 32-block model (the GPT-2 experiments rescaled to it)."""
    def generation(conditions, prompts, prompt_tokens, new):
        batches = conditions * math.ceil(prompts / ROWS)
        return {"batches": batches, "prompt_tokens": prompt_tokens, "new_tokens": new,
                "scored_tokens": conditions * prompts * (prompt_tokens + new)}
    return {
        "topic (every layer x 200 samples, 40 new)": generation(FULL_DEPTH + 1, 200, 10, 40),
        "relevance (2,442 chunks x 101 tokens, 2 passes)": {"batches": 0, "prompt_tokens": 0, "new_tokens": 0,
                                                            "scored_tokens": 2 * 2442 * 101},
        "overhead (20 repeats x 3 forward passes of 32 x 64)": {"batches": 0, "prompt_tokens": 0, "new_tokens": 0,
                                                                "scored_tokens": 20 * 3 * 32 * 64},
        f"sentiment (2 directions x 3 conditions x {preset.sentiment_prompts:,}, {preset.sentiment_new_tokens} new)":
            generation(6, preset.sentiment_prompts, 32, preset.sentiment_new_tokens),
        f"toxicity (2 conditions x {preset.toxicity_prompts:,}, {preset.toxicity_new_tokens} new)":
            generation(2, preset.toxicity_prompts, 24, preset.toxicity_new_tokens),
    }


def seconds(item: dict, cost: dict) -> float:
    prefill = item["batches"] * cost["prefill_64x32_s"] * item["prompt_tokens"] / 32
    steps = item["batches"] * item["new_tokens"] * cost["step_64_s"]
    return prefill + steps + item["scored_tokens"] * cost["score_token_s"]


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--layers", default="1,2")
    parser.add_argument("--json", type=Path, default=HERE / "bench_paper_presets.json")
    args = parser.parse_args()
    rows = [measure(int(n)) for n in args.layers.split(",")]
    for r in rows:
        print(f"{r['layers']} block(s): prefill 64 x 32 {r['prefill_64x32_s']:.2f} s, step of 64 rows "
              f"{r['step_64_s']:.2f} s, scoring {1e3 * r['score_token_s']:.1f} ms a token", flush=True)
    cost = extrapolate(rows)
    print(f"32 blocks (extrapolated): prefill {cost['prefill_64x32_s']:.1f} s, step {cost['step_64_s']:.1f} s, "
          f"scoring {1e3 * cost['score_token_s']:.0f} ms a token")
    presets = {}
    for name, preset in claims.PRESETS.items():
        items = {k: seconds(v, cost) for k, v in work(preset).items()}
        presets[name] = {"model": preset.model, "experiments_h": {k: v / 3600 for k, v in items.items()},
                         "total_h": sum(items.values()) / 3600}
        print(f"\n--preset {name} ({preset.model}), full sizes, this machine's CPU:")
        print(f"{'experiment':<72} {'hours':>8}")
        for k, v in items.items():
            print(f"{k:<72} {v / 3600:>8.1f}")
        print(f"{'total':<72} {presets[name]['total_h']:>8.1f}")
    args.json.write_text(json.dumps({"measured": rows, "extrapolated_32_blocks": cost, "presets": presets,
                                     "rows": ROWS}, indent=2) + "\n")


if __name__ == "__main__":
    main()
