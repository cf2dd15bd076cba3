"""GPT-2 hyperparameters, read from a Hugging Face `config.json`, and the checks every family's
config uses.

Only configurations this code computes exactly like `transformers`' GPT-2 are accepted; anything
else is refused here, by field name and value, rather than run slightly wrong later. Every field
must have the JSON type transformers writes (a bool is a bool, an int an int) and a value in
range; errors read `config.json: FIELD: what is wrong (what was expected)`.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

from .textfiles import describe, read_json as read_json_file


class ConfigError(ValueError):
    """A config.json that is not a GPT-2 this code can run."""


# tanh-approximated GELU under both of its transformers names (same formula, same numbers).
ACTIVATIONS = ("gelu_new", "gelu_pytorch_tanh")

# Fields of transformers' GPT2Config that change the computation: the value this code implements.
FIXED_FIELDS = {
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
        require_divides("n_head", self.n_head, "n_embd", self.n_embd)
        require_number("layer_norm_epsilon", self.layer_norm_epsilon, 0, 1)
        if self.activation_function not in ACTIVATIONS:
            raise ConfigError(f"activation_function: {show(self.activation_function)} is not supported (GPT-2 uses "
                              f"the tanh GELU: {' or '.join(show(a) for a in ACTIVATIONS)})")

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
            raise ConfigError(f"{source}: {describe(raw)} (expected a JSON object)")
        check_header(raw, source, "gpt2", FIXED_FIELDS, "GPT-2")
        if "n_ctx" in raw and "n_positions" in raw and raw["n_ctx"] != raw["n_positions"]:
            raise ConfigError(f"{source}: n_ctx: {show(raw['n_ctx'])} differs from n_positions="
                              f"{show(raw['n_positions'])} (expected them equal)")
        fields = config_fields(raw, source, required=("n_layer", "n_head", "n_embd", "n_positions", "vocab_size"),
                               optional=("layer_norm_epsilon", "activation_function"), nullable=("n_inner",))
        with prefixed(source):
            return cls(**fields)

    @classmethod
    def from_json(cls, path: str | Path) -> GPT2Config:
        return cls.from_dict(read_json(path, "a GPT-2"), source=str(path))


MAX_CONFIG_BYTES = 16 << 20      # a config.json is a few kB; 16 MiB is no config


def read_json(path: str | Path, family: str):
    """A config.json's content, or a ConfigError naming the file (`family`: "a GPT-2", ...)."""
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"{path}: no such file ({family} folder needs config.json)")
    raw = read_json_file(path, ConfigError, MAX_CONFIG_BYTES, "config.json")
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: {describe(raw)} (expected a JSON object)")
    return raw


# ---------------------------------------------------------------------------------------------
# Checks every family's config uses: `FIELD: what is wrong (what was expected)`


def show(value) -> str:
    """A value as JSON writes it (strings quoted, null, true, Infinity), for messages."""
    try:
        return json.dumps(value)
    except (TypeError, ValueError):
        return repr(value)


def _wrong(name: str, value, expected: str) -> ConfigError:
    kind = "" if value is None else f" is {describe(value)}"
    return ConfigError(f"{name}: {show(value)}{kind} (expected {expected})")


def require_positive_int(name: str, value) -> int:
    """A config size: a positive int (a bool is not one), else a ConfigError naming the field."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise _wrong(name, value, "a positive integer")
    if value <= 0:
        raise ConfigError(f"{name}: {value} (expected a positive integer)")
    return value


def require_bool(name: str, value) -> bool:
    if not isinstance(value, bool):
        raise _wrong(name, value, "true or false")
    return value


def require_number(name: str, value, low: float, high: float | None = None) -> float:
    """A finite number in the open interval (low, high) (high None: above low)."""
    expected = f"a finite number in ({low:g}, {high:g})" if high is not None else f"a finite number > {low:g}"
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise _wrong(name, value, expected)
    if not math.isfinite(value) or not value > low or (high is not None and not value < high):
        raise ConfigError(f"{name}: {show(value)} (expected {expected})")
    return float(value) if isinstance(value, float) else value


def require_divides(name: str, value: int, whole_name: str, whole: int,
                    why: str = "every head gets an equal share of the width") -> None:
    if whole % value:
        raise ConfigError(f"{name}: {value} does not divide {whole_name}={whole} ({why})")


def check_header(raw: dict, source: str, model_type: str, fixed: dict, family: str) -> None:
    """model_type, and the fields whose other values would change the computation (`fixed`:
    field -> the value implemented)."""
    if raw.get("model_type") != model_type:
        raise ConfigError(f"{source}: model_type: {show(raw.get('model_type'))} (expected {show(model_type)})")
    for field, value in fixed.items():
        if field in raw and (raw[field] != value or type(raw[field]) is not type(value)):
            raise ConfigError(f"{source}: {field}: {show(raw[field])} is not supported ({family} uses {show(value)})")


def config_fields(raw: dict, source: str, required=(), optional=(), nullable=()) -> dict:
    """The constructor arguments a config.json gives: `required` fields must be there, `optional`
    ones may be left out (the dataclass default, transformers' default); `nullable` ones may also
    be null (meaning their default). Other nulls are passed on, to be refused by their check."""
    missing = [n for n in required if n not in raw]
    if missing:
        raise ConfigError(f"{source}: missing field(s) {', '.join(missing)}")
    out = {n: raw[n] for n in (*required, *optional) if n in raw}
    out.update({n: raw[n] for n in nullable if raw.get(n) is not None})
    return out


class prefixed:
    """`with prefixed(source):` puts the file's name before a ConfigError raised inside."""

    def __init__(self, source: str):
        self.source = source

    def __enter__(self):
        return self

    def __exit__(self, kind, error, tb):
        if isinstance(error, ConfigError) and not str(error).startswith(self.source):
            raise ConfigError(f"{self.source}: {error}") from None
        return False
