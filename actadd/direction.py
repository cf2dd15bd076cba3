"""The mean-difference direction (contrastive activation addition): one d_model vector per layer,
added at positions that do not depend on the vector's own prompts. Made from contrast pairs by
actadd.pairs.mean_of_pairs (the "last" and "mean" readings) or read from a llama.cpp control
vector (actadd.vector_io). It steers through the same interface as ActAdd's matrix
(actadd.steering.Steering), so everything that takes one takes the other."""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np

from .steering import Placement, Steering, residual_site

POSITIONS = ("prompt", "all")


@dataclass
class DirectionVector(Steering):
    """A direction per layer, float32 [d_model] with the coefficient applied, added to the
    residual stream at positions that do not depend on the vector's own prompts:

        "prompt"       every position of the prompt (not the generated tokens), as ActAdd does
        "all"          every position, generated tokens included: llama.cpp's control vectors
        (p0, p1, ...)  those positions of the prompt only (0 = BOS)

    Layer L is the residual stream entering block L (blocks.{L}.hook_resid_pre), as for
    SteeringVector; L = n_layer is the stream after the last block (its hook_resid_post),
    where a llama.cpp control vector's last direction goes."""

    layers: tuple[int, ...]
    directions: tuple[np.ndarray, ...]
    n_layer: int
    coeff: float = 1.0
    reading: str = "last"           # how it was made: "last" / "mean" token of each pair, "pca",
                                    # "mean-centring" (actadd.methods), or "gguf"
    positions: str | tuple[int, ...] = "prompt"
    pairs: tuple[tuple[str, str], ...] = ()
    fingerprint: dict = field(default_factory=dict)
    alignment: str = "front"        # positions count from the front of the prompt
    provenance: dict = field(default_factory=dict)   # how it was made, beyond the pairs (actadd.methods)

    def __post_init__(self):
        self.layers = tuple(int(L) for L in self.layers)
        self.directions = tuple(self.directions)
        if not self.layers or len(self.layers) != len(self.directions):
            raise ValueError("a direction vector needs one direction per layer, and at least one layer")
        if len(set(self.layers)) != len(self.layers):
            raise ValueError(f"layers {list(self.layers)} repeat a layer")
        for L, d in zip(self.layers, self.directions):
            if not 0 <= L <= self.n_layer:
                raise ValueError(f"layer {L}: the residual stream has layers 0 to {self.n_layer} (n_layer = after "
                                 "the last block)")
            if not isinstance(d, np.ndarray) or d.dtype != np.float32 or d.ndim != 1:
                raise ValueError(f"direction at layer {L} is {getattr(d, 'dtype', type(d).__name__)} "
                                 f"{getattr(d, 'shape', '')}; expected float32 [d_model]")
        if isinstance(self.positions, str):
            if self.positions not in POSITIONS:
                raise ValueError(f"positions={self.positions!r}: expected one of {POSITIONS} or prompt positions")
        else:
            self.positions = tuple(int(p) for p in self.positions)
            if not self.positions or min(self.positions) < 0:
                raise ValueError(f"positions={list(self.positions)}: expected positions >= 0, at least one")

    @property
    def length(self) -> int:
        """The shortest prompt it can steer: 1, or past the last chosen position."""
        return 1 if isinstance(self.positions, str) else max(self.positions) + 1

    @property
    def d_model(self) -> int:
        return self.directions[0].shape[0]

    @property
    def beyond_prompt(self) -> bool:
        return self.positions == "all"

    def hook_name(self, layer: int) -> str:
        return residual_site(layer, self.n_layer)

    def direction(self, layer: int) -> np.ndarray:
        if layer not in self.layers:
            raise ValueError(f"no direction at layer {layer}; this vector has layers {list(self.layers)}")
        return self.directions[self.layers.index(layer)]

    def where(self, positions: np.ndarray, lengths: np.ndarray | None) -> np.ndarray:
        """bool [batch, pos]: where the direction is added, for position ids `positions` (-1 =
        padding) of rows whose prompts have `lengths` tokens (None: every position is prompt)."""
        inside = positions >= 0
        if self.positions == "all" or lengths is None:
            return inside
        inside &= positions < lengths[:, None]
        return inside if self.positions == "prompt" else inside & np.isin(positions, self.positions)

    def placement(self, alignment: str | None = None) -> str:
        if alignment not in (None, "front"):
            raise ValueError(f"alignment={alignment!r}: a direction vector is placed by its positions "
                             f"({self.positions!r}), not front/mid/back")
        return f"positions {self.positions!r}"

    def placements(self, layer, positions, lengths, rows=None, alignment=None) -> list[Placement]:
        if layer not in self.layers or (lengths is None and not self.beyond_prompt):
            return []
        rows = np.arange(len(positions)) if rows is None else np.asarray(rows)
        b, p = np.nonzero(self.where(positions[rows], None if lengths is None else lengths[rows]))
        return [Placement(rows[b], p, self.direction(layer), None)]

    def masked_positions(self, length: int, alignment: str | None = None) -> np.ndarray:
        """None: a direction adds to the text's own activations and stands for no prompt."""
        return np.zeros(length, bool)

    def scaled(self, factor: float) -> DirectionVector:
        return replace(self, directions=tuple((factor * d).astype(np.float32) for d in self.directions),
                       coeff=self.coeff * factor)

    def random_like(self, layer: int, rng: np.random.Generator) -> DirectionVector:
        d = self.direction(layer)
        r = rng.standard_normal(d.shape)
        r *= np.linalg.norm(d.astype(np.float64)) / np.linalg.norm(r)
        return DirectionVector((layer,), (r.astype(np.float32),), self.n_layer, self.coeff, "random control",
                               self.positions, (), self.fingerprint, self.alignment, {"like": self.reading})

    def rows_at(self, layer: int) -> tuple[np.ndarray, list]:
        return self.direction(layer)[None], [None]

    def describe(self, alignment: str | None = None) -> str:
        n = len(self.pairs)
        made = {"last": f"the mean-difference direction of {n} pairs at their last token",
                "mean": f"the mean-difference direction of {n} pairs over their tokens",
                "pca": f"the first principal component of {n} pairs' differences",
                "mean-centring": "the mean-centred direction (target texts - general texts)",
                "random control": "a random direction"}.get(self.reading, "the direction of a control vector")
        return f"{made} x {self.coeff:g} at layer(s) {list(self.layers)}, positions {self.positions!r}"

    def summary(self) -> dict:
        return {"direction": {"layers": list(self.layers), "hook_names": [self.hook_name(L) for L in self.layers],
                              "coeff": self.coeff, "reading": self.reading, "positions": self.positions,
                              "pairs": [list(p) for p in self.pairs], "provenance": self.provenance,
                              "norms": [float(np.linalg.norm(d)) for d in self.directions]}}
