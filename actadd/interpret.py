"""Reading a steering vector: how large it is beside the residual stream it is added to, layer by
layer (calibrate), and what it says through the unembedding (lens).

Coefficients mean little across layers and models: GPT-2's residual stream grows several-fold
from the first block to the last, so "coefficient 4" is a nudge at one layer and a takeover at
another. `calibrate` turns a target ratio into the coefficient that reaches it at every layer.

`lens` is the logit lens (the model's final norm and unembedding applied to an intermediate
residual-stream vector): a heuristic. The intermediate layers were not trained to be read this
way, the final norm sees a vector it was never given, and a direction can act through later
blocks without promoting any token directly. Read it as a hint, not an explanation.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from minigpt import Tokenizer, Transformer

from .measure import log_softmax
from .pairs import ContrastPairs, residual_norm, rms_norm
from .steering import Steering, residual_site, residual_streams, tokens_with_bos

# ---------------------------------------------------------------------------------------------
# Calibrate: the coefficient that makes the addition a chosen fraction of the residual stream


@dataclass
class Calibration:
    prompt: str
    reading: str
    ratios: list[float]
    rows: list[dict] = field(default_factory=list)   # per layer: norms and a coefficient per ratio

    def table(self) -> str:
        heads = " ".join(f"{f'c for {r:g}x':>10}" for r in self.ratios)
        lines = [f"residual stream of {self.prompt!r} (rms over positions after BOS) and the pairs' mean difference "
                 f"({self.reading} reading) at coefficient 1",
                 f"{'layer':>5} {'|resid|':>9} {'|vector|':>9} {'ratio@1':>8} {heads}"]
        for row in self.rows:
            coeffs = " ".join(f"{row[_key(r)]:>10.4g}" for r in self.ratios)
            lines.append(f"{row['layer']:>5} {row['residual_norm']:>9.4g} {row['vector_norm']:>9.4g} "
                         f"{row['ratio_at_coeff_1']:>8.4f} {coeffs}")
        return "\n".join(lines)

    def document(self) -> dict:
        return {"prompt": self.prompt, "reading": self.reading, "ratios": self.ratios, "layers": self.rows}

    def plot(self, path: str) -> None:
        import matplotlib.pyplot as plt

        layers = [r["layer"] for r in self.rows]
        fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.8))
        left.plot(layers, [r["residual_norm"] for r in self.rows], "o-", label="residual stream")
        left.plot(layers, [r["vector_norm"] for r in self.rows], "s-", label="vector at coefficient 1")
        left.set(xlabel="layer (resid_pre)", ylabel="rms norm over positions after BOS", title="norms")
        left.legend(fontsize=8)
        for r in self.ratios:
            right.plot(layers, [row[_key(r)] for row in self.rows], "o-", label=f"{r:g} x residual")
        right.set(xlabel="layer (resid_pre)", ylabel="coefficient", yscale="log", title="coefficient for a ratio")
        right.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(path, format="png", dpi=100)
        plt.close(fig)


def _key(ratio: float) -> str:
    return f"coeff_for_{ratio:g}x"


def calibrate(model: Transformer, tokenizer: Tokenizer, prompt: str, pairs, layers: Sequence[int] | None = None,
              ratios: Sequence[float] = (0.5, 1.0, 2.0), reading: str = "actadd", padding: str = "space") -> Calibration:
    """At each layer (default all): the rms norm of `prompt`'s residual stream over its positions
    after BOS, the rms norm of the pairs' mean difference (the vector at coefficient 1), and the
    coefficient at which the vector is `ratio` x the residual stream, for each ratio: ratio x
    |resid| / |vector|."""
    ratios = [float(r) for r in ratios]
    if not ratios or any(not np.isfinite(r) or r <= 0 for r in ratios):
        raise ValueError(f"ratios={ratios}: expected positive numbers, at least one")
    layers = list(range(model.config.n_layer)) if layers is None else list(layers)
    cp = ContrastPairs.compute(model, tokenizer, pairs, layers, reading, padding)
    ids = tokens_with_bos(tokenizer, prompt)
    if len(ids) < 2:
        raise ValueError("the prompt is empty: its residual stream after BOS has no positions to size the vector by")
    out = Calibration(prompt, reading, ratios)
    for L in layers:
        resid, vec = residual_norm(model, [ids], L), rms_norm(cp.mean_difference(L))
        row = {"layer": L, "hook_name": residual_site(L, model.config.n_layer), "residual_norm": resid,
               "vector_norm": vec, "ratio_at_coeff_1": vec / resid}
        row.update({_key(r): (r * resid / vec if vec > 0 else float("inf")) for r in ratios})
        out.rows.append(row)
    return out


# ---------------------------------------------------------------------------------------------
# Lens: the vector, and its effect on later layers, through the unembedding


@dataclass
class LensReport:
    k: int
    vector: list[dict]                 # per (layer, position): the tokens the vector itself promotes / demotes
    prompt: str | None = None
    layers: list[int] = field(default_factory=list)          # readout layers, the vector's first to n_layer
    changes: list[dict] = field(default_factory=list)        # per readout layer: promoted, suppressed
    heat_tokens: list[str] = field(default_factory=list)
    heat: np.ndarray | None = None                            # [layers, tokens] change of log-prob

    def table(self) -> str:
        lines = ["the vector through the unembedding (logit lens; a heuristic)"]
        for row in self.vector:
            where = f"layer {row['layer']}" + (f" position {row['position']}" if row["position"] is not None else "")
            lines.append(f"  {where}: + " + " ".join(repr(t) for t, _ in row["top"]))
            lines.append(f"  {' ' * len(where)}  - " + " ".join(repr(t) for t, _ in row["bottom"]))
        if self.prompt is not None:
            lines.append(f"change of the logit-lens log-probs at the last position of {self.prompt!r}, steered - unsteered")
            for row in self.changes:
                if not row["promoted"] and not row["suppressed"]:
                    lines.append(f"  {row['hook_name']:<26} (unchanged: the addition has not reached this position yet)")
                    continue
                lines.append(f"  {row['hook_name']:<26} + " + " ".join(f"{t!r}({c:+.2f})" for t, c in row["promoted"]))
                lines.append(f"  {'':<26} - " + " ".join(f"{t!r}({c:+.2f})" for t, c in row["suppressed"]))
        return "\n".join(lines)

    def document(self) -> dict:
        return {"k": self.k, "vector": self.vector, "prompt": self.prompt, "changes": self.changes,
                "heat_tokens": self.heat_tokens, "heat": None if self.heat is None else self.heat.tolist()}

    def plot(self, path: str) -> None:
        import matplotlib.pyplot as plt

        if self.heat is None:
            raise ValueError("no prompt was given: there is no per-layer change to plot")
        rows, cols = self.heat.shape
        fig, ax = plt.subplots(figsize=(2 + 0.45 * cols, 1.5 + 0.4 * rows))
        limit = float(np.abs(self.heat).max()) or 1.0
        image = ax.imshow(self.heat, cmap="RdBu_r", vmin=-limit, vmax=limit, aspect="auto")
        ax.set_xticks(range(cols), [repr(t) for t in self.heat_tokens], rotation=60, ha="right", fontsize=8)
        ax.set_yticks(range(rows), [row["hook_name"] for row in self.changes], fontsize=8)
        ax.set_title("logit-lens log-prob change, steered - unsteered (a heuristic)", fontsize=10)
        fig.colorbar(image, ax=ax)
        fig.tight_layout()
        fig.savefig(path, format="png", dpi=100)
        plt.close(fig)


def _extremes(tokenizer: Tokenizer, values: np.ndarray, k: int, signed: bool = False) -> tuple[list, list]:
    """The k highest and k lowest values' tokens; `signed`: only those above / below zero (a
    layer the steering has not reached yet has no movers)."""
    order = np.argsort(-values, kind="stable")
    top = [(tokenizer.token_str(int(t)), float(values[t])) for t in order[:k] if not signed or values[t] > 0]
    bottom = [(tokenizer.token_str(int(t)), float(values[t])) for t in order[::-1][:k] if not signed or values[t] < 0]
    return top, bottom


def lens(model: Transformer, tokenizer: Tokenizer, vector: Steering, prompt: str | None = None,
         k: int = 10) -> LensReport:
    """The vector at each of its layers through the model's final norm and unembedding (the
    tokens it promotes and demotes by itself), and, with `prompt`, the change (steered -
    unsteered) of the logit-lens log-probs at the prompt's last position at every layer from
    the vector's first to the model's output: the top `k` promoted and suppressed tokens per
    layer, and a layers x tokens map of the output's top movers."""
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"k={k!r}: expected a positive number of tokens")
    report = LensReport(k, [])
    for L in vector.layers:
        rows, positions = vector.rows_at(L)         # a direction (position None), or a matrix's rows after BOS
        logits = model.backend.to_host(model.logit_lens(rows[None]))[0]                 # [rows, vocab]
        for p, row in zip(positions, logits):
            top, bottom = _extremes(tokenizer, row.astype(np.float64), k)
            report.vector.append({"layer": L, "position": p, "top": top, "bottom": bottom})
    if prompt is None:
        return report
    n = model.config.n_layer
    ids = tokens_with_bos(tokenizer, prompt)
    readout = list(range(min(vector.layers), n + 1))
    names = [residual_site(L, n) for L in readout]
    plain = residual_streams(model, {tuple(ids): readout})
    steered: dict = {}

    def keep(x, hook):
        steered[hook.name] = model.backend.to_host(x)[0]

    model.run_with_hooks(ids, vector.hooks(prompt_lengths=len(ids)) + [(name, keep) for name in names])
    last_plain = np.stack([plain[tuple(ids), L][-1] for L in readout])                  # [layers, d_model]
    last_steered = np.stack([steered[name][-1] for name in names])
    lp = [log_softmax(model.backend.to_host(model.logit_lens(x[None]))[0].astype(np.float64))
          for x in (last_plain, last_steered)]
    change = lp[1] - lp[0]                                                               # [layers, vocab]
    report.prompt, report.layers = prompt, readout
    for L, name, row in zip(readout, names, change):
        promoted, suppressed = _extremes(tokenizer, row, k, signed=True)
        report.changes.append({"layer": L, "hook_name": name, "promoted": promoted, "suppressed": suppressed})
    final = change[-1]
    order = np.argsort(-final, kind="stable")
    columns = list(order[:k]) + list(order[::-1][:k])
    report.heat_tokens = [tokenizer.token_str(int(t)) for t in columns]
    report.heat = change[:, columns]
    return report
