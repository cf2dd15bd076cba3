"""`minigpt next` (the README's main command) and `minigpt.load`."""

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import minigpt
from conftest import handmade_tokenizer, write_model_folder, write_tokenizer_files
from minigpt import GPT2, CheckpointError, GPT2Config
from minigpt.cli import main

FIXTURE = str(Path(__file__).parent / "fixtures" / "tiny-gpt2")  # model only, no tokenizer files
TOKENIZER = handmade_tokenizer()  # 262 tokens


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """A model and its tokenizer in one folder, as on the hub."""
    folder = tmp_path_factory.mktemp("model-and-tokenizer")
    write_model_folder(folder, GPT2Config(n_layer=2, n_head=2, n_embd=16, n_positions=16, vocab_size=262), seed=4)
    return write_tokenizer_files(folder, TOKENIZER)


def parse_table(text):
    rows = [line.split() for line in text.splitlines() if line.strip()[:1].isdigit()]
    return [(int(r[1]), float(r[-2]), float(r[-1])) for r in rows]


def expected_top(model, ids, k):
    logits = model(ids)[0, -1].astype(np.float64)
    probs = np.exp(logits - logits.max())
    probs /= probs.sum()
    order = np.argsort(-logits)[:k]
    return order.tolist(), logits[order], probs[order]


def test_load_gives_the_model_and_tokenizer_of_one_folder(folder):
    model, tok = minigpt.load(folder)
    assert isinstance(model, GPT2) and tok.vocab == TOKENIZER.vocab and tok.ranks == TOKENIZER.ranks


def test_load_refuses_a_tokenizer_larger_than_the_model_vocabulary(tmp_path):
    write_model_folder(tmp_path, GPT2Config(n_layer=1, n_head=1, n_embd=4, n_positions=4, vocab_size=200))
    write_tokenizer_files(tmp_path, TOKENIZER)
    with pytest.raises(CheckpointError, match="the tokenizer has 262 tokens but the model's vocab_size is 200"):
        minigpt.load(tmp_path)


def test_next_takes_text_and_prints_tokens_with_probabilities(folder, capsys):
    assert main(["next", " the abab", "--model", str(folder), "--top-k", "4"]) == 0    # the old spelling of --rows
    out, err = capsys.readouterr()
    assert err == "minigpt next: --top-k is deprecated and goes in the next release; use --rows\n"
    ids = TOKENIZER.encode(" the abab")
    assert f"prompt ids: {ids}" in out and "prompt tokens: ' the' ' ' 'abab'" in out
    rows = parse_table(out)
    order, logits, probs = expected_top(GPT2.from_pretrained(folder), ids, 4)
    assert main(["next", " the abab", "--model", str(folder), "--rows", "4", "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["prompt_ids"] == ids and [r["id"] for r in printed["rows"]] == order
    np.testing.assert_allclose([r["prob"] for r in printed["rows"]], probs, atol=1e-4)
    assert [r[0] for r in rows] == order
    np.testing.assert_allclose([r[1] for r in rows], logits, atol=1e-3)
    np.testing.assert_allclose([r[2] for r in rows], probs, atol=1e-4)


def test_bos_prepends_end_of_text(folder, capsys):
    assert main(["next", "ab", "--bos", "--model", str(folder)]) == 0
    assert f"prompt ids: {[TOKENIZER.bos_token_id] + TOKENIZER.encode('ab')}" in capsys.readouterr().out


def test_ids_work_without_tokenizer_files(capsys):
    assert main(["next", "--model", FIXTURE, "--ids", "5", "17", "99", "--rows", "4"]) == 0
    out = capsys.readouterr().out
    assert "prompt tokens" not in out
    assert [r[0] for r in parse_table(out)] == expected_top(GPT2.from_pretrained(FIXTURE), [5, 17, 99], 4)[0]


def test_python_dash_m_runs_the_same_command(folder):
    out = subprocess.run([sys.executable, "-m", "minigpt", "next", "the", "--model", str(folder), "--rows", "3"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert len(parse_table(out.stdout)) == 3


def test_errors_go_to_stderr_with_exit_status_2(folder, capsys):
    assert main(["next", "--model", FIXTURE, "--ids", "5", "128"]) == 2
    assert "token id 128 at batch row 0, position 1 is outside the vocabulary [0, 128)" in capsys.readouterr().err
    assert main(["next", "hello", "--model", FIXTURE]) == 2
    assert "no vocab.json" in capsys.readouterr().err
    assert main(["next", "--bos", "--model", FIXTURE, "--ids", "1"]) == 2
    assert "--bos needs the tokenizer files" in capsys.readouterr().err
    assert main(["next", "<|endoftext|>", "--model", str(folder)]) == 2
    assert "special token" in capsys.readouterr().err
    assert main(["next", "x", "--model", "./no/such/folder"]) == 2
    assert "no such folder" in capsys.readouterr().err
    for argv in (["next", "x", "--ids", "1"], ["next"], ["next", "x", "--rows", "0"]):
        with pytest.raises(SystemExit) as info:
            main(argv + ["--model", str(folder)])
        assert info.value.code == 2


def test_ctrl_c_in_minigpt_is_one_line_and_status_130(monkeypatch, capsys):
    """Before: a KeyboardInterrupt traceback; after: `minigpt: interrupted`, exit status 130."""
    import minigpt.cli

    def stop(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(minigpt.cli, "_generate", stop)
    assert minigpt.cli.main(["generate", "hello", "--model", "tiny-books"]) == 130
    assert capsys.readouterr().err.strip() == "minigpt: interrupted"


@pytest.mark.parametrize("prog,command", [
    ("actadd", ["steer"]), ("actadd", ["logprobs"]), ("actadd", ["nexttoken"]), ("actadd", ["sweep"]),
    ("actadd", ["pairs"]), ("actadd", ["calibrate"]), ("actadd", ["lens"]), ("actadd", ["serve"]),
    ("actadd", ["eval", "topic"]), ("actadd", ["eval", "sentiment"]), ("actadd", ["eval", "toxicity"]),
    ("actadd", ["eval", "relevance"]), ("actadd", ["eval", "knowledge"]), ("actadd", ["paper"]),
    ("minigpt", ["next"]), ("minigpt", ["generate"]),
])
def test_every_model_flag_defaults_to_the_shipped_offline_model(prog, command, capsys):
    """Before: gpt2 (a download) for steer, sweep, logprobs, nexttoken, pairs, calibrate and
    lens, tiny-books for serve, required for eval, paper and minigpt. `reproduce` keeps gpt2-xl:
    its numbers are gpt2-xl's; `eval overhead` takes --model or --shape."""
    import actadd.cli

    cli = actadd.cli if prog == "actadd" else minigpt.cli
    with pytest.raises(SystemExit):
        cli.main([*command, "--help"])
    text = " ".join(capsys.readouterr().out.split())
    text = re.sub(r"(\w)- (\w)", r"\1-\2", text)                # argparse may wrap a line after a hyphen
    assert "tiny-books (the default)" in text or "(default tiny-books)" in text, text
    assert "smollm2-135m" in text and "gemma3-270m" in text         # the installed models are named too
