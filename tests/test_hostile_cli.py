"""Hostile command lines: an output that is a file, under a file or not writable, a data file,
scorer, API key, pairs file or vector file that is wrong. Each is exit 2 with one line naming the
option and the path, before the model is loaded (the model given here does not exist, so a
command that loaded it first would say so instead), and nothing is left on disk."""

import pytest

from actadd.cli import main
from actadd.experiments import generation
from actadd.output import OutputError
from hostile import bounded

NO_MODEL = "/no/such/model-folder"           # loading it fails at once: an error about it means it was loaded first


@pytest.fixture()
def places(tmp_path):
    (tmp_path / "a-file").write_text("x")
    (tmp_path / "pairs.tsv").write_text("The whale\tThe horse\n")
    (tmp_path / "texts.tsv").write_text("a dull film\t0\n")
    (tmp_path / "prompts.txt").write_text("The captain said\n")
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "a.txt").write_text("The whale rose.")
    return tmp_path


def outputs(t):
    """(argv without --out/--save, the option that names the output, the path kind) per command."""
    vector = ["--plus", "whale", "--layer", "0", "--coeff", "1"]
    return [
        (["steer", "--model", NO_MODEL, "--prompt", "In the morning we", "--minus", "", *vector], "--save", "file"),
        (["sweep", "--model", NO_MODEL, "--plus", "whale", "--layers", "0", "--coeffs", "1", "--prompt", "x"], "--out", "folder"),
        (["eval", "topic", "--model", NO_MODEL], "--out", "folder"),
        (["eval", "sentiment", "--model", NO_MODEL, "--data", str(t / "texts.tsv"), "--layer", "0", "--coeff", "1"],
         "--out", "folder"),
        (["eval", "toxicity", "--model", NO_MODEL, "--data", str(t / "prompts.txt"), "--layer", "0", "--coeff", "1"],
         "--out", "folder"),
        (["eval", "relevance", "--model", NO_MODEL, "--data", str(t / "docs")], "--out", "folder"),
        (["eval", "overhead", "--model", NO_MODEL], "--out", "folder"),
        (["paper", "--model", NO_MODEL], "--out", "folder"),
        (["pairs", "--model", NO_MODEL, "--pairs", str(t / "pairs.tsv"), "--layer", "0", "--coeff", "1",
          "--prompt", "x", "--topic", " sea"], "--out", "folder"),
        (["calibrate", "--model", NO_MODEL, "--plus", "whale", "--prompt", "x"], "--out", "folder"),
        (["lens", "--model", NO_MODEL, *vector], "--out", "folder"),
    ]


BAD_PLACES = {"a file": ("a-file", "a file, not a folder"), "under a file": ("a-file/sub/out", "a-file is a file, so"),
              "not writable": ("/sys/actadd-test/out", "/sys cannot be written")}


@pytest.mark.parametrize("bad", sorted(BAD_PLACES))
@pytest.mark.parametrize("command", range(11))
def test_an_output_that_cannot_be_written_is_refused_before_loading(places, capsys, command, bad):
    argv, option, kind = outputs(places)[command]
    name, message = BAD_PLACES[bad]
    target = places / name if not name.startswith("/") else name
    if kind == "file":
        target = f"{target}.safetensors"                   # --save names its format by its suffix
    if kind == "file" and bad == "a file":                  # where a file is wanted, a folder stands
        (places / "taken.safetensors").mkdir()
        target, message = places / "taken.safetensors", "a folder, not a file"
    outcome, _, _ = bounded(main, argv + [option, str(target)])
    assert outcome == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"actadd: error: {option}") and message in err and "\n" not in err, err
    assert NO_MODEL not in err
    left = sorted(p.name for p in places.iterdir() if p.name != "taken.safetensors")
    assert left == ["a-file", "docs", "pairs.tsv", "prompts.txt", "texts.tsv"]        # nothing made


