"""Contrast pairs: many (plus, minus) pairs made into one steering vector, and a report on
which pairs carry the effect and which cancel it.

The paper names the quality of the contrast pair as ActAdd's first limitation. With many pairs,
the vector is the mean of the pairs' differences, in one of two readings:

  "actadd"       ActAdd's per-position matrix. Every prompt of every pair is right-padded (" "
                 by default, as the published x-vectors) to the longest prompt of the whole set,
                 and the vector is coeff x mean_i [resid_pre_L(plus_i) - resid_pre_L(minus_i)],
                 position by position: a SteeringVector of the additions (plus_i, +coeff/N) and
                 (minus_i, -coeff/N), added at the front of a prompt like any x-vector. With one
                 pair it is x_vector(plus, minus) exactly.
  "last", "mean" The mean-difference direction of contrastive activation addition: per layer one
                 d_model vector, coeff x mean_i [r(plus_i) - r(minus_i)], r the residual stream at
                 the prompt's last token ("last") or its mean over the tokens after BOS ("mean";
                 BOS is the same in both prompts and, in GPT-2, far larger than the rest). No
                 padding. A DirectionVector (actadd.direction), added at every prompt position (or
                 chosen ones, or every position as llama.cpp's control vectors are).

Deterministic: the residual streams come from one unsteered pass per prompt, the mean is summed
in float64 in the pairs' order and rounded once to float32; no randomized solver anywhere.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from minigpt import Tokenizer, Transformer
from minigpt.textfiles import lines, read_text

from .direction import DirectionVector
from .measure import NextToken, log_softmax, logprob_shift, next_distribution, next_token_logprobs, token_set
from .output import progress as progress_bar
from .provenance import fingerprint
from .steering import (ActivationAddition, Steering, SteeringVector, pad_token_id, residual_streams, row_hooks,
                       tokens_with_bos)

READINGS = ("actadd", "last", "mean")
Pair = tuple[str, str]


# ---------------------------------------------------------------------------------------------
# Pairs in


def read_pairs(path: str | Path) -> list[Pair]:
    """`plus<TAB>minus` lines of a UTF-8 file (blank lines and lines starting with '#' skipped).
    A prompt may be empty ("weddings<TAB>"), but a line needs exactly one tab."""
    path = Path(path)
    return parse_pairs(lines(read_text(path, ValueError, what="pairs file")), str(path))


def parse_pairs(text_lines, where: str) -> list[Pair]:
    """The pairs of `plus<TAB>minus` lines (as read_pairs), errors naming `where` and the line."""
    pairs = []
    for number, line in enumerate(text_lines, 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        if line.count("\t") != 1:
            raise ValueError(f"{where}:{number}: expected 'plus<TAB>minus' (one tab), got {line.count(chr(9))} tabs "
                             f"in {line[:60]!r}")
        plus, minus = line.split("\t")
        if not plus.strip() and not minus.strip():
            raise ValueError(f"{where}:{number}: both prompts are empty")
        pairs.append((plus, minus))
    if not pairs:
        raise ValueError(f"{where}: no pairs (every line blank or a comment)")
    return pairs


def check_pairs(pairs) -> list[Pair]:
    pairs = list(pairs)
    if not pairs:
        raise ValueError("no contrast pairs given (an empty set has no mean)")
    for i, pair in enumerate(pairs):
        if not (isinstance(pair, (tuple, list)) and len(pair) == 2 and all(isinstance(p, str) for p in pair)):
            raise ValueError(f"pair {i} is {pair!r}; expected (plus, minus), two strings")
    return [tuple(p) for p in pairs]


# ---------------------------------------------------------------------------------------------
# Pairs to vectors


@dataclass
class ContrastPairs:
    """The unsteered residual streams of every pair's prompts at `layers`, from which the mean
    vector, one pair's vector and the leave-one-out means are made without another pass."""

    pairs: list[Pair]
    layers: list[int]
    reading: str
    padding: str
    plus_tokens: list[tuple[int, ...]]          # with BOS first, padded for "actadd"
    minus_tokens: list[tuple[int, ...]]
    resid: dict                                 # (tokens, layer) -> float32 [pos, d_model]
    n_layer: int
    fingerprint: dict
    pad_id: int | None

    @classmethod
    def compute(cls, model: Transformer, tokenizer: Tokenizer, pairs, layers: int | Sequence[int],
                reading: str = "actadd", padding: str = "space") -> ContrastPairs:
        pairs = check_pairs(pairs)
        if reading not in READINGS:
            raise ValueError(f"reading={reading!r}: expected one of {READINGS}")
        layers = [layers] if isinstance(layers, (int, np.integer)) else list(layers)
        top = model.config.n_layer - (reading == "actadd")                   # directions may sit after the last block
        for L in layers:
            if isinstance(L, bool) or not isinstance(L, (int, np.integer)) or not 0 <= L <= top:
                raise ValueError(f"layer {L!r}: expected 0 to {top} for the {reading!r} reading")
        if not layers or len(set(layers)) != len(layers):
            raise ValueError(f"layers {layers}: expected distinct layers, at least one")
        plus = [tokens_with_bos(tokenizer, p) for p, _ in pairs]
        minus = [tokens_with_bos(tokenizer, m) for _, m in pairs]
        pad = None
        if reading == "actadd":
            pad = pad_token_id(tokenizer, padding)
            if pad is not None:                                               # one width for the whole set
                width = max(len(t) for t in plus + minus)
                plus, minus = ([t + [pad] * (width - len(t)) for t in side] for side in (plus, minus))
        elif reading == "mean":
            for i, (p, m) in enumerate(zip(plus, minus)):
                if len(p) == 1 or len(m) == 1:
                    raise ValueError(f"pair {i} {pairs[i]!r} has an empty prompt: the 'mean' reading averages the "
                                     "tokens after BOS, and it has none; use the 'last' reading (its BOS) or "
                                     "give it words")
        wanted = {tuple(t): layers for t in plus + minus}
        return cls(pairs, layers, reading, padding if reading == "actadd" else "none", [tuple(t) for t in plus],
                   [tuple(t) for t in minus], residual_streams(model, wanted), model.config.n_layer,
                   fingerprint(model), pad)

    def __len__(self) -> int:
        return len(self.pairs)

    def padding_report(self, tokenizer: Tokenizer) -> dict:
        """What padding the vector was made with, stated: the token, the common width, and how
        many pad tokens each prompt got (the pad's own activations count in the mean)."""
        def pads(tokens, text):
            return len(tokens) - 1 - len(tokenizer.encode(text))

        return {"reading": self.reading, "padding": self.padding,
                "pad_token": None if self.pad_id is None else tokenizer.token_str(self.pad_id),
                "width": max(len(t) for t in self.plus_tokens + self.minus_tokens) if self.reading == "actadd" else None,
                "pads": [[pads(p, a), pads(m, b)] for p, m, (a, b) in zip(self.plus_tokens, self.minus_tokens, self.pairs)]}

    def difference(self, i: int, layer: int) -> np.ndarray:
        """Pair i's difference at coefficient 1: float32 [width, d_model] ("actadd", zero-padded
        to the longest prompt when unpadded) or [d_model] (a direction)."""
        a, b = self.resid[self.plus_tokens[i], layer], self.resid[self.minus_tokens[i], layer]
        if self.reading == "last":
            return a[-1] - b[-1]
        if self.reading == "mean":
            return (a[1:].astype(np.float64).mean(axis=0) - b[1:].astype(np.float64).mean(axis=0)).astype(np.float32)
        width = max(len(t) for t in self.plus_tokens + self.minus_tokens)
        out = np.zeros((width, a.shape[1]), np.float32)
        out[:len(a)] += a
        out[:len(b)] -= b
        return out

    def mean_difference(self, layer: int, indices: Sequence[int] | None = None) -> np.ndarray:
        """float64: the mean of pairs `indices`' differences at `layer` (coefficient 1), summed
        in their order."""
        indices = list(range(len(self.pairs)) if indices is None else indices)
        total = np.zeros_like(self.difference(indices[0], layer), np.float64)
        for i in indices:
            total += self.difference(i, layer)
        return total / len(indices)

    def vector(self, coeff: float, indices: Sequence[int] | None = None,
               positions: str | tuple[int, ...] = "prompt", layers: Sequence[int] | None = None) -> Steering:
        """coeff x the mean over pairs `indices` (default all, in order) of their differences (a
        direction: at `layers` only, default all of them)."""
        indices = list(range(len(self.pairs)) if indices is None else indices)
        if not indices:
            raise ValueError("no pairs to average")
        if not isinstance(coeff, (int, float, np.integer, np.floating)) or isinstance(coeff, bool) or not math.isfinite(coeff):
            raise ValueError(f"coeff={coeff!r}: expected a finite number")
        n = len(indices)
        if self.reading == "actadd":
            additions, activations = [], []
            for L in self.layers:
                for i in indices:
                    for tokens, sign, text in ((self.plus_tokens[i], 1, self.pairs[i][0]),
                                               (self.minus_tokens[i], -1, self.pairs[i][1])):
                        a = ActivationAddition(tokens, sign * coeff / n, L, text)
                        additions.append(a)
                        activations.append(a.coeff * self.resid[tokens, L])  # as steering_vector: coeff * resid_pre
            return SteeringVector(tuple(additions), tuple(activations), "front", self.padding, self.fingerprint)
        layers = list(self.layers if layers is None else layers)            # a direction's: some of them
        directions = [(coeff * self.mean_difference(L, indices)).astype(np.float32) for L in layers]
        return DirectionVector(tuple(layers), tuple(directions), self.n_layer, float(coeff), self.reading,
                               positions, tuple(self.pairs[i] for i in indices), self.fingerprint)


