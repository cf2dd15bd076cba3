import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

from minigpt import GPT2, GPT2Config

sys.path.insert(0, str(Path(__file__).parent))  # tests/reference.py, importable by test modules

# CI runs the "ci" profile: derandomized, so a red build is reproducible from its log.
settings.register_profile("dev", deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("ci", parent=settings.get_profile("dev"), derandomize=True, print_blob=True)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "dev"))


def _import_reference(module: str):
    """A test-only reference module. Without its libraries the tests that need it skip, unless
    MINIGPT_REQUIRE_REFERENCE=1 (as in CI), where that is a failure: parity must never silently
    not run."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as e:
        if os.environ.get("MINIGPT_REQUIRE_REFERENCE") == "1":
            pytest.fail(f"MINIGPT_REQUIRE_REFERENCE=1 but {module} cannot be imported: {e}")
        pytest.skip(f"{module} needs libraries that are not installed ({e}); install the 'test' extra")


@pytest.fixture(scope="session")
def reference():
    """tests/reference.py: transformers' GPT-2 on PyTorch (CPU)."""
    return _import_reference("reference")


@pytest.fixture(scope="session")
def tok_reference():
    """tests/reference_tokenizers.py: Hugging Face tokenizers and tiktoken."""
    return _import_reference("reference_tokenizers")


# ---------------------------------------------------------------------------------------------
# Shared data (../shared, beside the checkout): read from a folder named by an environment
# variable that .ci/run sets. Where it is unset these tests skip, saying so; where it is set, a
# missing or altered folder is a failure.

GPT2_TOKENIZER_SHA256 = {
    "vocab.json": "196139668be63f3b5d6574427317ae82f612a97c5d1cdaf36ed2256dbf636783",
    "merges.txt": "1ce1664773c50f3e0cc8842619a93edc4624525b728b188a9e0be33b7726adc5",
}


def _shared_folder(variable: str, what: str) -> Path:
    value = os.environ.get(variable)
    if not value:
        pytest.skip(f"{variable} is not set: it names the folder of {what} (.ci/run sets it to ../shared/...)")
    folder = Path(value)
    if not folder.is_dir():
        pytest.fail(f"{variable}={value} is not a folder")
    return folder


@pytest.fixture(scope="session")
def gpt2_tokenizer_dir() -> Path:
    """The genuine GPT-2 vocab.json and merges.txt, checked against the hashes tiktoken pins."""
    import hashlib

    folder = _shared_folder("MINIGPT_GPT2_TOKENIZER", "the genuine GPT-2 vocab.json and merges.txt")
    for name, digest in GPT2_TOKENIZER_SHA256.items():
        assert hashlib.sha256((folder / name).read_bytes()).hexdigest() == digest, f"{folder / name} is altered"
    return folder


@pytest.fixture(scope="session")
def corpora_dir() -> Path:
    return _shared_folder("MINIGPT_CORPORA", "the public-domain corpora (gutenberg/, tinyshakespeare/)")


@pytest.fixture(scope="session")
def reference_md() -> str:
    """../shared/REFERENCE.md, the facts the paper's settings and figures are copied from."""
    value = os.environ.get("MINIGPT_REFERENCE")
    if not value:
        pytest.skip("MINIGPT_REFERENCE is not set: it names ../shared/REFERENCE.md (.ci/run sets it)")
    return Path(value).read_text(encoding="utf-8")


@pytest.fixture(scope="session")
def evaldata_dir() -> Path:
    return _shared_folder("MINIGPT_EVALDATA", "the evaluation data (realtoxicityprompts/, openwebtext/)")


# ---------------------------------------------------------------------------------------------
# Random models without torch: a config strategy and NumPy parameters of the right shapes.


