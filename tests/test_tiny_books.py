"""The small GPT-2 shipped in weights/tiny-books: it loads by its short name from an installed
package, its tokenizer round-trips the books, minigpt computes what transformers computes on it,
and steering it does what the model card says."""

import json
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest

import minigpt
from conftest import assert_close, max_abs, record_parity
from minigpt.checkpoints import SHIPPED, held_out_chunks

FOLDER = SHIPPED["tiny-books"]
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def tiny():
    return minigpt.load("tiny-books")


def test_the_folder_is_a_small_float16_hugging_face_checkpoint_with_its_card():
    names = sorted(p.name for p in FOLDER.iterdir())
    assert names == ["README.md", "config.json", "generation_config.json", "merges.txt", "model.safetensors",
                     "training.json", "vocab.json"]
    assert sum(p.stat().st_size for p in FOLDER.iterdir()) < 25e6
    header_len = int.from_bytes((FOLDER / "model.safetensors").read_bytes()[:8], "little")
    header = json.loads((FOLDER / "model.safetensors").read_bytes()[8:8 + header_len])
    assert {t["dtype"] for name, t in header.items() if name != "__metadata__"} == {"F16"}
    stats = json.loads((FOLDER / "training.json").read_text())
    card = (FOLDER / "README.md").read_text()
    for figure in (f"{stats['validation_loss']:.3f}", f"{stats['validation_perplexity']:.1f}", f"{stats['steps']:,}"):
        assert figure in card, f"the model card does not state {figure} from training.json"


def test_loads_by_short_name_outside_the_checkout(tmp_path):
    """From another folder (no weights/ beside it), as an installed package would."""
    script = ("import minigpt; m, t = minigpt.load('tiny-books'); "
              "print(m.config.n_layer, m.config.n_embd, m.config.vocab_size, len(t.encode('The whale')))")
    out = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True, check=True)
    config = json.loads((FOLDER / "config.json").read_text())
    assert out.stdout.split()[:3] == [str(config["n_layer"]), str(config["n_embd"]), str(config["vocab_size"])]


