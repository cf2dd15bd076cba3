"""GPT-2 hyperparameters, read from a Hugging Face `config.json`.

Only configurations this code computes exactly like `transformers`' GPT-2 are accepted; anything
else is refused here, by field name and value, rather than run slightly wrong later.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path


class ConfigError(ValueError):
    """A config.json that is not a GPT-2 this code can run."""


# tanh-approximated GELU under both of its transformers names (same formula, same numbers).
ACTIVATIONS = ("gelu_new", "gelu_pytorch_tanh")

# Fields of transformers' GPT2Config that change the computation: value this code implements.
_FIXED_FIELDS = {
    "scale_attn_weights": True,  # scores divided by sqrt(d_head)
    "scale_attn_by_inverse_layer_idx": False,  # no extra 1/(layer+1) scaling
    "add_cross_attention": False,  # decoder-only
    "tie_word_embeddings": True,  # unembedding is wte.T
}


@dataclass(frozen=True)
class GPT2Config:
    n_layer: int = 12  # transformer blocks
    n_head: int = 12  # attention heads per block
    n_embd: int = 768  # residual stream width, d_model
    n_positions: int = 1024  # longest sequence (rows of wpe)
    vocab_size: int = 50257  # rows of wte
    layer_norm_epsilon: float = 1e-5
    activation_function: str = "gelu_new"
    n_inner: int | None = None  # MLP width; None means 4 * n_embd

    def __post_init__(self):
        for name in ("n_layer", "n_head", "n_embd", "n_positions", "vocab_size"):
            require_positive_int(name, getattr(self, name))
        if self.n_inner is not None:
            require_positive_int("n_inner", self.n_inner)
        if self.n_embd % self.n_head:
            raise ConfigError(
                f"n_embd={self.n_embd} is not divisible by n_head={self.n_head}: "
                "every head must get n_embd / n_head dimensions"
            )
        eps = self.layer_norm_epsilon
        if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not 0 < eps < 1:
            raise ConfigError(f"layer_norm_epsilon={eps!r}: expected a float in (0, 1)")
        if self.activation_function not in ACTIVATIONS:
            raise ConfigError(
                f"activation_function={self.activation_function!r}: GPT-2 uses the tanh GELU, "
                f"expected one of {ACTIVATIONS}"
            )

    @property
    def d_head(self) -> int:
        return self.n_embd // self.n_head

    @property
    def d_mlp(self) -> int:
        return self.n_inner if self.n_inner is not None else 4 * self.n_embd

    @classmethod
    def from_dict(cls, raw: dict, source: str = "config") -> GPT2Config:
        """Build from a parsed config.json; `source` names the file in errors."""
        if not isinstance(raw, dict):
            raise ConfigError(f"{source}: expected a JSON object, found {type(raw).__name__}")
        model_type = raw.get("model_type")
        if model_type != "gpt2":
            raise ConfigError(f"{source}: model_type={model_type!r}, expected 'gpt2'")
        for field, value in _FIXED_FIELDS.items():
            if field in raw and raw[field] != value:
                raise ConfigError(
                    f"{source}: {field}={raw[field]!r} is not supported (GPT-2 uses {value!r})"
                )
        if "n_ctx" in raw and "n_positions" in raw and raw["n_ctx"] != raw["n_positions"]:
            raise ConfigError(
                f"{source}: n_ctx={raw['n_ctx']!r} differs from n_positions={raw['n_positions']!r}"
            )
        names = ("n_layer", "n_head", "n_embd", "n_positions", "vocab_size",
                 "layer_norm_epsilon", "activation_function", "n_inner")
        missing = [n for n in names[:5] if n not in raw]
        if missing:
            raise ConfigError(f"{source}: missing field(s) {', '.join(missing)}")
        try:
            return cls(**{n: raw[n] for n in names if n in raw})
        except ConfigError as e:
            raise ConfigError(f"{source}: {e}") from None

    @classmethod
    def from_json(cls, path: str | Path) -> GPT2Config:
        return cls.from_dict(read_json(path, "a GPT-2"), source=str(path))


def read_json(path: str | Path, family: str):
    """A config.json's content, or a ConfigError naming the file (`family`: "a GPT-2", ...)."""
    path = Path(path)
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such file ({family} folder needs config.json)") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a JSON object, found {type(raw).__name__}")
    return raw


def require_positive_int(name, value):
    """A config size: a positive int (a bool is not one), else a ConfigError naming the field."""
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ConfigError(f"{name}={value!r}: expected a positive integer")
