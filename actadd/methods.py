"""The activation-steering methods beside ActAdd, each an actadd.Steering, so that the hooks,
row_hooks, sweeps, evals, `actadd serve` and `actadd compare` take any of them. r_L(text) is the
unsteered residual stream entering block L (blocks.{L}.hook_resid_pre), [positions, d_model]:

    actadd         Turner et al. 2023: one pair, coeff x [r_L(plus) - r_L(minus)] position by
                   position over the prompt's first positions ............ steering.x_vector
    mean-diff      CAA (Rimsky et al. 2024): coeff x mean_i [r_L(plus_i)[-1] - r_L(minus_i)[-1]],
                   the pairs' last-token differences, added at every position ..... mean_diff
    mean-centring  Jorgensen et al. 2023: coeff x [mean_t m_L(t) - mean_g m_L(g)] over target
                   texts t and general texts g, m_L(x) the mean of r_L(x) over the tokens
                   after BOS, added at every position ................... mean_centring
    pca            repeng's recipe (Vogel 2024): u the first principal component of the pairs'
                   last-token differences d_i (centred, as sklearn's PCA), its sign so that the
                   plus prompt projects higher for most pairs; coeff x s x u at every position,
                   s = sqrt(mean_i (d_i . u)^2), the differences' size along u ...... pca
    ablation       Arditi et al. 2024: x <- x - a (x . u) u for every residual stream activation
                   (each block's resid_pre and resid_mid, and after the last block), every
                   position, u the unit mean-diff direction read at one layer; a = 1 removes
                   the direction, a = 2 reflects it ........................ ablation

Prompting (the steering phrase put before the prompt as text) is the yardstick beside them all
(actadd.experiments.generation's "prompted" condition). Deterministic: one unsteered pass per
text, sums in float64 in the given order, an exact SVD (no randomized solver), rounded once to
float32.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, field, replace
from typing import Sequence

import numpy as np

from minigpt import Tokenizer, Transformer

from .direction import DirectionVector
from .pairs import ContrastPairs, check_pairs, mean_of_pairs
from .provenance import fingerprint
from .steering import Placement, Steering, residual_site, residual_streams, tokens_with_bos, x_vector, \
    steering_vector

METHODS = ("actadd", "mean-diff", "mean-centring", "pca", "ablation")
PAIR_METHODS = ("mean-diff", "pca", "ablation")          # made from many contrast pairs
PCA_RECIPES = ("repeng", "steering-vectors")
ABLATION_SITES = ("every", "block-outputs")


def check_method(method: str) -> str:
    if method not in METHODS:
        raise ValueError(f"method={method!r}: expected one of {', '.join(METHODS)}")
    return method


def _layers(layers) -> list[int]:
    return [layers] if isinstance(layers, (int, np.integer)) else list(layers)


# ---------------------------------------------------------------------------------------------
# Mean difference (CAA) and its principal component


def last_token_differences(model: Transformer, tokenizer: Tokenizer, pairs, layers) -> tuple[dict, ContrastPairs]:
    """{layer: float64 [pairs, d_model]}: each pair's r_L(plus)[-1] - r_L(minus)[-1] (the
    difference taken in float32, as the residual streams are), and the ContrastPairs."""
    cp = ContrastPairs.compute(model, tokenizer, pairs, _layers(layers), "last")
    return {L: np.stack([cp.difference(i, L) for i in range(len(cp))]).astype(np.float64) for L in cp.layers}, cp


def mean_diff(model: Transformer, tokenizer: Tokenizer, pairs, coeff: float, layers,
              positions: str | tuple[int, ...] = "all") -> DirectionVector:
    """CAA: coeff x the mean of the pairs' last-token differences at each of `layers`, added at
    every position (generated tokens too) unless `positions` says otherwise."""
    return mean_of_pairs(model, tokenizer, pairs, coeff, layers, "last", positions=positions)


def principal_direction(differences: np.ndarray, recipe: str = "repeng") -> tuple[np.ndarray, dict]:
    """The unit first principal component of `differences` ([pairs, d_model]) and what it
    explains, its sign fixed so that d_i . u > 0 for most pairs (ties: the mean's sign).

    "repeng"            the differences centred first (sklearn's PCA, as repeng's pca_diff),
                        sign by the majority of pairs (repeng's rule); needs two pairs.
    "steering-vectors"  uncentred (the SVD of [d; -d], as its pca_aggregator), sign by the
                        mean projection (its rule)."""
    if recipe not in PCA_RECIPES:
        raise ValueError(f"recipe={recipe!r}: expected one of {PCA_RECIPES}")
    d = np.asarray(differences, np.float64)
    if d.ndim != 2 or not len(d):
        raise ValueError(f"differences of shape {d.shape}: expected [pairs, d_model], at least one pair")
    if recipe == "repeng" and len(d) < 2:
        raise ValueError("the repeng recipe centres the differences, and one pair's centred difference is zero: give "
                         "two pairs or more (or recipe='steering-vectors', whose one-pair PCA is the difference)")
    x = d - d.mean(axis=0) if recipe == "repeng" else d
    _, s, vt = np.linalg.svd(x, full_matrices=False)                        # exact, deterministic
    if not s.size or s[0] <= 0:
        raise ValueError("the pairs' differences have no variance to take a principal component of (all equal)")
    u = vt[0]
    projections = d @ u                                                     # [pairs]
    if recipe == "repeng":
        above, below = int((projections > 0).sum()), int((projections < 0).sum())
        flip = below > above or (below == above and projections.mean() < 0)
    else:
        flip = projections.mean() < 0
    u = -u if flip else u
    return u, {"explained": float(s[0] ** 2 / (s ** 2).sum()), "pairs_plus_higher": int(((d @ u) > 0).sum())}


def pca(model: Transformer, tokenizer: Tokenizer, pairs, coeff: float, layers, positions="all",
        recipe: str = "repeng") -> DirectionVector:
    """coeff x s_L x u_L at each of `layers`: u_L the first principal component of the pairs'
    last-token differences (principal_direction), s_L = sqrt(mean_i (d_i . u_L)^2), so that
    coefficients mean at each layer what they mean for the mean difference (one pair with the
    steering-vectors recipe: exactly its difference)."""
    diffs, cp = last_token_differences(model, tokenizer, pairs, layers)
    return pca_vector(cp, diffs, coeff, positions, recipe)


def pca_vector(cp: ContrastPairs, diffs: dict, coeff: float, positions="all", recipe: str = "repeng",
               indices: Sequence[int] | None = None, layers: Sequence[int] | None = None) -> DirectionVector:
    """`pca` from differences already read (last_token_differences), of pairs `indices` and at
    `layers` only (default all): the pair-count curve reads the streams once."""
    indices = list(range(len(cp)) if indices is None else indices)
    layers = list(cp.layers if layers is None else layers)
    directions, scales, explained = [], [], []
    for L in layers:
        d = diffs[L][indices]
        u, info = principal_direction(d, recipe)
        scale = float(np.sqrt(np.mean((d @ u) ** 2)))
        directions.append((coeff * scale * u).astype(np.float32))
        scales.append(scale)
        explained.append(info["explained"])
    provenance = {"method": "pca", "recipe": recipe, "scale": scales, "explained": explained,
                  "read_at": "last token"}
    return DirectionVector(tuple(layers), tuple(directions), cp.n_layer, float(coeff), "pca", positions,
                           tuple(cp.pairs[i] for i in indices), cp.fingerprint, provenance=provenance)


# ---------------------------------------------------------------------------------------------
# Mean-centring


def _texts_digest(texts: Sequence[Sequence[int]]) -> str:
    return hashlib.sha256(json.dumps([list(t) for t in texts]).encode()).hexdigest()


MAX_TOKENS = 64


def text_means(model: Transformer, tokenizer: Tokenizer, texts: Sequence[str], layers, max_tokens: int,
               what: str) -> tuple[dict[int, np.ndarray], list[list[int]]]:
    """{layer: float64 [texts, d_model]}: each text's residual stream averaged over its tokens
    after BOS, the text cut to its first `max_tokens` tokens after BOS (one unsteered pass a
    text, in order); and the token lists read."""
    texts = list(texts)
    if not texts:
        raise ValueError(f"{what}: no texts")
    if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or not 1 <= max_tokens < model.config.n_positions:
        raise ValueError(f"max_tokens={max_tokens!r}: expected 1 to {model.config.n_positions - 1} tokens (the "
                         "model's context, less BOS)")
    sequences = []
    for i, text in enumerate(texts):
        if not isinstance(text, str):
            raise ValueError(f"{what}[{i}] is {type(text).__name__}; expected text")
        ids = tokens_with_bos(tokenizer, text)[:max_tokens + 1]
        if len(ids) < 2:
            raise ValueError(f"{what}[{i}] {text[:40]!r} has no tokens after BOS to average")
        sequences.append(ids)
    layers = _layers(layers)
    rows = {L: np.zeros((len(sequences), model.config.n_embd), np.float64) for L in layers}
    for i, ids in enumerate(sequences):
        streams = residual_streams(model, {tuple(ids): layers})
        for L in layers:
            rows[L][i] = streams[tuple(ids), L][1:].astype(np.float64).mean(axis=0)
    return rows, sequences


def mean_centring(model: Transformer, tokenizer: Tokenizer, target: Sequence[str], general: Sequence[str],
                  coeff: float, layers, positions="all", max_tokens: int | None = None) -> DirectionVector:
    """coeff x (the target texts' mean activation - the general texts' mean activation) at each
    of `layers` (text_means: each text's mean over its tokens after BOS, texts weighing the
    same), added at every position. Jorgensen et al. take the general mean over the model's
    training distribution: OpenWebText for GPT-2."""
    layers = _layers(layers)
    for L in layers:
        if isinstance(L, bool) or not isinstance(L, (int, np.integer)) or not 0 <= L <= model.config.n_layer:
            raise ValueError(f"layer {L!r}: expected 0 to {model.config.n_layer}")
    max_tokens = min(MAX_TOKENS, model.config.n_positions - 1) if max_tokens is None else max_tokens
    t_rows, t_seqs = text_means(model, tokenizer, target, layers, max_tokens, "target")
    g_rows, g_seqs = text_means(model, tokenizer, general, layers, max_tokens, "general")
    return mean_centring_vector(t_rows, g_rows, t_seqs, g_seqs, coeff, model.config.n_layer, fingerprint(model),
                                positions, max_tokens)


def mean_centring_vector(t_rows: dict, g_rows: dict, t_seqs, g_seqs, coeff: float, n_layer: int, made_on: dict,
                         positions="all", max_tokens: int | None = None, k: int | None = None,
                         layers: Sequence[int] | None = None) -> DirectionVector:
    """`mean_centring` from per-text means already read (text_means), of the first `k` target
    texts and at `layers` only (default all)."""
    if isinstance(coeff, bool) or not isinstance(coeff, (int, float, np.integer, np.floating)) \
            or not math.isfinite(coeff):
        raise ValueError(f"coeff={coeff!r}: expected a finite number")
    k = len(t_seqs) if k is None else k
    layers = list(t_rows if layers is None else layers)
    t_mean = {L: t_rows[L][:k].mean(axis=0) for L in layers}
    g_mean = {L: g_rows[L].mean(axis=0) for L in layers}
    directions = tuple((coeff * (t_mean[L] - g_mean[L])).astype(np.float32) for L in layers)
    provenance = {"method": "mean-centring", "target_texts": k, "general_texts": len(g_seqs),
                  "max_tokens": max_tokens, "target_tokens_sha256": _texts_digest(t_seqs[:k]),
                  "general_tokens_sha256": _texts_digest(g_seqs),
                  "target_norm": [float(np.linalg.norm(t_mean[L])) for L in layers],
                  "general_norm": [float(np.linalg.norm(g_mean[L])) for L in layers]}
    return DirectionVector(tuple(layers), directions, n_layer, float(coeff), "mean-centring", positions, (), made_on,
                           provenance=provenance)


# ---------------------------------------------------------------------------------------------
# Directional ablation


@dataclass
class AblationVector(Steering):
    """x <- x - strength x (x . u) u, u a unit direction, at every residual stream activation of
    the model (each block's hook_resid_pre and hook_resid_mid, and the last block's
    hook_resid_post) and every position, generated tokens included: the direction is never
    there to read. `read_at`: the layer u was read at; `pairs`: what it was made from."""

    direction: np.ndarray            # float32 [d_model], unit norm
    n_layer: int
    strength: float = 1.0
    read_at: int | None = None
    pairs: tuple[tuple[str, str], ...] = ()
    fingerprint: dict = field(default_factory=dict)
    provenance: dict = field(default_factory=dict)
    alignment: str = "front"
    at: str = "every"                # or "block-outputs": only what each block writes (see sites)
    reading = "ablation"

    beyond_prompt = True
    ablates = True

    def __post_init__(self):
        d = self.direction
        if not isinstance(d, np.ndarray) or d.dtype != np.float32 or d.ndim != 1:
            raise ValueError(f"ablation direction is {getattr(d, 'dtype', type(d).__name__)} {getattr(d, 'shape', '')}; "
                             "expected float32 [d_model]")
        norm = float(np.linalg.norm(d.astype(np.float64)))
        if not math.isfinite(norm) or abs(norm - 1) > 1e-5:
            raise ValueError(f"ablation direction has norm {norm:.6g}; expected a unit vector (normalize it first)")
        if isinstance(self.strength, bool) or not isinstance(self.strength, (int, float, np.integer, np.floating)) \
                or not math.isfinite(self.strength):
            raise ValueError(f"strength={self.strength!r}: expected a finite number (1 removes the direction)")
        self.strength = float(self.strength)
        if self.at not in ABLATION_SITES:
            raise ValueError(f"at={self.at!r}: expected one of {ABLATION_SITES}")

    @property
    def layers(self) -> tuple[int, ...]:
        return tuple(range(self.n_layer + 1))

    @property
    def coeff(self) -> float:
        return self.strength

    @property
    def length(self) -> int:
        return 1

    @property
    def d_model(self) -> int:
        return self.direction.shape[0]

    def hook_name(self, layer: int) -> str:
        return residual_site(layer, self.n_layer)

    def sites(self) -> list[tuple[object, str]]:
        """"every": each block's hook_resid_pre and hook_resid_mid and the last block's
        hook_resid_post (Arditi et al.: every residual stream activation). "block-outputs":
        layers 1 .. n_layer only, the outputs of the blocks (what steering-vectors' operators
        patch: its decoder_block hooks), so the embeddings and the stream between attention
        and MLP keep the direction."""
        if self.at == "block-outputs":
            return [(L, self.hook_name(L)) for L in range(1, self.n_layer + 1)]
        pre = [(L, self.hook_name(L)) for L in range(self.n_layer)]
        mid = [(("mid", L), f"blocks.{L}.hook_resid_mid") for L in range(self.n_layer)]
        return pre + mid + [(self.n_layer, self.hook_name(self.n_layer))]

    def placement(self, alignment: str | None = None) -> str:
        if alignment not in (None, "front"):
            raise ValueError(f"alignment={alignment!r}: an ablation acts at every position, not front/mid/back")
        return "every position"

    def placements(self, layer, positions, lengths, rows=None, alignment=None) -> list[Placement]:
        rows = np.arange(len(positions)) if rows is None else np.asarray(rows)
        b, p = np.nonzero(positions[rows] >= 0)
        return [Placement(rows[b], p, self.direction, None, self.strength)] if self.strength else []

    def masked_positions(self, length: int, alignment: str | None = None) -> np.ndarray:
        return np.zeros(length, bool)

    def scaled(self, factor: float) -> AblationVector:
        return replace(self, strength=self.strength * factor)

    def random_like(self, layer: int, rng: np.random.Generator) -> AblationVector:
        r = rng.standard_normal(self.direction.shape)
        return replace(self, direction=(r / np.linalg.norm(r)).astype(np.float32), pairs=(), read_at=None,
                       provenance={"like": "ablation"})

    def rows_at(self, layer: int) -> tuple[np.ndarray, list]:
        return self.direction[None], [None]

    def describe(self, alignment: str | None = None) -> str:
        made = (f"the unit mean-difference direction of {len(self.pairs)} pairs read at layer {self.read_at}"
                if self.pairs else "a direction")
        where = "every residual stream activation" if self.at == "every" else "each block's output"
        return f"ablation of {made}, strength {self.strength:g}, at {where} and every position"

    def summary(self) -> dict:
        return {"ablation": {"strength": self.strength, "read_at": self.read_at, "at": self.at, "pairs": [list(p) for p in self.pairs],
                             "sites": [name for _, name in self.sites()], "provenance": self.provenance}}


def ablation(model: Transformer, tokenizer: Tokenizer, pairs, layer: int, strength: float = 1.0,
             at: str = "every") -> AblationVector:
    """Project the pairs' unit mean-difference direction (last tokens, read at `layer`) out of
    every residual stream activation (AblationVector)."""
    if isinstance(layer, bool) or not isinstance(layer, (int, np.integer)):
        raise ValueError(f"layer={layer!r}: the direction is read at one layer")
    diffs, cp = last_token_differences(model, tokenizer, pairs, [layer])
    return ablation_vector(cp, diffs, layer, strength, at)


def ablation_vector(cp: ContrastPairs, diffs: dict, layer: int, strength: float = 1.0, at: str = "every",
                    indices: Sequence[int] | None = None) -> AblationVector:
    """`ablation` from differences already read, of pairs `indices` only (default all)."""
    indices = list(range(len(cp)) if indices is None else indices)
    mean = diffs[layer][indices].mean(axis=0)
    norm = float(np.linalg.norm(mean))
    if not norm > 0:
        raise ValueError(f"the pairs' mean difference at layer {layer} is zero: there is no direction to ablate")
    return AblationVector((mean / norm).astype(np.float32), cp.n_layer, strength, int(layer),
                          tuple(cp.pairs[i] for i in indices), cp.fingerprint,
                          {"method": "ablation", "mean_difference_norm": norm}, at=at)


# ---------------------------------------------------------------------------------------------
# One door for the command line and the comparison


def make(method: str, model: Transformer, tokenizer: Tokenizer, *, coeff: float, layer: int,
         pairs: Sequence[tuple[str, str]] = (), plus: str | None = None, minus: str | None = None,
         target: Sequence[str] = (), general: Sequence[str] = (), padding: str = "space",
         positions="all", recipe: str = "repeng", max_tokens: int | None = None) -> Steering:
    """The steering vector of `method` at `layer` and `coeff` (for ablation: its strength). ActAdd
    takes plus - minus (or the first pair); the pair methods take `pairs` (or plus - minus as one
    pair); mean-centring takes `target` and `general` texts."""
    check_method(method)
    if method == "mean-centring":
        return mean_centring(model, tokenizer, target, general, coeff, [layer], positions, max_tokens)
    pairs = check_pairs(pairs) if pairs else ([(plus, minus or "")] if plus is not None else [])
    if not pairs:
        raise ValueError(f"method {method!r} needs contrast pairs (or plus and minus)")
    if method == "actadd":
        if plus is None:
            plus, minus = pairs[0]
        return steering_vector(model, x_vector(tokenizer, plus, minus or "", coeff, layer, padding), padding=padding)
    if method == "mean-diff":
        return mean_diff(model, tokenizer, pairs, coeff, [layer], positions)
    if method == "pca":
        return pca(model, tokenizer, pairs, coeff, [layer], positions, recipe)
    return ablation(model, tokenizer, pairs, layer, coeff)
