"""The cost of steering (the paper's overhead figure), as `overhead()` and `actadd eval overhead`:
the same work timed unsteered and steered, alternating, and the premium t_steered / t_unsteered - 1
from the medians. The paper: batch 32 x 64 tokens, 1000 passes, a forward pre-hook at the middle
block, gpt2 to gpt2-xl and opt-125m to opt-2.7b; the premium stays below 0.4%.

A machine is noisy, so each repeat times every condition once, in an order that alternates, and a
third condition runs the unsteered work again ("unsteered, again"): its premium over the first is
the noise floor a steering premium must be compared with. The premium's interval is the t
interval of the per-repeat log ratio, exponentiated.
"""

from __future__ import annotations

import math
import statistics
import time
from dataclasses import dataclass

import numpy as np

import minigpt
from minigpt import GPT2, GPT2Config, Transformer

from ..output import progress as progress_bar
from ..output import write_outputs
from ..steering import ActivationAddition, steering_vector
from . import stats

# GPT-2's published shapes (n_layer, n_head, n_embd), for timing without the weights.
SHAPES = {"gpt2": (12, 12, 768), "gpt2-medium": (24, 16, 1024), "gpt2-large": (36, 20, 1280),
          "gpt2-xl": (48, 25, 1600)}


def random_model(shape: str, seed: int = 0, backend: str = "numpy") -> GPT2:
    """A GPT-2 of a published shape with random weights (normal, sd 0.02, layer-norm gains 1, as
    GPT-2 is initialised): the same arithmetic as the real checkpoint, so the same time."""
    if shape not in SHAPES:
        raise ValueError(f"shape {shape!r}: expected one of {list(SHAPES)}")
    from minigpt.weights import expected_shapes

    n_layer, n_head, n_embd = SHAPES[shape]
    config = GPT2Config(n_layer=n_layer, n_head=n_head, n_embd=n_embd)
    rng = np.random.default_rng(seed)
    weights = {}
    for name, dims in expected_shapes(config).items():
        if ".ln_" in name or name.startswith("ln_f"):
            weights[name] = np.full(dims, 1.0 if name.endswith("weight") else 0.0, dtype=np.float32)
        else:
            weights[name] = rng.standard_normal(dims, dtype=np.float32) * np.float32(0.02)
    return GPT2(config, weights, source=f"random weights of the {shape} shape", backend=backend)


@dataclass(frozen=True)
class Work:
    name: str
    units: int          # tokens processed, for tokens/s
    run: object         # run(hooks) does the work with those fwd_hooks


def overhead(model: Transformer, *, layer: int | None = None, batch: int = 32, tokens: int = 64, repeats: int = 20,
             generate_rows: int = 8, prompt_tokens: int = 16, new_tokens: int = 32, control: bool = True,
             seed: int = 0, progress: bool = True) -> dict:
    """Time a forward pass over [batch, tokens] random ids and a greedy generation of
    `new_tokens` for `generate_rows` prompts of `prompt_tokens`, each unsteered and steered by
    a two-position x-vector at `layer` (default the middle block, as the paper's pre-hook), over
    `repeats` alternating repeats after one untimed warm-up."""
    n_layer = model.config.n_layer
    layer = n_layer // 2 if layer is None else layer
    if isinstance(layer, bool) or not isinstance(layer, (int, np.integer)) or not 0 <= layer < n_layer:
        raise ValueError(f"layer {layer!r}: this model has blocks 0 to {n_layer - 1}")
    for name, value in (("batch", batch), ("tokens", tokens), ("repeats", repeats), ("generate_rows", generate_rows),
                        ("prompt_tokens", prompt_tokens), ("new_tokens", new_tokens)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name}={value!r}: expected a positive integer")
    if max(tokens, prompt_tokens + new_tokens) > model.config.n_positions:
        raise ValueError(f"{tokens} tokens, or {prompt_tokens} + {new_tokens} generated, exceed n_positions="
                         f"{model.config.n_positions}")
    if min(tokens, prompt_tokens) < 2:
        raise ValueError("the steering matrix has 2 positions: tokens and prompt_tokens must be at least 2")
    rng = np.random.default_rng(seed)
    vocab = model.config.vocab_size
    # The premium depends on the matrix's length and layer, not on which tokens made it: two
    # positions, as " weddings" - "" (BOS, then the word or a pad).
    pair = rng.integers(0, vocab, 3).tolist()
    vector = steering_vector(model, [ActivationAddition((pair[0], pair[1]), 1.0, layer, "plus"),
                                     ActivationAddition((pair[0], pair[2]), -1.0, layer, "minus")])
    ids = rng.integers(0, vocab, (batch, tokens))
    prompts = rng.integers(0, vocab, (generate_rows, prompt_tokens)).tolist()

    def forward(hooks):
        model.backend.to_host(model.run_with_hooks(ids, hooks)[:1, -1, :1])   # waits for a device to finish

    def generation(hooks):
        minigpt.generate(model, prompts, max_new_tokens=new_tokens, temperature=0.0, stop_at_eos=False,
                         fwd_hooks=hooks)

    work = [Work(f"forward {batch} x {tokens}", batch * tokens, forward),
            Work(f"generate {generate_rows} x ({prompt_tokens} + {new_tokens})", generate_rows * new_tokens, generation)]
    conditions = {"unsteered": (), "steered": vector.hooks()}
    if control:
        conditions["unsteered, again"] = ()
    for w in work:                                                      # warm-up: pages in the weights
        for hooks in conditions.values():
            w.run(hooks)
    times = {(w.name, c): [] for w in work for c in conditions}
    bar = progress_bar(repeats * len(work) * len(conditions), progress, "eval overhead", "run")
    for r in range(repeats):
        for w in work:
            order = list(conditions.items()) if r % 2 == 0 else list(conditions.items())[::-1]
            for name, hooks in order:
                start = time.perf_counter()
                w.run(hooks)
                times[w.name, name].append(time.perf_counter() - start)
                bar.update(1)
    bar.close()
    rows = []
    for w in work:
        base = times[w.name, "unsteered"]
        for name in conditions:
            ts = times[w.name, name]
            row = {"work": w.name, "condition": name, "repeats": repeats, "median_s": statistics.median(ts),
                   "min_s": min(ts), "max_s": max(ts), "tokens_per_s": w.units / statistics.median(ts), "times_s": ts}
            if name != "unsteered":
                logs = [math.log(t / b) for t, b in zip(ts, base)]
                e = stats.mean_interval(logs)
                row.update(premium=statistics.median(ts) / statistics.median(base) - 1,
                           premium_paired=math.exp(e.value) - 1, premium_low=math.exp(e.low) - 1 if e.n > 1 else None,
                           premium_high=math.exp(e.high) - 1 if e.n > 1 else None)
            rows.append(row)
    # The addition alone, on an activation of the forward pass's shape: what the premium is made
    # of, timed without the rest of the pass around it (and so without its noise).
    hook_s = addition_seconds(model, vector, batch, tokens, repeats)
    forward_s = statistics.median(times[work[0].name, "unsteered"])
    return {"task": "overhead", "model": repr(model), "layer": layer, "steering_positions": vector.length,
            "backend": model.backend.name, "rows": rows,
            "addition": {"shape": [batch, tokens, model.config.n_embd], "median_s": hook_s,
                         "fraction_of_forward": hook_s / forward_s}}


