"""OPT against transformers' OPTForCausalLM on random checkpoints the tests write with
save_pretrained (pre- and post-LayerNorm, with and without the 350m-style projection, tied and
untied, left-padded batches): logits, every hidden state, cached decoding, greedy generation,
ActAdd against forward pre-hooks; loading by model_type; bad checkpoints and configs."""

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import actadd
import minigpt
from conftest import assert_close, decode_with_cache, max_abs, record_parity
from minigpt import OPT, ConfigError, CheckpointError, OPTConfig
from minigpt.generate import left_pad


@st.composite
def opt_configs(draw):
    heads = draw(st.integers(1, 3))
    hidden = heads * draw(st.integers(2, 8))
    return dict(vocab_size=draw(st.integers(8, 80)), hidden_size=hidden, num_hidden_layers=draw(st.integers(1, 3)),
                num_attention_heads=heads, ffn_dim=draw(st.integers(4, 48)),
                max_position_embeddings=draw(st.integers(8, 24)),
                word_embed_proj_dim=draw(st.sampled_from([hidden, max(2, hidden // 2)])),
                do_layer_norm_before=draw(st.booleans()), tie_word_embeddings=draw(st.booleans()))


def write_opt(reference, folder, fields, seed=0, dtype="float32"):
    """An OPTForCausalLM with every parameter random (sd 0.3 around LayerNorm gains of 1),
    written by transformers."""
    import torch

    tf = reference.transformers
    config = tf.OPTConfig(**fields, pad_token_id=1, bos_token_id=2, eos_token_id=2)
    torch.manual_seed(seed)
    model = tf.OPTForCausalLM(config).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.normal_(1.0 if "layer_norm.weight" in name else 0.0, 0.3)
    model.save_pretrained(folder)
    return tf.OPTForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()


def batch(rng, vocab, rows, length):
    """Left-padded rows of random lengths 1..length (pad id 1, as OPT's tokenizer pads)."""
    prompts = [rng.integers(0, vocab, rng.integers(1, length + 1)).tolist() for _ in range(rows)]
    tokens, mask = left_pad(prompts, pad_id=1)
    return prompts, tokens, mask


@settings(max_examples=25, deadline=None)
@given(fields=opt_configs(), seed=st.integers(0, 2**16), rows=st.integers(1, 3))
def test_logits_and_hidden_states_equal_transformers(reference, tmp_path_factory, fields, seed, rows):
    import torch

    folder = tmp_path_factory.mktemp("opt")
    hf = write_opt(reference, folder, fields, seed)
    model = minigpt.from_pretrained(folder)
    assert isinstance(model, OPT)
    rng = np.random.default_rng(seed)
    _, tokens, mask = batch(rng, fields["vocab_size"], rows, fields["max_position_embeddings"])
    with torch.no_grad():
        out = hf(torch.tensor(tokens), attention_mask=torch.tensor(mask), output_hidden_states=True)
    logits, cache = model.run_with_cache(tokens, attention_mask=mask)
    real = mask.astype(bool)
    assert logits.dtype == np.float32 and all(a.dtype == np.float32 for a in cache.values())
    scaled = [assert_close(logits[real], out.logits.numpy()[real], "logits")]
    worst = {"logits": max_abs(logits[real], out.logits.numpy()[real])}
    n = fields["num_hidden_layers"]
    hidden = [cache[f"blocks.{L}.hook_resid_pre"] for L in range(n)]
    # the last hidden state is the decoder's output: final LayerNorm (pre-LN models), project_out
    final = cache[f"blocks.{n - 1}.hook_resid_post"]
    if model.final_layer_norm is not None:
        final = cache["ln_final.hook_normalized"] * model.final_layer_norm["weight"] + model.final_layer_norm["bias"]
    if model.project_out is not None:
        final = final @ model.project_out.T
    assert len(out.hidden_states) == n + 1
    pairs = [(ours[real], ref.numpy()[real]) for ours, ref in zip(hidden + [final], out.hidden_states)]
    scaled += [assert_close(ours, ref, f"hidden_states[{i}]") for i, (ours, ref) in enumerate(pairs)]
    worst["hidden_states"] = max(max_abs(ours, ref) for ours, ref in pairs)
    record_parity("OPT vs transformers: hypothesis (pre/post-LN, projection, tied/untied, padding)", **worst,
                  scaled=max(scaled))


def test_cached_decoding_equals_recompute_and_greedy_equals_generate(reference, tmp_path):
    import torch

    fields = dict(vocab_size=50, hidden_size=16, num_hidden_layers=2, num_attention_heads=2, ffn_dim=24,
                  max_position_embeddings=40, word_embed_proj_dim=8, do_layer_norm_before=False,
                  tie_word_embeddings=True)
    hf = write_opt(reference, tmp_path, fields, seed=3)
    model = OPT.from_pretrained(tmp_path)
    rng = np.random.default_rng(0)
    prompts, tokens, mask = batch(rng, 50, 3, 10)
    cached, seqs = decode_with_cache(model, prompts, 6, rng)
    full_tokens, full_mask = left_pad(seqs, pad_id=1)
    full = model(full_tokens, attention_mask=full_mask)
    for step, logits in enumerate(cached):
        np.testing.assert_allclose(logits, full[:, full_tokens.shape[1] - 7 + step], rtol=0, atol=1e-5)
    ours = minigpt.generate(model, prompts, max_new_tokens=8, temperature=0.0)
    with torch.no_grad():
        ref = hf.generate(torch.tensor(tokens), attention_mask=torch.tensor(mask), max_new_tokens=8,
                          do_sample=False, eos_token_id=None, pad_token_id=1, min_new_tokens=8)
    assert ours.tokens == ref[:, tokens.shape[1]:].tolist()


def test_actadd_on_opt_equals_a_forward_pre_hook(reference, tmp_path):
    """The x-vector at blocks.L.hook_resid_pre is what a pre-hook on decoder layer L adds, with
    activations read from transformers' own hidden_states[L]."""
    fields = dict(vocab_size=60, hidden_size=24, num_hidden_layers=4, num_attention_heads=3, ffn_dim=32,
                  max_position_embeddings=32, word_embed_proj_dim=24, do_layer_norm_before=True,
                  tie_word_embeddings=False)
    hf = write_opt(reference, tmp_path, fields, seed=5)
    model = OPT.from_pretrained(tmp_path)
    plus, minus, prompt, layer, coeff = [2, 17, 9], [2, 30, 31], [2, 5, 6, 7, 8, 9, 10], 2, 3.0
    vector = actadd.steering_vector(model, [actadd.ActivationAddition(tuple(plus), coeff, layer),
                                            actadd.ActivationAddition(tuple(minus), -coeff, layer)])
    ref = reference.pre_hook_actadd_logits(hf, hf.model.decoder.layers, [(plus, coeff), (minus, -coeff)], layer, prompt)
    ours = model.run_with_hooks(prompt, vector.hooks(len(prompt)))[0]
    plain = model(prompt)[0]
    assert np.abs(ours - plain).max() > 1e-2                   # the steering does something
    err = assert_close(ours, ref, "steered OPT logits")
    record_parity("actadd on OPT vs a forward pre-hook", logits=max_abs(ours, ref), scaled=err)


def test_loading_picks_the_family_and_refuses_what_it_cannot_run(reference, tmp_path):
    fields = dict(vocab_size=40, hidden_size=8, num_hidden_layers=1, num_attention_heads=2, ffn_dim=8,
                  max_position_embeddings=16, word_embed_proj_dim=8, do_layer_norm_before=True,
                  tie_word_embeddings=True)
    write_opt(reference, tmp_path / "ok", fields)
    assert type(minigpt.from_pretrained(tmp_path / "ok")) is OPT
    raw = json.loads((tmp_path / "ok" / "config.json").read_text())
    for change, match in (({"model_type": "bloom"}, r'model_type: "bloom" is not supported \(minigpt runs "gpt2", "opt"'),
                          ({"activation_function": "gelu"}, r'activation_function: "gelu" is not supported'),
                          ({"enable_bias": False}, r"enable_bias: false is not supported"),
                          ({"layer_norm_elementwise_affine": False}, r"layer_norm_elementwise_affine: false"),
                          ({"hidden_size": 9}, r"num_attention_heads: 2 does not divide hidden_size=9")):
        bad = tmp_path / f"bad{len(match)}"
        bad.mkdir()
        (bad / "config.json").write_text(json.dumps({**raw, **change}))
        (bad / "model.safetensors").write_bytes((tmp_path / "ok" / "model.safetensors").read_bytes())
        with pytest.raises(ConfigError, match=match):
            minigpt.from_pretrained(bad)
    from safetensors.numpy import load_file, save_file

    tensors = load_file(tmp_path / "ok" / "model.safetensors")
    del tensors["model.decoder.layers.0.fc2.bias"]
    missing = tmp_path / "missing"
    missing.mkdir()
    (missing / "config.json").write_text(json.dumps(raw))
    save_file(tensors, missing / "model.safetensors")
    with pytest.raises(CheckpointError, match=r"missing tensor\(s\) 'layers.0.fc2.bias \(8,\)'"):
        minigpt.from_pretrained(missing)
    with pytest.raises(ConfigError, match="missing field"):
        OPTConfig.from_dict({"model_type": "opt", "hidden_size": 8})


# ---------------------------------------------------------------------------------------------
# OPT's tokenizer: GPT-2's byte-level BPE files with </s> as BOS


def write_opt_tokenizer(folder, config=True):
    """An OPT-style vocabulary (<s>, <pad>, </s>, <unk> at ids 0-3, no <|endoftext|>), merges
    that build ' the' and 'abab', and the tokenizer_config.json OPT's hub folders carry."""
    from minigpt.tokenizer import byte_alphabet

    vocab = {"<s>": 0, "<pad>": 1, "</s>": 2, "<unk>": 3}
    for ch in byte_alphabet():
        vocab[ch] = len(vocab)
    merges = [("Ġ", "t"), ("h", "e"), ("Ġt", "he"), ("a", "b"), ("ab", "ab")]
    for a, b in merges:
        vocab[a + b] = len(vocab)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    (folder / "merges.txt").write_text("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges), encoding="utf-8")
    if config:
        (folder / "tokenizer_config.json").write_text(json.dumps({
            "bos_token": "</s>", "eos_token": "</s>", "pad_token": "<pad>",
            "unk_token": "<unk>", "tokenizer_class": "GPT2Tokenizer", "add_bos_token": True}))
    return vocab


def test_opt_tokenizer_prepends_its_own_bos_as_transformers_does(reference, tmp_path):
    write_opt_tokenizer(tmp_path)
    tok = minigpt.Tokenizer.from_pretrained(tmp_path)
    assert tok.bos_token_id == 2 and tok.eos_token_id == 2 and set(tok.special_tokens) == {"</s>", "<pad>", "<unk>"}
    hf = reference.transformers.AutoTokenizer.from_pretrained(tmp_path)
    for text in ["the abab the", " a b  ab\nthe", "abba"]:
        assert actadd.tokens_with_bos(tok, text) == hf(text).input_ids      # [2, ...]: BOS </s> first
        assert tok.decode(tok.encode(text)) == text
    with pytest.raises(ValueError, match="special token '</s>'"):
        tok.encode("the </s> end")
    assert 2 not in tok.encode("the </s>", disallowed_special=())         # as ordinary text when asked
    # an x-vector pads with the space token of this vocabulary, and its BOS is </s>
    plus, minus = actadd.x_vector(tok, "the abab", "", 1.0, 0)
    assert plus.tokens[0] == minus.tokens[0] == 2 and minus.tokens[1:] == (tok.encode(" ")[0],) * (len(plus.tokens) - 1)


def test_a_tokenizer_without_bos_is_refused_where_a_bos_is_needed(tmp_path):
    write_opt_tokenizer(tmp_path, config=False)
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"eos_token": "</s>"}))
    tok = minigpt.Tokenizer.from_pretrained(tmp_path)
    assert tok.eos_token_id == 2
    with pytest.raises(minigpt.TokenizerError, match="no BOS token"):
        actadd.tokens_with_bos(tok, "the ab")
    # without any config the vocabulary must hold GPT-2's <|endoftext|>
    (tmp_path / "tokenizer_config.json").unlink()
    with pytest.raises(minigpt.TokenizerError, match=r"no '<\|endoftext\|>' token \(GPT-2's BOS and EOS\)"):
        minigpt.Tokenizer.from_pretrained(tmp_path)
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"bos_token": "<bos>"}))
    with pytest.raises(minigpt.TokenizerError, match=r"no '<bos>' token \(bos_token\)"):
        minigpt.Tokenizer.from_pretrained(tmp_path)
    # the older AddedToken form, {"content": ...}, in special_tokens_map.json
    (tmp_path / "tokenizer_config.json").unlink()
    (tmp_path / "special_tokens_map.json").write_text(json.dumps({"bos_token": {"content": "</s>", "lstrip": False}}))
    assert minigpt.Tokenizer.from_pretrained(tmp_path).bos_token_id == 2