@st.composite
def configs(draw, max_layers=4, max_heads=4, max_positions=24, min_positions=1):
    n_head = draw(st.integers(1, max_heads))
    return GPT2Config(
        n_layer=draw(st.integers(1, max_layers)),
        n_head=n_head,
        n_embd=n_head * draw(st.integers(4, 32)),
        n_positions=draw(st.integers(min_positions, max_positions)),
        vocab_size=draw(st.integers(2, 120)),
        layer_norm_epsilon=draw(st.sampled_from([1e-5, 1e-3])),
        activation_function=draw(st.sampled_from(["gelu_new", "gelu_pytorch_tanh"])),
        n_inner=draw(st.one_of(st.none(), st.integers(1, 64))),
    )


def random_state_dict(config: GPT2Config, seed: int) -> dict[str, np.ndarray]:
    from minigpt.weights import expected_shapes

    rng = np.random.default_rng(seed)
    out = {}
    for name, shape in expected_shapes(config).items():
        is_norm = ".ln_" in name or name.startswith("ln_f")
        std = 0.3 if is_norm or name.endswith("bias") else 0.1
        offset = 1.0 if is_norm and name.endswith("weight") else 0.0  # gains around 1
        out[name] = (rng.normal(0.0, std, shape) + offset).astype(np.float32)
    return out


def random_model(config: GPT2Config, seed: int = 0, backend="numpy") -> GPT2:
    return GPT2(config, random_state_dict(config, seed), backend=backend)


def config_dict(config: GPT2Config, **overrides) -> dict:
    """What config.json holds for `config` (plus `overrides`, to make bad ones)."""
    from dataclasses import asdict

    return {"model_type": "gpt2", **{k: v for k, v in asdict(config).items() if v is not None}, **overrides}


def write_model_folder(folder: Path, config: GPT2Config, seed: int = 0) -> Path:
    """config.json + model.safetensors of a random model, written without torch."""
    from safetensors.numpy import save_file

    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(config_dict(config)))
    save_file(random_state_dict(config, seed), folder / "model.safetensors")
    return folder


def decode_with_cache(model, prompts, steps, rng, fwd_hooks=()):
    """Logits [steps + 1][batch, vocab] of a cached, left-padded run fed random next tokens,
    and the token sequences fed."""
    from minigpt.generate import left_pad

    tokens, mask = left_pad(prompts)
    hooks = model.hook_points(fwd_hooks)
    cache = model.new_cache(len(prompts), tokens.shape[1] + steps)
    out = [model.forward(tokens, hooks, attention_mask=mask, cache=cache, last_only=True)[:, -1]]
    seqs = [list(p) for p in prompts]
    for _ in range(steps):
        new = rng.integers(0, model.config.vocab_size, len(prompts))
        for seq, t in zip(seqs, new):
            seq.append(int(t))
        out.append(model.forward(new[:, None], hooks, cache=cache, last_only=True)[:, -1])
    return out, seqs


# ---------------------------------------------------------------------------------------------
# A tokenizer built by hand (no reference library, no outside data)


def handmade_tokenizer():
    """256 byte tokens, merges that build ' the', 'ab', 'abab', then <|endoftext|>: 262 tokens."""
    from minigpt.tokenizer import EOT, Tokenizer, byte_alphabet

    vocab = {ch: i for i, ch in enumerate(byte_alphabet())}
    merges = [("Ġ", "t"), ("h", "e"), ("Ġt", "he"), ("a", "b"), ("ab", "ab")]
    for a, b in merges:
        vocab[a + b] = len(vocab)
    vocab[EOT] = len(vocab)
    return Tokenizer(vocab, merges)