def addition_seconds(model: Transformer, vector, batch: int, tokens: int, repeats: int) -> float:
    """Median seconds of the steering hook itself on a [batch, tokens, d_model] activation."""
    from minigpt.model import HookPoint

    (name, steer), = vector.hooks()
    resid = model.backend.to_device(np.zeros((batch, tokens, model.config.n_embd), dtype=np.float32))
    point = HookPoint(name, np.tile(np.arange(tokens), (batch, 1)), 0)
    times = []
    for _ in range(max(repeats, 5) + 1):                                 # the first is a warm-up
        start = time.perf_counter()
        model.backend.to_host(steer(resid, point)[:1, -1, :1])
        times.append(time.perf_counter() - start)
    return statistics.median(times[1:])


def overhead_table(summary: dict) -> str:
    lines = [f"{'work':<28} {'condition':<18} {'median s':>9} {'tokens/s':>9}  premium [95%] (median ratio)"]
    for r in summary["rows"]:
        premium = ""
        if "premium" in r:
            interval = (f"[{r['premium_low']:+.2%}, {r['premium_high']:+.2%}]" if r["premium_low"] is not None else "")
            premium = f"{r['premium_paired']:+.2%} {interval} ({r['premium']:+.2%})"
        lines.append(f"{r['work']:<28} {r['condition']:<18} {r['median_s']:>9.4f} {r['tokens_per_s']:>9.1f}  {premium}")
    a = summary["addition"]
    lines.append(f"steering: {summary['steering_positions']} positions at layer {summary['layer']}; 'unsteered, again' "
                 "is the noise floor: a steering premium inside its spread is not measurable here")
    lines.append(f"the addition alone on a {' x '.join(map(str, a['shape']))} activation: {1e3 * a['median_s']:.3f} ms, "
                 f"{a['fraction_of_forward']:.4%} of the unsteered forward pass")
    return "\n".join(lines)


def plot_overhead(summary: dict, path) -> None:
    import matplotlib.pyplot as plt

    rows = [r for r in summary["rows"] if "premium" in r]
    fig, ax = plt.subplots(figsize=(7, 3.5))
    labels = [f"{r['work']}\n{r['condition']}" for r in rows]
    values = [100 * r["premium_paired"] for r in rows]
    err = np.array([[100 * (r["premium_paired"] - (r["premium_low"] if r["premium_low"] is not None else r["premium_paired"])),
                     100 * ((r["premium_high"] if r["premium_high"] is not None else r["premium_paired"]) - r["premium_paired"])]
                    for r in rows]).T
    ax.barh(labels, values, xerr=err, capsize=4, color=["tab:blue" if r["condition"] == "steered" else "0.7" for r in rows])
    ax.axvline(0.4, color="tab:red", ls="--", lw=1, label="the paper's 0.4%")
    ax.axvline(0, color="0.3", lw=1)
    ax.set(xlabel="time premium over unsteered, % (95% interval)", title=summary["model"][:80])
    ax.legend(fontsize=8)
    ax.tick_params(axis="y", labelsize=7)
    fig.tight_layout()
    fig.savefig(path, format="png", dpi=100)
    plt.close(fig)


def write(summary: dict, out) -> list:
    rows = [{k: v for k, v in r.items() if k != "times_s"} for r in summary["rows"]]     # the CSV: one number a cell
    return write_outputs(out, "overhead", {"summary": summary}, rows, lambda p: plot_overhead(summary, p))

