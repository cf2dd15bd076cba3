"""Every checkpoint shipped in weights/ (minigpt.checkpoints.SHIPPED) and the classifier beside
them: float16 Hugging Face folders whose cards state their training figures, loadable by short
name from an installed copy, carried by a built wheel with every module, within the package's
size budget, and computing what transformers computes on them. What each model is for is
tested in test_tiny_books.py and test_tiny_imdb.py."""

import json
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest

import minigpt
from conftest import assert_close, max_abs, record_parity
from minigpt.checkpoints import FOLDER as CHECKPOINTS
from minigpt.checkpoints import SHIPPED

ROOT = Path(__file__).resolve().parents[1]
TEXTS = {  # a text of each model's kind, for parity
    "tiny-books": "Call me Ishmael. Some years ago, never mind how long precisely, I thought I would sail about.",
    "tiny-imdb": "I rented this movie last night.\nThe acting was wooden and the plot made no sense at all, but the music",
}
CLASSIFIERS = ("imdb-sentiment", "toxicity-davidson")


def test_every_shipped_model_has_a_parity_text():
    assert sorted(SHIPPED) == sorted(TEXTS)


@pytest.mark.parametrize("name", sorted(SHIPPED))
def test_a_float16_hugging_face_folder_whose_card_states_its_figures(name):
    folder = SHIPPED[name]
    assert sorted(p.name for p in folder.iterdir()) == [
        "README.md", "config.json", "generation_config.json", "merges.txt", "model.safetensors", "training.json",
        "vocab.json"]
    header_len = int.from_bytes((folder / "model.safetensors").read_bytes()[:8], "little")
    header = json.loads((folder / "model.safetensors").read_bytes()[8:8 + header_len])
    assert {t["dtype"] for key, t in header.items() if key != "__metadata__"} == {"F16"}
    stats = json.loads((folder / "training.json").read_text())
    card = (folder / "README.md").read_text()
    figures = [f"{stats['validation_loss']:.3f}", f"{stats['validation_perplexity']:.1f}", f"{stats['steps']:,}",
               f"{stats['train_seconds'] / 60:.1f} minutes"]
    assert [f for f in figures if f not in card] == [], "the model card does not state these from training.json"


def test_the_shipped_files_stay_under_the_packages_budget():
    """The package under ~40 MB installed; the checkpoints are nearly all of it (37.0 MB with
    tiny-imdb and the classifier)."""
    shipped = sum(p.stat().st_size for p in CHECKPOINTS.rglob("*") if p.is_file() and "__pycache__" not in p.parts)
    code = sum(p.stat().st_size for package in ("minigpt", "actadd") for p in (ROOT / package).rglob("*.py"))
    assert shipped + code < 40e6, (shipped, code)


@pytest.mark.parametrize("name", sorted(SHIPPED))
def test_loads_by_short_name_outside_the_checkout(name, tmp_path):
    """From another folder (no weights/ beside it), as an installed package would."""
    script = (f"import minigpt; m, t = minigpt.load({name!r}); "
              "print(m.config.n_layer, m.config.n_embd, m.config.vocab_size, t.decode(t.encode('A great film.')))")
    out = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True, check=True)
    config = json.loads((SHIPPED[name] / "config.json").read_text())
    assert out.stdout.split()[:3] == [str(config["n_layer"]), str(config["n_embd"]), str(config["vocab_size"])]
    assert out.stdout.strip().endswith("A great film.")


def test_a_built_wheel_carries_every_module_every_checkpoint_and_the_classifiers(tmp_path):
    """`pip install .` (not only -e) must ship every module of both packages (subpackages
    included), every folder of weights/ that ships, as minigpt/checkpoints/, and the serve page."""
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                    str(tmp_path), str(ROOT)], check=True, capture_output=True)
    (wheel,) = tmp_path.glob("*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for folder in [*SHIPPED.values(), *(CHECKPOINTS / c for c in CLASSIFIERS)]:
        missing = [p.name for p in folder.iterdir() if f"minigpt/checkpoints/{folder.name}/{p.name}" not in names]
        assert missing == [], folder.name
    assert "minigpt/checkpoints/__init__.py" in names
    modules = [p.relative_to(ROOT).as_posix() for package in ("minigpt", "actadd") for p in (ROOT / package).rglob("*.py")]
    assert "actadd/experiments/generation.py" in modules
    assert [m for m in modules if m not in names] == []
    assert "actadd/static/serve.html" in names                           # actadd serve's page


@pytest.mark.parametrize("name", sorted(SHIPPED))
def test_logits_and_hidden_states_match_transformers(name, reference):
    model, tok = minigpt.load(name)
    tokens = np.array([[tok.bos_token_id] + tok.encode(TEXTS[name])])
    ref_logits, ref_hidden, _ = reference.reference_run(SHIPPED[name], tokens)
    logits, cache = model.run_with_cache(tokens, names=lambda n: n.endswith("hook_resid_pre"))
    scaled = assert_close(logits, ref_logits, "logits")
    for L in range(model.config.n_layer):
        assert_close(cache[f"blocks.{L}.hook_resid_pre"], ref_hidden[L], f"hidden_states[{L}]")
    assert (logits.argmax(-1) == ref_logits.argmax(-1)).all()
    record_parity(f"shipped {name} (float16 file)", logits=max_abs(logits, ref_logits),
                  hidden_states=max(max_abs(cache[f"blocks.{L}.hook_resid_pre"], ref_hidden[L])
                                    for L in range(model.config.n_layer)), scaled=scaled)