def test_load_an_opt_folder_and_steer_it(reference, tmp_path):
    vocab = write_opt_tokenizer(tmp_path)
    fields = dict(vocab_size=len(vocab), hidden_size=16, num_hidden_layers=2, num_attention_heads=2, ffn_dim=24,
                  max_position_embeddings=40, word_embed_proj_dim=16, do_layer_norm_before=True,
                  tie_word_embeddings=True)
    write_opt(reference, tmp_path, fields, seed=2)
    model, tok = minigpt.load(tmp_path)
    assert isinstance(model, OPT) and tok.bos_token_id == 2
    result = actadd.generate(model, tok, "the abab the ab", actadd.steering_vector(
        model, actadd.x_vector(tok, "abab", "", 4.0, 1)), n=2, max_new_tokens=6)
    assert result.prompt_tokens[0] == 2 and result.steered != result.unsteered


@pytest.mark.parametrize("dtype, shard", [("float16", None), ("bfloat16", "20KB"), ("float32", "20KB")])
def test_half_precision_and_sharded_checkpoints(reference, tmp_path, dtype, shard):
    """float16 / bfloat16 files widened to float32 as transformers widens them, and sharded files
    (an index and several safetensors), give transformers' logits."""
    import torch

    fields = dict(vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, ffn_dim=64,
                  max_position_embeddings=24, word_embed_proj_dim=16, do_layer_norm_before=False,
                  tie_word_embeddings=False)
    hf = write_opt(reference, tmp_path / "f32", fields, seed=7)
    kwargs = {"max_shard_size": shard} if shard else {}
    hf.to(getattr(torch, dtype)).save_pretrained(tmp_path / "m", **kwargs)
    files = sorted(p.name for p in (tmp_path / "m").glob("*.safetensors"))
    assert (len(files) > 1) == bool(shard)
    ref_model = reference.transformers.OPTForCausalLM.from_pretrained(tmp_path / "m", dtype=torch.float32).eval()
    model = minigpt.from_pretrained(tmp_path / "m")
    ids = [[2, 5, 9, 33, 7, 1, 60]]
    with torch.no_grad():
        ref = ref_model(torch.tensor(ids)).logits.numpy()
    assert_close(model(ids), ref, f"{dtype} logits")


def test_a_post_layernorm_opt_has_no_final_layernorm_hook(reference, tmp_path):
    fields = dict(vocab_size=30, hidden_size=8, num_hidden_layers=1, num_attention_heads=2, ffn_dim=8,
                  max_position_embeddings=16, word_embed_proj_dim=8, do_layer_norm_before=False,
                  tie_word_embeddings=True)
    write_opt(reference, tmp_path, fields)
    model = minigpt.from_pretrained(tmp_path)
    assert not any(n.startswith("ln_final") for n in model.hook_names)
    with pytest.raises(ValueError, match="no such point .*post-LayerNorm"):
        model.run_with_hooks([2, 3], [("ln_final.hook_scale", lambda x, hook: None)])