def test_a_built_wheel_carries_every_module_and_the_checkpoint(tmp_path):
    """`pip install .` (not only -e) must ship every module of both packages (subpackages
    included) and weights/tiny-books as minigpt/checkpoints/."""
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                    str(tmp_path), str(ROOT)], check=True, capture_output=True)
    (wheel,) = tmp_path.glob("*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for p in FOLDER.iterdir():
        assert f"minigpt/checkpoints/tiny-books/{p.name}" in names
    assert "minigpt/checkpoints/__init__.py" in names
    modules = [p.relative_to(ROOT).as_posix() for package in ("minigpt", "actadd") for p in (ROOT / package).rglob("*.py")]
    assert "actadd/experiments/generation.py" in modules
    assert [m for m in modules if m not in names] == []


def test_tokenizer_round_trips_the_books_and_matches_tokenizers(tiny, corpora_dir, tok_reference):
    _, tok = tiny
    hf = tok_reference.hf_tokenizer(FOLDER)
    texts = [p.read_text(encoding="utf-8") for p in sorted((corpora_dir / "gutenberg").glob("*.txt"))]
    texts.append((corpora_dir / "tinyshakespeare" / "input.txt").read_text(encoding="utf-8"))
    total = 0
    for text in texts:
        ids = tok.encode(text)
        assert tok.decode(ids) == text
        assert ids == hf.encode(text).ids
        total += len(ids)
    assert total > 1_000_000


def test_logits_and_hidden_states_match_transformers(tiny, reference):
    model, tok = tiny
    text = "Call me Ishmael. Some years ago, never mind how long precisely, I thought I would sail about."
    tokens = np.array([[tok.bos_token_id] + tok.encode(text)])
    ref_logits, ref_hidden, _ = reference.reference_run(FOLDER, tokens)
    logits, cache = model.run_with_cache(tokens, names=lambda n: n.endswith("hook_resid_pre"))
    scaled = assert_close(logits, ref_logits, "logits")
    for L in range(model.config.n_layer):
        assert_close(cache[f"blocks.{L}.hook_resid_pre"], ref_hidden[L], f"hidden_states[{L}]")
    assert (logits.argmax(-1) == ref_logits.argmax(-1)).all()
    record_parity("shipped tiny-books (float16 file)", logits=max_abs(logits, ref_logits),
                  hidden_states=max(max_abs(cache[f"blocks.{L}.hook_resid_pre"], ref_hidden[L])
                                    for L in range(model.config.n_layer)), scaled=scaled)


# ---------------------------------------------------------------------------------------------
# Steering behaviour, with fixed seeds. The vector is the walkthrough's and the README's.

PLUS, MINUS, LAYER = "whale", "", 0
CONTROL_WORDS = ["door", "lady", "king", "said", "night", "money", "mother", "city", "house", "letter"]
SEA_WORDS = ["whale", "whales", "sea", "seas", "ship", "ships", "boat", "boats", "captain", "harpoon",
             "water", "waves", "ocean", "deck", "sail", "sails", "sailor", "sailors", "shore"]


def test_a_gentle_whale_vector_raises_held_out_moby_dick(tiny, corpora_dir):
    """Coefficient 1 at layer 0: the mean log-prob of held-out Moby Dick rises, that of Pride and
    Prejudice falls. Noise, measured two ways: the standard error of the shift over the 40
    chunks (measured 0.0044 against a shift of 0.031), and ten control x-vectors (a common word
    minus nothing, same layer and coefficient), whose shifts on Moby Dick were -0.009 to +0.010.
    The test asks for > 0.02, > 4 standard errors, and 0.01 above every control."""
    from actadd import steering_vector, x_vector
    from actadd import measure

    model, tok = tiny
    moby, pride = (held_out_chunks(tok, corpora_dir / "gutenberg" / b) for b in ("pg2701.txt", "pg1342.txt"))

    def shift(word, texts):
        result = measure.logprob_shift(model, texts, steering_vector(model, x_vector(tok, word, MINUS, 1.0, LAYER)))
        per_chunk = np.array([(s - u)[~m].mean() for u, s, m in zip(result.unsteered, result.steered, result.masked)])
        return result.summary()["all"]["mean_logprob_diff"], per_chunk.std(ddof=1) / np.sqrt(len(per_chunk))

    on_topic, se = shift(PLUS, moby)
    assert on_topic > 0.02 and on_topic > 4 * se, (on_topic, se)
    assert shift(PLUS, pride)[0] < 0
    controls = [shift(w, moby)[0] for w in CONTROL_WORDS]
    assert on_topic > max(controls) + 0.01, (on_topic, controls)


def test_the_whale_vector_fills_completions_with_sea_words(tiny):
    """Coefficient 4 at layer 0 (the README's command), 100 completions of 40 tokens after "In
    the morning we", sampled as in the paper from seeds 0-9 (10 each), steered and unsteered.
    Measured: 0.02 sea words per completion unsteered, 1.05 steered (+1.03); the seed-to-seed standard
    deviation of the per-seed difference was 0.53 per completion (standard error 0.17 over ten
    seeds). The test asks for a difference > 0.5 per completion and > 3 standard errors."""
    from actadd import steering_vector, x_vector
    from actadd import measure

    model, tok = tiny
    vector = steering_vector(model, x_vector(tok, PLUS, MINUS, 4.0, LAYER))
    counts = measure.topic_counts(model, tok, "In the morning we", vector, SEA_WORDS, seeds=range(10), n=10,
                                  max_new_tokens=40)
    per_seed = np.array([(s["steered"] - s["unsteered"]) / 10 for s in counts["per_seed"]])
    difference = counts["steered_per_completion"] - counts["unsteered_per_completion"]
    assert difference > 0.5 and difference > 3 * per_seed.std(ddof=1) / np.sqrt(len(per_seed)), (difference, per_seed)


def test_the_held_out_split_is_the_end_of_the_text_from_a_line_break(tiny, tmp_path):
    from minigpt.checkpoints import split_held_out

    text = "".join(f"line {i} of a book\n" for i in range(1000))
    train, held = split_held_out(text)
    assert train + held == text and train.endswith("\n") and 0.04 < len(held) / len(text) <= 0.06
    _, tok = tiny
    path = tmp_path / "book.txt"
    path.write_text(text, encoding="utf-8")
    chunks = held_out_chunks(tok, path, n=16, count=3)
    assert [len(ids) for _, ids in chunks] == [17] * 3 and all(ids[0] == tok.bos_token_id for _, ids in chunks)
    assert tok.decode(sum((ids[1:] for _, ids in chunks), [])) in held
    with pytest.raises(ValueError, match="fewer than 1000 chunks of 16"):
        held_out_chunks(tok, path, n=16, count=1000)
