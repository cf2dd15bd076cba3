"""The small GPT-2 shipped in weights/tiny-books: its tokenizer round-trips the books, and
steering it does what the model card says. (What every shipped checkpoint must be, loading and
parity with transformers included: test_shipped.py.)"""


import numpy as np
import pytest

import minigpt
from minigpt.checkpoints import SHIPPED, held_out_chunks

FOLDER = SHIPPED["tiny-books"]


@pytest.fixture(scope="module")
def tiny():
    return minigpt.load("tiny-books")


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
