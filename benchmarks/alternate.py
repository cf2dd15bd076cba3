"""Timing two engines in one process on a noisy machine: every case on every engine in each
repeat, the engines' order reversed on odd repeats, medians compared. Shared by bench_model.py
and bench_cuda.py.

cases: {case name: (units of work, {engine: run})}, each run a function that finishes its work
(a GPU run synchronises before it returns).
"""

from __future__ import annotations

import statistics
import time


def warm_up(cases: dict) -> None:
    """Every run once, untimed: pages the weights in, compiles or picks kernels."""
    for _, runs in cases.values():
        for run in runs.values():
            run()


def time_alternating(cases: dict, repeats: int, after_each_repeat=None) -> dict:
    """{(case, engine): [seconds, one per repeat]}. `after_each_repeat(r)` runs other
    measurements inside the same repeat (so they share its moment of the machine)."""
    times = {(case, engine): [] for case, (_, runs) in cases.items() for engine in runs}
    for r in range(repeats):
        for case, (_, runs) in cases.items():
            for engine, run in (list(runs.items()) if r % 2 == 0 else list(runs.items())[::-1]):
                start = time.perf_counter()
                run()
                times[case, engine].append(time.perf_counter() - start)
        if after_each_repeat is not None:
            after_each_repeat(r)
    return times


def rows(cases: dict, times: dict, baseline: str) -> list[dict]:
    """One row per (case, engine): median, min and max seconds, units per second, and the
    engine's speed relative to `baseline`'s (its median time over this engine's)."""
    out = []
    for case, (units, runs) in cases.items():
        med = {e: statistics.median(times[case, e]) for e in runs}
        for engine in runs:
            ts = times[case, engine]
            out.append({"case": case, "engine": engine, "median_s": med[engine], "min_s": min(ts), "max_s": max(ts),
                        "tokens_per_s": units / med[engine], f"speedup_vs_{baseline}": med[baseline] / med[engine]})
    return out


def versus_transformers(hf, ours, bos: int, pad: int, repeats: int, title: str) -> dict:
    """A transformers causal LM and minigpt's model on the same weights, in one run: prefill 128
    tokens, greedy decode of 32 tokens after 16 at batch 1 and 8. The prefill's logits must agree
    within the parity tests' tolerance (scaled error <= 1e-4; else SystemExit); with random
    weights the logits are nearly flat over the vocabulary, where float32 rounding can swap a
    greedy choice, so the fraction of equal greedy tokens is reported, not required. Prints the
    table; returns the JSON document."""
    import os

    import numpy as np
    import torch

    import minigpt

    vocab = hf.config.vocab_size
    rng = np.random.default_rng(0)
    long_ids = rng.integers(4, vocab, (1, 128))
    prompts = rng.integers(4, vocab, (8, 16))
    prompts[:, 0] = bos

    def hf_generate(batch):
        ids = torch.as_tensor(prompts[:batch])
        with torch.no_grad():
            out = hf.generate(input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=False, max_new_tokens=32,
                              min_new_tokens=32, pad_token_id=pad)
        return out[:, 16:].tolist()

    def ours_generate(batch):
        return minigpt.generate(ours, prompts[:batch].tolist(), max_new_tokens=32, temperature=0,
                                stop_at_eos=False).tokens

    def hf_prefill():
        with torch.no_grad():
            return hf(torch.as_tensor(long_ids)).logits.numpy()

    ref, got = hf_prefill(), ours(long_ids)
    scaled = float((np.abs(got - ref) / (1 + np.abs(ref).max(axis=-1, keepdims=True))).max())
    if scaled > 1e-4:
        raise SystemExit(f"minigpt's logits differ from transformers' (scaled error {scaled:.2e})")
    agree = float((np.array(ours_generate(8)) == np.array(hf_generate(8))).mean())
    cases = {
        "prefill 128": (128, {"transformers": hf_prefill, "minigpt": lambda: ours(long_ids)}),
        "decode b1": (32, {"transformers": lambda: hf_generate(1), "minigpt": lambda: ours_generate(1)}),
        "decode b8": (8 * 32, {"transformers": lambda: hf_generate(8), "minigpt": lambda: ours_generate(8)}),
    }
    warm_up(cases)
    table = rows(cases, time_alternating(cases, repeats), baseline="transformers")
    print(f"{title}; {repeats} repeats; numpy {np.__version__}, torch {torch.__version__} ({torch.get_num_threads()} "
          f"threads), {os.cpu_count()} cores; prefill logits' scaled error {scaled:.1e}; greedy tokens equal: {agree:.0%}")
    print(f"{'case':<12} {'engine':<13} {'median s':>9} {'min':>7} {'max':>7} {'tok/s':>8} {'x transformers':>15}")
    for r in table:
        print(f"{r['case']:<12} {r['engine']:<13} {r['median_s']:>9.3f} {r['min_s']:>7.3f} {r['max_s']:>7.3f} "
              f"{r['tokens_per_s']:>8.1f} {r['speedup_vs_transformers']:>15.2f}")
    return {"title": title, "repeats": repeats, "prefill_scaled_error": scaled, "greedy_tokens_equal_fraction": agree,
            "rows": table}
