"""`minigpt next`: the README's main command, on the committed fixture checkpoint."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from minigpt import GPT2
from minigpt.cli import main

FIXTURE = str(Path(__file__).parent / "fixtures" / "tiny-gpt2")


def parse_table(text):
    rows = [line.split() for line in text.splitlines() if line.strip()[:1].isdigit()]
    return [(int(r[1]), float(r[2]), float(r[3])) for r in rows]


def test_next_prints_the_most_likely_tokens_with_their_probabilities(capsys):
    assert main(["next", "--model", FIXTURE, "--ids", "5", "17", "99", "--top-k", "4"]) == 0
    rows = parse_table(capsys.readouterr().out)
    logits = GPT2.from_pretrained(FIXTURE)([5, 17, 99])[0, -1].astype(np.float64)
    probs = np.exp(logits - logits.max())
    probs /= probs.sum()
    expected = np.argsort(-logits)[:4]
    assert [r[0] for r in rows] == expected.tolist()
    np.testing.assert_allclose([r[1] for r in rows], logits[expected], atol=1e-3)
    np.testing.assert_allclose([r[2] for r in rows], probs[expected], atol=1e-4)


def test_python_dash_m_runs_the_same_command():
    out = subprocess.run([sys.executable, "-m", "minigpt", "next", "--model", FIXTURE, "--ids", "5", "17", "99",
                          "--top-k", "4"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert len(parse_table(out.stdout)) == 4


def test_errors_go_to_stderr_with_exit_status_2(capsys):
    assert main(["next", "--model", FIXTURE, "--ids", "5", "128"]) == 2
    assert "token id 128 at batch row 0, position 1 is outside the vocabulary [0, 128)" in capsys.readouterr().err
    assert main(["next", "--model", "./no/such/folder", "--ids", "1"]) == 2
    assert "no such folder" in capsys.readouterr().err
    with pytest.raises(SystemExit) as info:
        main(["next", "--model", FIXTURE, "--ids", "1", "--top-k", "0"])
    assert info.value.code == 2