def write_tokenizer_files(folder: Path, tokenizer) -> Path:
    """vocab.json + merges.txt in GPT-2's layout."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps(tokenizer.vocab, ensure_ascii=False), encoding="utf-8")
    merges = sorted(tokenizer.ranks, key=tokenizer.ranks.get)
    (folder / "merges.txt").write_text("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges),
                                       encoding="utf-8")
    return folder


# ---------------------------------------------------------------------------------------------
# Parity tolerance, for logits, hidden states and every hook:
#
#     |minigpt - reference| <= TOL * (1 + max |reference| along the last axis)
#
# Both sides compute in float32 on identical weights and differ only in summation order (BLAS
# blocking, fused kernels). The rounding error of a dot product is a few ulps of the *sum of its
# terms' sizes*, not of its result, so an element near zero in a vector of large ones (a logit of
# 0.005 beside logits of 8) carries an error of the large ones' size: an elementwise rtol would
# fail it, and a bound relative to the vector's scale is the honest one. TOL = 1e-4 is ~800
# float32 ulps (eps = 1.2e-7); a wrong formula is far outside it (erf-GELU for tanh-GELU moves
# activations by up to 5e-4, a missing 1/sqrt(d_head) or an unbiased variance by percent). The
# largest differences actually seen, absolute and scaled, are printed at the end of the run.

TOL = 1e-4


def scaled_error(ours, ref) -> float:
    """max |ours - ref| / (1 + max |ref| along the last axis): the quantity bounded by TOL."""
    diff = np.abs(ours.astype(np.float64) - ref)
    scale = 1.0 + np.abs(ref).max(axis=-1, keepdims=True)
    return float((diff / scale).max()) if diff.size else 0.0


def assert_close(ours, ref, what):
    assert ours.dtype == np.float32, f"{what}: {ours.dtype}"
    assert ours.shape == ref.shape, f"{what}: shape {ours.shape}, reference {ref.shape}"
    err = scaled_error(ours, ref)
    assert err <= TOL, f"{what}: scaled error {err:.3e} > {TOL:.0e} (max abs {max_abs(ours, ref):.3e})"
    return err


def max_abs(a, b):
    return float(np.max(np.abs(a.astype(np.float64) - b))) if a.size else 0.0


def assert_same_argmax(logits, ref_logits):
    """The argmax agrees wherever the reference's top two are further apart than twice the tolerance."""
    top2 = np.sort(ref_logits, axis=-1)[..., -2:]
    margin = 2 * TOL * (1 + np.abs(ref_logits).max(axis=-1))
    clear = (top2[..., 1] - top2[..., 0]) > margin
    assert (logits.argmax(-1) == ref_logits.argmax(-1))[clear].all()


# ---------------------------------------------------------------------------------------------
# Parity figures: per case, the examples run and the largest differences seen, printed at the end
# of the run as a Markdown table (and written to $MINIGPT_PARITY_REPORT as JSON when set), so
# that they can be quoted rather than guessed.

PARITY: dict[str, dict[str, float]] = {}
FIGURES = ("logits", "hidden_states", "hooks", "scaled")  # max |diff|, and max scaled error


def record_parity(case: str, **diffs: float) -> None:
    """Count one example of `case`; keep the largest of each figure in FIGURES."""
    row = PARITY.setdefault(case, {"examples": 0})
    row["examples"] += 1
    for key, value in diffs.items():
        assert key in FIGURES, key
        row[key] = max(row.get(key, 0.0), float(value))


def pytest_terminal_summary(terminalreporter):
    if not PARITY:
        return
    tr = terminalreporter
    tr.section("parity with transformers")
    tr.write_line("| case | examples | max abs: logits | hidden_states | hooks | max scaled error |")
    tr.write_line("|---|---|---|---|---|---|")
    for case, row in PARITY.items():
        cells = [f"{row[k]:.1e}" if k in row else "-" for k in FIGURES]
        tr.write_line(f"| {case} | {row['examples']} | " + " | ".join(cells) + " |")
    if os.environ.get("MINIGPT_PARITY_REPORT"):
        Path(os.environ["MINIGPT_PARITY_REPORT"]).write_text(json.dumps(PARITY, indent=2))


def pytest_collection_modifyitems(config, items):
    """docs/walkthrough.md runs as a doctest (pyproject: --doctest-glob). Its last steps read a
    held-out book from the shared corpora: where MINIGPT_CORPORA is unset it skips, saying so; in
    CI (.ci/run sets it) it always runs."""
    if os.environ.get("MINIGPT_CORPORA"):
        return
    skip = pytest.mark.skip(reason="MINIGPT_CORPORA is not set: the walkthrough reads a held-out book "
                                   "from the shared corpora (.ci/run sets it to ../shared/corpora)")
    for item in items:
        if item.path.name == "walkthrough.md":
            item.add_marker(skip)
