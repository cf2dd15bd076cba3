"""The small GPT-2 of movie reviews shipped in weights/tiny-imdb, and the sentiment claim on it:
it loads by its short name, minigpt computes what transformers computes on it, its dev split is
the one the card and the search name, and the vector docs/sentiment.md chose turns
continuations of negative reviews positive, as it measured on 1,000 test reviews."""

import json
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest

import minigpt
from actadd.experiments import data, generation
from conftest import assert_close, max_abs, record_parity
from minigpt.checkpoints import FOLDER as CHECKPOINTS
from minigpt.checkpoints import SHIPPED, imdb_dev

FOLDER = SHIPPED["tiny-imdb"]
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def tiny():
    return minigpt.load("tiny-imdb")


def test_the_folder_is_a_float16_hugging_face_checkpoint_with_its_card():
    names = sorted(p.name for p in FOLDER.iterdir())
    assert names == ["README.md", "config.json", "generation_config.json", "merges.txt", "model.safetensors",
                     "training.json", "vocab.json"]
    header_len = int.from_bytes((FOLDER / "model.safetensors").read_bytes()[:8], "little")
    header = json.loads((FOLDER / "model.safetensors").read_bytes()[8:8 + header_len])
    assert {t["dtype"] for name, t in header.items() if name != "__metadata__"} == {"F16"}
    stats = json.loads((FOLDER / "training.json").read_text())
    card = (FOLDER / "README.md").read_text()
    assert stats["corpus"] == "imdb" and "Maas" in card
    for figure in (f"{stats['validation_loss']:.3f}", f"{stats['validation_perplexity']:.1f}", f"{stats['steps']:,}",
                   f"{stats['data']['dev']:,}"):
        assert figure in card, f"the model card does not state {figure} from training.json"


def test_the_shipped_files_stay_under_the_packages_budget():
    """The issue's bound: the package under ~40 MB installed; the checkpoints are nearly all of it."""
    shipped = sum(p.stat().st_size for p in CHECKPOINTS.rglob("*") if p.is_file() and "__pycache__" not in p.parts)
    code = sum(p.stat().st_size for package in ("minigpt", "actadd") for p in (ROOT / package).rglob("*.py"))
    assert shipped + code < 40e6, (shipped, code)


def test_loads_by_short_name_outside_the_checkout(tmp_path):
    script = ("import minigpt; m, t = minigpt.load('tiny-imdb'); "
              "print(m.config.n_layer, m.config.n_embd, m.config.vocab_size, t.decode(t.encode('A great film.')))")
    out = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True, check=True)
    config = json.loads((FOLDER / "config.json").read_text())
    assert out.stdout.split()[:3] == [str(config["n_layer"]), str(config["n_embd"]), str(config["vocab_size"])]
    assert out.stdout.strip().endswith("A great film.")