def mean_of_pairs(model: Transformer, tokenizer: Tokenizer, pairs, coeff: float, layers: int | Sequence[int],
                  reading: str = "actadd", padding: str = "space",
                  positions: str | tuple[int, ...] = "prompt") -> Steering:
    """One steering vector from contrast pairs: coeff x the mean of their differences at each of
    `layers`, in the reading named (see the module's docstring)."""
    return ContrastPairs.compute(model, tokenizer, pairs, layers, reading, padding).vector(coeff, positions=positions)


# ---------------------------------------------------------------------------------------------
# Which pairs carry the effect


def rms_norm(rows: np.ndarray, after_bos: bool = True) -> float:
    """The size of an addition or of a residual stream, one number: sqrt(mean over positions of
    |row|^2), over the positions after BOS ([d_model] alone: its norm). BOS is left out because
    a difference is zero there and GPT-2's BOS residual is an outlier many times the others'."""
    rows = np.asarray(rows, np.float64)
    if rows.ndim == 1:
        return float(np.sqrt((rows ** 2).sum()))
    rows = rows[1:] if after_bos and len(rows) > 1 else rows
    return float(np.sqrt((rows ** 2).sum(axis=-1).mean()))


def residual_norm(model: Transformer, sequences: Sequence[Sequence[int]], layer: int) -> float:
    """rms_norm of the unsteered residual stream at `layer`, over every sequence's positions
    after BOS together."""
    streams = residual_streams(model, {tuple(s): [layer] for s in sequences})
    after_bos = [streams[tuple(s), layer][1:] if len(s) > 1 else streams[tuple(s), layer] for s in sequences]
    return rms_norm(np.concatenate(after_bos), after_bos=False)