@pytest.mark.parametrize("extra,message", [
    (["eval", "sentiment", "--data", "MISSING", "--layer", "0", "--coeff", "1"], "MISSING: no such file or folder"),
    (["eval", "sentiment", "--data", "texts.tsv", "--layer", "0", "--coeff", "1", "--scorer", "nope"],
     "unknown scorer 'nope'"),
    (["eval", "sentiment", "--data", "texts.tsv", "--layer", "0", "--coeff", "1", "--scorer", "profanity"],
     "the 'profanity' scorer measures toxicity, not sentiment"),
    (["eval", "toxicity", "--data", "prompts.txt", "--layer", "0", "--coeff", "1", "--scorer", "perspective"],
     "needs an API key in the environment variable PERSPECTIVE_API_KEY"),
    (["eval", "toxicity", "--data", "docs", "--layer", "0", "--coeff", "1"], "no such file (a folder)"),
    (["eval", "relevance", "--data", "MISSING"],
     "MISSING: no such file or folder (docs/data.md: what each experiment reads and where to get it)"),
    (["steer", "--prompt", "x", "--pairs", "MISSING", "--layer", "0", "--coeff", "1"], "no such pairs file"),
    (["steer", "--prompt", "x", "--vector", "MISSING.safetensors"], "--vector MISSING.safetensors: no such file"),
    (["steer", "--prompt", "x", "--plus", "a", "--minus", "", "--layer", "0,x", "--coeff", "1"], "--layer: 'x' is not"),
    (["logprobs", "--plus", "a", "--layer", "0", "--coeff", "1", "--corpus", "MISSING"], "MISSING: no such file"),
    (["pairs", "--pairs", "pairs.tsv", "--layer", "0", "--coeff", "1", "--corpus", "MISSING", "--out", "o"],
     "MISSING: no such file"),
    (["paper", "--out", "o", "--sentiment-data", "MISSING"], "MISSING: no such file or folder"),
    (["paper", "--out", "o", "--sentiment-data", "texts.tsv", "--sentiment-scorer", "profanity"],
     "the 'profanity' scorer measures toxicity, not sentiment"),
    (["paper", "--out", "o", "--toxicity-data", "prompts.txt"],          # v5's scorer: Perspective, no key here
     "needs an API key in the environment variable PERSPECTIVE_API_KEY"),
    (["paper", "--out", "o", "--sentiment-model", "tiny-imdb"], "--sentiment-model is for sentiment and toxicity "
     "runs: it needs --sentiment-data"),
    (["paper", "--out", "o", "--toxicity-data", "MISSING", "--toxicity-scorer", "profanity"], "MISSING"),
])
def test_inputs_are_checked_before_the_model_is_loaded(places, capsys, monkeypatch, extra, message):
    monkeypatch.chdir(places)
    monkeypatch.delenv("PERSPECTIVE_API_KEY", raising=False)
    argv = extra[:2] + ["--model", NO_MODEL] + extra[2:] if extra[0] == "eval" else extra[:1] + ["--model", NO_MODEL] + extra[1:]
    if extra[0] == "eval":
        argv += ["--out", "o"]
    outcome, _, _ = bounded(main, argv)
    assert outcome == 2
    err = capsys.readouterr().err.strip()
    assert message in err and NO_MODEL not in err and "\n" not in err, err
    assert not (places / "o").exists()


def test_the_api_refuses_an_output_folder_before_any_work(tmp_path):
    (tmp_path / "a-file").write_text("x")

    class Unusable:                                       # a model that would fail the moment it is used
        def __getattr__(self, name):
            raise AssertionError(f"the model was used ({name}) before the output was checked")
    with pytest.raises(OutputError, match="out .*a-file: a file, not a folder"):
        generation.topic(Unusable(), None, tmp_path / "a-file", progress=False)
    with pytest.raises(OutputError, match="out .*a-file is a file"):
        generation.toxicity(Unusable(), None, [], tmp_path / "a-file" / "x", layer=0, coeff=1.0, scorer="profanity",
                            progress=False)


@pytest.mark.parametrize("command", range(11))
def test_every_command_that_loads_a_model_checks_its_weight_policy(places, capsys, command):
    argv, option, _ = outputs(places)[command]
    with pytest.raises(SystemExit) as exit_:
        main(argv + [option, str(places / "out"), "--weights", "half"])
    assert exit_.value.code == 2
    assert "argument --weights: invalid choice: 'half'" in capsys.readouterr().err