def test_a_built_wheel_carries_tiny_imdb_and_the_classifier(tmp_path):
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                    str(tmp_path), str(ROOT)], check=True, capture_output=True)
    (wheel,) = tmp_path.glob("*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for folder in ("tiny-imdb", "imdb-sentiment"):
        for p in (CHECKPOINTS / folder).iterdir():
            assert f"minigpt/checkpoints/{folder}/{p.name}" in names


def test_logits_and_hidden_states_match_transformers(tiny, reference):
    model, tok = tiny
    text = "I rented this movie last night.\nThe acting was wooden and the plot made no sense at all, but the music"
    tokens = np.array([[tok.bos_token_id] + tok.encode(text)])
    ref_logits, ref_hidden, _ = reference.reference_run(FOLDER, tokens)
    logits, cache = model.run_with_cache(tokens, names=lambda n: n.endswith("hook_resid_pre"))
    scaled = assert_close(logits, ref_logits, "logits")
    for L in range(model.config.n_layer):
        assert_close(cache[f"blocks.{L}.hook_resid_pre"], ref_hidden[L], f"hidden_states[{L}]")
    assert (logits.argmax(-1) == ref_logits.argmax(-1)).all()
    record_parity("shipped tiny-imdb (float16 file)", logits=max_abs(logits, ref_logits),
                  hidden_states=max(max_abs(cache[f"blocks.{L}.hook_resid_pre"], ref_hidden[L])
                                    for L in range(model.config.n_layer)), scaled=scaled)


def test_the_tokenizer_matches_tokenizers_on_reviews(tiny, tok_reference):
    _, tok = tiny
    hf = tok_reference.hf_tokenizer(FOLDER)
    for text in ["I loved it!!! 10/10\n\nWould watch again.", "Don't bother: it's the worst film of 2006 -- avoid.",
                 "Café, naïve, über  —  “quoted” <br /> text"]:
        ids = tok.encode(text)
        assert ids == hf.encode(text).ids and tok.decode(ids) == text


# ---------------------------------------------------------------------------------------------
# The dev split and the data options


def test_the_dev_split_is_every_twentieth_labelled_training_review():
    assert imdb_dev("train/neg/0") and imdb_dev("train/pos/12480") and imdb_dev("train/neg/20")
    assert not imdb_dev("train/neg/21") and not imdb_dev("test/neg/0") and not imdb_dev("train/unsup/40")


def test_the_dev_split_of_the_shared_corpus_is_the_cards(corpora_dir):
    with open(corpora_dir / "imdb" / "train.jsonl", encoding="utf-8") as f:
        ids = [json.loads(line)["id"] for line in f]
    dev = [i for i in ids if imdb_dev(i)]
    stats = json.loads((FOLDER / "training.json").read_text())
    assert len(dev) == stats["data"]["dev"] == 982
    assert sum("/neg/" in i for i in dev) == 492


def test_html_breaks_make_line_breaks_where_asked(tmp_path):
    path = tmp_path / "r.jsonl"
    path.write_text(json.dumps({"text": "Bad.<br /><br />Really bad.<BR>End", "label": "neg"}) + "\n")
    assert data.read_labelled(path)[0].text == "Bad.<br /><br />Really bad.<BR>End"
    assert data.read_labelled(path, html_breaks=True)[0].text == "Bad.\n\nReally bad.\nEnd"


# ---------------------------------------------------------------------------------------------
# The sentiment claim. The setting is the one docs/sentiment.md chose on the dev split.

PLUS, MINUS = "This movie is wonderful, great and beautiful", "This movie is terrible, awful and boring"
LAYER, COEFF = 1, 16.0


def test_the_chosen_vector_turns_continuations_of_negative_reviews_positive(tiny, corpora_dir):
    """NegToPos on 120 IMDb test negatives the measurement did not use (the 1,001st to the
    1,120th), cut to 32 tokens, 32 new tokens, the paper's sampling, seed 0, scored by the
    shipped classifier. The full measurement (docs/sentiment.md, the first 1,000 negatives):
    success 0.438 unsteered, 0.629 steered, paired difference +0.191 with a per-prompt standard
    deviation of 0.65, so 120 prompts give a standard error of 0.059: a run of this size falls
    to zero or below with probability under 0.1% if the effect is what was measured. The test
    asks for a positive difference in success and in mean score, and perplexity within the
    issue's 1.25x of unsteered (measured 1.16x)."""
    model, tok = tiny
    reviews = data.read_labelled(corpora_dir / "imdb" / "test.jsonl", html_breaks=True)
    negatives = [p for p in reviews if p.label == "negative"][1000:1120]
    assert len(negatives) == 120
    run = generation.sentiment(model, tok, negatives, None, layer=LAYER, coeff=COEFF, plus=PLUS, minus=MINUS,
                               max_new_tokens=32, scorer="imdb", progress=False)
    cells = {c["condition"]: c for c in run.summary["conditions"]}
    steered, unsteered = cells["steered"], cells["unsteered"]
    assert steered["success"]["n"] == unsteered["success"]["n"] == 120
    assert steered["vs_unsteered"]["success"]["value"] > 0, (unsteered["success"], steered["success"])
    assert steered["vs_unsteered"]["mean_score"]["value"] > 0
    assert steered["perplexity"]["value"] < 1.25 * unsteered["perplexity"]["value"]
