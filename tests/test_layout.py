"""Files written before actadd was split into the method and its experiments still read: vector
files (safetensors, GGUF) load to the arrays they held, and eval folders resume as finished runs
to the same bytes. tests/fixtures/make_before_move.py wrote them with actadd 0.1."""

import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

import actadd
import minigpt
from actadd.cli import main

FIXTURES = Path(__file__).resolve().parent / "fixtures"
BEFORE = FIXTURES / "before-0.2"
sys.path.insert(0, str(FIXTURES))
import make_before_move as made  # noqa: E402


@pytest.fixture(scope="module")
def books():
    return minigpt.load("tiny-books")


def test_vector_files_written_before_load_to_the_same_vectors(books):
    model, tok = books
    old = actadd.load(BEFORE / "whale.safetensors", model)
    new = actadd.steering_vector(model, actadd.x_vector(tok, "whale", "", 4.0, 0))
    assert old.additions == new.additions and old.alignment == new.alignment == "front"
    for a, b in zip(old.activations, new.activations):
        assert np.array_equal(a, b)
    pairs = actadd.read_pairs(FIXTURES.parent.parent / "docs" / "whale_sea_pairs.tsv")
    direction = actadd.mean_of_pairs(model, tok, pairs, 1.6, [2, 3, 4], reading="last", positions="all")
    for name in ("whale-sea-last.safetensors", "whale-sea-last.gguf"):
        old = actadd.load(BEFORE / name, model)
        assert (old.layers, old.positions, old.reading, old.coeff) == ((2, 3, 4), "all", "last", 1.6)
        for a, b in zip(old.directions, direction.directions):
            assert np.array_equal(a, b), name


@pytest.mark.parametrize("name", sorted(made.EVALS))
def test_eval_folders_written_before_resume_to_the_same_bytes(name, tmp_path, capsys):
    """The settings line must equal what this code writes (else the resume is refused), every
    record must read back, and the summaries made from them must be the old ones to the byte."""
    folder = tmp_path / name
    shutil.copytree(BEFORE / name, folder)
    data = tmp_path / "data"
    data.mkdir()
    args = [a for a in made.eval_args(name, data) if a != "--no-progress"]     # the progress line says what it did
    assert main(args + ["--out", str(folder)]) == 0
    said = capsys.readouterr().err
    assert "already in" in said and ("nothing left to generate" in said or name == "relevance"), said
    for file in ("results.jsonl", "summary.json", "summary.csv"):
        assert (folder / file).read_bytes() == (BEFORE / name / file).read_bytes(), file