@dataclass
class Metric:
    """A vector's effect as one number. "effectiveness": log P_steered(A) - log P_unsteered(A)
    of a token set A after a prompt (the original's logits.py); "logprob": the mean log-prob
    shift (steered - unsteered) of texts' tokens, with the original's masking for ActAdd
    matrices. `sequences`: the tokens whose residual stream sizes the vector."""

    name: str
    sequences: list[list[int]]
    effect: object                                    # vector -> float
    effects: object = None                            # [vectors] -> [floats], batched where it can be

    def __post_init__(self):
        if self.effects is None:
            self.effects = lambda vectors: [self.effect(v) for v in vectors]


def effectiveness_metric(model: Transformer, tokenizer: Tokenizer, prompt: str, tokens: Sequence[int]) -> Metric:
    ids = tokens_with_bos(tokenizer, prompt)
    token_set(tokens, model.config.vocab_size)                                   # checked before any pass
    plain = next_distribution(model, ids)
    names = ", ".join(repr(tokenizer.token_str(t)) for t in tokens)

    def effects(vectors, batch_tokens=2048):
        """One pass per batch of rows, row b steered by vectors[b] (row_hooks): the prompt's
        weights are read once for many vectors, not once each."""
        out = []
        per_pass = max(1, batch_tokens // len(ids))
        for start in range(0, len(vectors), per_pass):
            chunk = vectors[start:start + per_pass]
            logits = model.run_with_hooks([ids] * len(chunk), row_hooks(chunk, prompt_lengths=len(ids)), last_only=True)
            for row in model.backend.to_host(logits[:, -1]):
                out.append(NextToken(plain, np.exp(log_softmax(row.astype(np.float64)))).effectiveness(tokens))
        return out
    return Metric(f"effectiveness of {{{names}}} after {prompt!r}", [ids],
                  lambda v: NextToken(plain, next_distribution(model, ids, v)).effectiveness(tokens), effects)


def logprob_metric(model: Transformer, texts: Sequence[tuple[str, Sequence[int]]], name: str = "texts",
                   mask: bool = True, skip_short: bool = False) -> Metric:
    """`mask` and `skip_short` as in measure.logprob_shift (a report's vectors share one length)."""
    texts = [(g, list(ids)) for g, ids in texts]
    if not texts:
        raise ValueError("no texts to measure the log-prob shift on")
    base = {tuple(ids): lp for (_, ids), lp in zip(texts, next_token_logprobs(model, [ids for _, ids in texts]))}

    def effect(v):
        kept = [(g, ids) for g, ids in texts if not skip_short or len(ids) >= v.length]
        return logprob_shift(model, kept, v, mask=mask, skip_short=skip_short,
                             unsteered=[base[tuple(ids)] for _, ids in kept]).summary()["all"]["mean_logprob_diff"]
    return Metric(f"mean log-prob shift of {name} ({len(texts)} texts)", [ids for _, ids in texts], effect)


def _cos(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.ravel().astype(np.float64), b.ravel().astype(np.float64)
    denominator = np.linalg.norm(a) * np.linalg.norm(b)
    return float(a @ b / denominator) if denominator > 0 else float("nan")


@dataclass
class PairReport:
    pairs: list[Pair]
    layer: int
    coeff: float
    reading: str
    metric: str
    padding: dict
    residual_norm: float
    norms: list[float]               # each pair's own vector (coeff x its difference), rms_norm
    mean_norm: float
    cosine: np.ndarray               # [N, N] between the pairs' differences
    cos_mean: list[float]            # with the mean of all pairs
    cos_others: list[float]          # with the mean of the other pairs (nan for one pair)
    effect_mean: float
    effect_alone: list[float]        # each pair's vector alone, at the same coeff
    effect_without: list[float]      # the mean without this pair (leave-one-out)
    min_cosine: float = 0.0
    control_effects: list[float] = field(default_factory=list)   # random vectors of the mean's size

    @property
    def control(self) -> dict:
        """The noise the mean's effect is to be read against: the effects of random vectors with
        the mean vector's norm at every position (seeded; see pair_report)."""
        c = np.asarray(self.control_effects, np.float64)
        if not c.size:
            return {"n": 0}
        return {"n": int(c.size), "mean": float(c.mean()), "sd": float(c.std(ddof=1)) if c.size > 1 else float("nan"),
                "min": float(c.min()), "max": float(c.max()),
                "mean_effect_beyond_all": bool(self.effect_mean > c.max() or self.effect_mean < c.min())}

    @property
    def loo_change(self) -> list[float]:
        return [w - self.effect_mean for w in self.effect_without]

    @property
    def noise(self) -> float:
        """The size a leave-one-out change must exceed to be named: the sd of the random vectors'
        effects (what any addition of the mean's size does); nan without two controls."""
        c = self.control
        return c["sd"] if c["n"] > 1 else float("nan")

    def role(self, i: int) -> str:
        """"carries" if leaving it out moves the mean's effect toward zero, "cancels" if away;
        "noise" where that move is within the controls' sd (a +0.004 change beside random
        vectors that vary by 0.2 says nothing), "-" without controls to tell."""
        change = self.loo_change[i]
        if not math.isfinite(change) or change == 0 or self.effect_mean == 0 or not math.isfinite(self.noise):
            return "-"
        if abs(change) <= self.noise:
            return "noise"
        return "cancels" if (change > 0) == (self.effect_mean > 0) else "carries"

    def flags(self, i: int) -> list[str]:
        out = []
        if math.isfinite(self.cos_others[i]) and self.cos_others[i] < self.min_cosine:
            out.append(f"points away from the other pairs (cos {self.cos_others[i]:+.2f} with their mean)")
        if self.effect_mean and self.effect_alone[i] * self.effect_mean < 0:
            out.append(f"alone it has the opposite effect ({self.effect_alone[i]:+.3g} vs the mean's {self.effect_mean:+.3g})")
        return out

    def rows(self) -> list[dict]:
        return [{"pair": i, "plus": p, "minus": m, "norm": self.norms[i], "norm_relative": self.norms[i] / self.residual_norm,
                 "cos_mean": self.cos_mean[i], "cos_others": self.cos_others[i], "effect_alone": self.effect_alone[i],
                 "effect_without": self.effect_without[i], "loo_change": self.loo_change[i], "role": self.role(i),
                 "flagged": bool(self.flags(i)), "flags": "; ".join(self.flags(i))}
                for i, (p, m) in enumerate(self.pairs)]

    def document(self) -> dict:
        return {"layer": self.layer, "coeff": self.coeff, "reading": self.reading, "metric": self.metric,
                "padding": self.padding, "residual_norm": self.residual_norm, "mean_vector_norm": self.mean_norm,
                "mean_vector_norm_relative": self.mean_norm / self.residual_norm, "effect_mean": self.effect_mean,
                "min_cosine": self.min_cosine, "control": self.control, "control_effects": self.control_effects,
                "role_noise": self.noise,
                "flagged": [i for i in range(len(self.pairs)) if self.flags(i)],
                "pairs": self.rows(), "cosine": self.cosine.tolist()}

    def table(self) -> str:
        lines = [f"{len(self.pairs)} pairs, {self.reading} reading, layer {self.layer}, coeff {self.coeff:g}; "
                 f"residual stream norm {self.residual_norm:.4g}",
                 f"effect of the mean vector (norm {self.mean_norm / self.residual_norm:.3f} x residual): "
                 f"{self.effect_mean:+.4f}   [{self.metric}]"]
        if self.control_effects:
            c = self.control
            lines.append(f"random vectors of the same size ({c['n']}): {c['mean']:+.4f} +- {c['sd']:.4f} (sd), "
                         f"from {c['min']:+.4f} to {c['max']:+.4f}; a role is named where leaving a pair out "
                         f"moves the effect by more than that sd")
        else:
            lines.append("no random controls (--controls 0): roles are not named, as nothing tells a change from noise")
        lines += [
                 f"{'#':>3} {'plus':<22} {'minus':<22} {'|v|/|r|':>7} {'cos mean':>8} {'cos rest':>8} "
                 f"{'alone':>8} {'without':>8} {'role':>7}  flags"]
        for r in self.rows():
            lines.append(f"{r['pair']:>3} {_clip(r['plus']):<22} {_clip(r['minus']):<22} {r['norm_relative']:>7.3f} "
                         f"{r['cos_mean']:>+8.3f} {r['cos_others']:>+8.3f} {r['effect_alone']:>+8.4f} "
                         f"{r['effect_without']:>+8.4f} {r['role']:>7}  {r['flags'] or ''}")
        return "\n".join(lines)

    def plot(self, path: str) -> None:
        import matplotlib.pyplot as plt

        n = len(self.pairs)
        labels = [("* " if self.flags(i) else "") + f"{i}: {_clip(p, 14)} / {_clip(m, 14)}" for i, (p, m) in enumerate(self.pairs)]
        fig, (left, right) = plt.subplots(1, 2, figsize=(6 + 0.45 * n + 4, 1.5 + 0.4 * n),
                                          gridspec_kw={"width_ratios": [n + 2, 5]})
        image = left.imshow(self.cosine, cmap="RdBu_r", vmin=-1, vmax=1)
        left.set_xticks(range(n), [str(i) for i in range(n)])
        left.set_yticks(range(n), labels)
        left.set_title(f"cosine between pairs' differences (layer {self.layer})")
        fig.colorbar(image, ax=left, fraction=0.046)
        y = np.arange(n)
        right.barh(y - 0.2, self.effect_alone, height=0.4, label="pair alone")
        right.barh(y + 0.2, self.loo_change, height=0.4, label="mean without it - mean")
        right.axvline(self.effect_mean, color="k", lw=1, ls="--", label="mean of all")
        right.axvline(0, color="grey", lw=0.5)
        right.set_yticks(y, [str(i) for i in range(n)])
        right.invert_yaxis()
        right.set_title("effect", fontsize=10)
        right.set_xlabel(_clip(self.metric, 48), fontsize=8)
        right.legend(fontsize=7, loc="best")
        fig.tight_layout()
        fig.savefig(path, format="png", dpi=100)
        plt.close(fig)


def _clip(text: str, width: int = 22) -> str:
    text = repr(text)[1:-1]
    return text if len(text) <= width else text[:width - 1] + "…"


def pair_report(model: Transformer, tokenizer: Tokenizer, pairs, layer: int, coeff: float, metric: Metric,
                reading: str = "actadd", padding: str = "space", min_cosine: float = 0.0, controls: int = 8,
                seed: int = 0, progress: bool = False) -> PairReport:
    """For each pair: its vector's size beside the residual stream (of the metric's prompt or
    texts), its cosine with the mean, with the mean of the others and with every other pair, its
    effect alone on `metric`, and the mean's effect without it (leave-one-out). A pair is
    flagged when it points away from the others (cosine with their mean below `min_cosine`) or
    alone moves the metric against the mean."""
    if isinstance(layer, bool) or not isinstance(layer, (int, np.integer)):
        raise ValueError(f"layer={layer!r}: pair diagnostics are made at one layer")
    cp = ContrastPairs.compute(model, tokenizer, pairs, [layer], reading, padding)
    n = len(cp)
    diffs = [cp.difference(i, layer) for i in range(n)]
    total = n * cp.mean_difference(layer)
    cosine = np.array([[_cos(a, b) for b in diffs] for a in diffs])
    cos_mean = [_cos(d, total) for d in diffs]
    cos_others = [_cos(d, total - d) if n > 1 else float("nan") for d in diffs]
    if isinstance(controls, bool) or not isinstance(controls, int) or controls < 0:
        raise ValueError(f"controls={controls!r}: expected a number of random vectors >= 0")
    mean = cp.vector(coeff)
    jobs = [("mean", None)] + [("alone", i) for i in range(n)] + ([("without", i) for i in range(n)] if n > 1 else [])
    jobs += [("control", k) for k in range(controls)]
    vectors = []
    for kind, i in jobs:
        if kind == "control":
            vectors.append(mean.random_like(layer, np.random.default_rng([seed, i])))
        else:
            vectors.append(mean if kind == "mean" else cp.vector(coeff, [i] if kind == "alone" else [j for j in range(n) if j != i]))
    effects = {}
    bar = progress_bar(len(jobs), progress, "pairs", "vector")
    for start in range(0, len(jobs), 8):                                      # a bar that moves, batches that pay
        for job, value in zip(jobs[start:start + 8], metric.effects(vectors[start:start + 8])):
            effects[job] = float(value)
        bar.update(len(jobs[start:start + 8]))
    bar.close()
    return PairReport(
        cp.pairs, layer, float(coeff), reading, metric.name, cp.padding_report(tokenizer),
        residual_norm(model, metric.sequences, layer), [abs(coeff) * rms_norm(d) for d in diffs],
        abs(coeff) * rms_norm(cp.mean_difference(layer)), cosine, cos_mean, cos_others, effects["mean", None],
        [effects["alone", i] for i in range(n)], [effects.get(("without", i), float("nan")) for i in range(n)],
        min_cosine, [effects["control", k] for k in range(controls)])
