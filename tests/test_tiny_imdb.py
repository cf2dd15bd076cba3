"""The small GPT-2 of movie reviews shipped in weights/tiny-imdb, and the sentiment claim on it:
its tokenizer is tokenizers', its dev split is the one the card and the search name, and the
vector docs/sentiment.md chose turns continuations of negative reviews positive, as it measured
on 1,000 test reviews. (What every shipped checkpoint must be, loading and parity with
transformers included: test_shipped.py.)"""

import json

import pytest

import minigpt
from actadd.experiments import data, generation
from minigpt.checkpoints import SHIPPED, imdb_dev

FOLDER = SHIPPED["tiny-imdb"]


@pytest.fixture(scope="module")
def tiny():
    return minigpt.load("tiny-imdb")


def test_the_card_names_its_data_its_citation_and_its_dev_split():
    stats = json.loads((FOLDER / "training.json").read_text())
    card = (FOLDER / "README.md").read_text()
    assert stats["corpus"] == "imdb" and "Maas" in card and "imdb_dev" in card
    assert f"{stats['data']['dev']:,} labelled training reviews" in card


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
