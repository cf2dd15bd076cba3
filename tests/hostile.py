"""Helpers of the hostile-input tests (test_hostile_*.py): tiny checkpoints of each family written
with NumPy and safetensors alone, and a check that a call stays within time and memory."""

from __future__ import annotations

import json
import signal
import time
import tracemalloc
from pathlib import Path

import numpy as np
from safetensors.numpy import save_file

from minigpt import Gemma3Config, GPT2Config, LlamaConfig, OPTConfig, gemma3, llama, opt, weights

# The smallest config of each family that the tests run, as config.json writes it.
CONFIGS = {
    "gpt2": {"model_type": "gpt2", "n_layer": 2, "n_head": 2, "n_embd": 8, "n_positions": 16, "vocab_size": 300},
    "opt": {"model_type": "opt", "vocab_size": 300, "hidden_size": 8, "num_hidden_layers": 2, "num_attention_heads": 2,
            "ffn_dim": 16, "max_position_embeddings": 16},
    "llama": {"model_type": "llama", "vocab_size": 300, "hidden_size": 8, "intermediate_size": 16,
              "num_hidden_layers": 2, "num_attention_heads": 2, "num_key_value_heads": 1,
              "max_position_embeddings": 16},
    "gemma3": {"model_type": "gemma3_text", "vocab_size": 300, "hidden_size": 8, "intermediate_size": 16,
               "num_hidden_layers": 2, "num_attention_heads": 2, "num_key_value_heads": 1, "head_dim": 4,
               "max_position_embeddings": 16, "sliding_window": 4, "sliding_window_pattern": 2},
}
LAYERS_FIELD = {"gpt2": "n_layer", "opt": "num_hidden_layers", "llama": "num_hidden_layers",
                "gemma3": "num_hidden_layers"}


def write_tiny(kind: str, folder: Path, config: dict | None = None, seed: int = 0) -> Path:
    """A folder holding config.json and model.safetensors (random float32 weights in the names
    transformers writes) of the tiny `kind` model; `config` replaces config.json afterwards."""
    folder.mkdir(parents=True, exist_ok=True)
    raw = CONFIGS[kind]
    fields = {k: v for k, v in raw.items() if k != "model_type"}
    if kind == "gpt2":
        shapes, prefix = weights.expected_shapes(GPT2Config(**fields)), ""
    elif kind == "opt":
        shapes, prefix = opt.expected_shapes(OPTConfig(**fields)), "model.decoder."
    elif kind == "gemma3":
        shapes, prefix = gemma3.expected_shapes(Gemma3Config(**fields)), "model."
    else:
        shapes, prefix = llama.expected_shapes(LlamaConfig(**fields)), "model."
    rng = np.random.default_rng(seed)
    tensors = {(n if n == "lm_head.weight" else prefix + n): (0.02 * rng.standard_normal(s)).astype(np.float32)
               for n, s in shapes.items()}
    save_file(tensors, folder / "model.safetensors")
    (folder / "config.json").write_text(json.dumps(raw if config is None else config))
    return folder


# Memory, which tracemalloc counts the same on any machine, is the bound. Time is not asserted:
# how fast refusals are is measured in benchmarks/ (bench_gguf.py --header). HANG_SECONDS is only a
# watchdog, an alarm that stops an input making a reader loop without end (or for hours, as a
# count of 10^8 once did) so that one test fails instead of the whole suite hanging; it is far
# above what a busy CI machine (2-10x slower than a quiet one) takes for any refusal here.
HANG_SECONDS = 120


class Hang(BaseException):
    """Raised by the watchdog; a BaseException, so that fn's own `except Exception` cannot keep it."""


def _alarm(signum, frame):
    raise Hang(f"no answer within the {HANG_SECONDS} s watchdog: a hang, not a refusal")


def bounded(fn, *args, megabytes: float = 100.0, **kwargs):
    """(result or the exception raised, seconds, peak MB allocated) of fn(*args), asserting that
    it allocated less than `megabytes` before it returned or refused; a hang is stopped by the
    watchdog (HANG_SECONDS) and fails the test."""
    previous = signal.signal(signal.SIGALRM, _alarm)
    signal.alarm(HANG_SECONDS)              # a watchdog against a hang, not a speed limit
    tracemalloc.start()
    start = time.perf_counter()
    try:
        outcome = fn(*args, **kwargs)
    except Exception as e:  # returned for the test to inspect
        outcome = e
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
        elapsed = time.perf_counter() - start
        peak = tracemalloc.get_traced_memory()[1] / 2**20
        tracemalloc.stop()
    assert peak < megabytes, f"{getattr(fn, '__name__', fn)} allocated {peak:.0f} MB (limit {megabytes} MB)"
    return outcome, elapsed, peak


def mutate(doc, place: tuple, value) -> None:
    """doc[place[0]][place[1]]... = value, where that place exists (or is a new key of an
    object): how the fuzzes change one field of a valid file."""
    node = doc
    for key in place[:-1]:
        if isinstance(node, dict) and key in node or isinstance(node, list) and isinstance(key, int) and key < len(node):
            node = node[key]
        else:
            return
    last = place[-1]
    if isinstance(node, dict) and isinstance(last, str) or isinstance(node, list) and isinstance(last, int) \
            and last < len(node):
        node[last] = value
