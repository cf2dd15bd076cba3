"""LLaMA against transformers' LlamaForCausalLM on random checkpoints the tests write with
save_pretrained (grouped-query ratios 1, 2, 4, rope_theta, "llama3" scaling on and off, tied and
untied, biases, left-padded batches): logits, every hidden state, cached decoding, greedy
generation, ActAdd against a forward pre-hook; config.json as transformers 4.x and 5.x write it;
refusals."""

import re

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import actadd
import minigpt
from conftest import assert_close, decode_with_cache, max_abs, record_parity
from minigpt import ConfigError, Llama, LlamaConfig
from minigpt.generate import left_pad

LLAMA3 = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
          "original_max_position_embeddings": 16}


@st.composite
def llama_configs(draw):
    kv = draw(st.integers(1, 2))
    heads = kv * draw(st.sampled_from([1, 2, 4]))
    d_head = draw(st.sampled_from([2, 4, 8]))
    return dict(vocab_size=draw(st.integers(8, 80)), hidden_size=heads * d_head, num_attention_heads=heads,
                num_key_value_heads=kv, intermediate_size=draw(st.integers(4, 40)),
                num_hidden_layers=draw(st.integers(1, 3)), max_position_embeddings=draw(st.integers(16, 40)),
                rope_theta=draw(st.sampled_from([10000.0, 500000.0])),
                rope_scaling=draw(st.sampled_from([None, LLAMA3])), tie_word_embeddings=draw(st.booleans()),
                attention_bias=draw(st.booleans()), rms_norm_eps=draw(st.sampled_from([1e-5, 1e-6])))


def write_llama(reference, folder, fields, seed=0):
    import torch

    tf = reference.transformers
    torch.manual_seed(seed)
    if fields.get("rope_scaling"):        # transformers writes rope_theta into the dict it is given
        fields = {**fields, "rope_scaling": dict(fields["rope_scaling"])}
    model = tf.LlamaForCausalLM(tf.LlamaConfig(**fields)).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.normal_(1.0 if "norm" in name else 0.0, 0.3)
    model.save_pretrained(folder)
    return tf.LlamaForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()


def positions(mask):
    """The position ids transformers' generate makes from a left-padded mask."""
    return np.maximum(mask.cumsum(axis=1) - 1, 0)


@settings(max_examples=25, deadline=None)
@given(fields=llama_configs(), seed=st.integers(0, 2**16), rows=st.integers(1, 3))
def test_logits_and_hidden_states_equal_transformers(reference, tmp_path_factory, fields, seed, rows):
    import torch

    folder = tmp_path_factory.mktemp("llama")
    hf = write_llama(reference, folder, fields, seed)
    model = minigpt.from_pretrained(folder)
    assert isinstance(model, Llama)
    rng = np.random.default_rng(seed)
    prompts = [rng.integers(0, fields["vocab_size"], rng.integers(1, 13)).tolist() for _ in range(rows)]
    tokens, mask = left_pad(prompts)
    with torch.no_grad():
        out = hf(torch.tensor(tokens), attention_mask=torch.tensor(mask), position_ids=torch.tensor(positions(mask)),
                 output_hidden_states=True)
    logits, cache = model.run_with_cache(tokens, attention_mask=mask)
    real = mask.astype(bool)
    assert list(cache) == model.hook_names and all(a.dtype == np.float32 for a in cache.values())
    n = fields["num_hidden_layers"]
    final = cache["ln_final.hook_normalized"] * model.norm["weight"]
    pairs = [(cache[f"blocks.{L}.hook_resid_pre"][real], out.hidden_states[L].numpy()[real]) for L in range(n)]
    pairs.append((final[real], out.hidden_states[n].numpy()[real]))
    scaled = [assert_close(logits[real], out.logits.numpy()[real], "logits")]
    scaled += [assert_close(ours, ref, f"hidden_states[{i}]") for i, (ours, ref) in enumerate(pairs)]
    record_parity("LLaMA vs transformers: hypothesis (GQA 1/2/4, rope_theta, llama3 scaling, tied/untied, padding)",
                  logits=max_abs(logits[real], out.logits.numpy()[real]),
                  hidden_states=max(max_abs(a, b) for a, b in pairs), scaled=max(scaled))


FIELDS = dict(vocab_size=64, hidden_size=32, num_attention_heads=4, num_key_value_heads=2, intermediate_size=40,
              num_hidden_layers=3, max_position_embeddings=48, rope_theta=500000.0, rope_scaling=LLAMA3,
              tie_word_embeddings=False)


def test_cached_decoding_equals_recompute_and_greedy_equals_generate(reference, tmp_path):
    import torch

    hf = write_llama(reference, tmp_path, FIELDS, seed=3)
    model = Llama.from_pretrained(tmp_path)
    rng = np.random.default_rng(0)
    prompts = [rng.integers(0, 64, n).tolist() for n in (5, 9, 2)]
    cached, seqs = decode_with_cache(model, prompts, 6, rng)
    full_tokens, full_mask = left_pad(seqs)
    full = model(full_tokens, attention_mask=full_mask)
    for step, logits in enumerate(cached):
        np.testing.assert_allclose(logits, full[:, full_tokens.shape[1] - 7 + step], rtol=0, atol=1e-4)
    tokens, mask = left_pad(prompts)
    ours = minigpt.generate(model, prompts, max_new_tokens=8, temperature=0.0)
    with torch.no_grad():
        ref = hf.generate(torch.tensor(tokens), attention_mask=torch.tensor(mask), max_new_tokens=8, do_sample=False,
                          eos_token_id=None, pad_token_id=0, min_new_tokens=8)
    assert ours.tokens == ref[:, tokens.shape[1]:].tolist()


def test_actadd_on_llama_equals_a_forward_pre_hook(reference, tmp_path):
    hf = write_llama(reference, tmp_path, FIELDS, seed=5)
    model = Llama.from_pretrained(tmp_path)
    plus, minus, prompt, layer, coeff = [1, 17, 9], [1, 30, 31], [1, 5, 6, 7, 8, 9, 10], 2, 2.0
    vector = actadd.steering_vector(model, [actadd.ActivationAddition(tuple(plus), coeff, layer),
                                            actadd.ActivationAddition(tuple(minus), -coeff, layer)])
    ref = reference.pre_hook_actadd_logits(hf, hf.model.layers, [(plus, coeff), (minus, -coeff)], layer, prompt)
    ours = model.run_with_hooks(prompt, vector.hooks(len(prompt)))[0]
    assert np.abs(ours - model(prompt)[0]).max() > 1e-2
    err = assert_close(ours, ref, "steered LLaMA logits")
    record_parity("actadd on LLaMA vs a forward pre-hook", logits=max_abs(ours, ref), scaled=err)


def test_rotary_hooks_and_the_mlp_hooks_mean_what_transformerlens_says(reference, tmp_path):
    """hook_rot_q/k are q/k rotated; at position 0 rotation is the identity; hook_pre is the gate,
    hook_pre_linear the up projection, hook_post silu(gate) * up; RMSNorm's normalized is x / scale."""
    write_llama(reference, tmp_path, FIELDS, seed=1)
    model = Llama.from_pretrained(tmp_path)
    _, cache = model.run_with_cache([3, 4, 5, 6])
    b = "blocks.1."
    np.testing.assert_array_equal(cache[b + "attn.hook_rot_q"][:, 0], cache[b + "attn.hook_q"][:, 0])
    assert cache[b + "attn.hook_rot_k"].shape == (1, 4, 2, 8) and cache[b + "attn.hook_q"].shape == (1, 4, 4, 8)
    norms = np.linalg.norm(cache[b + "attn.hook_rot_q"], axis=-1)
    np.testing.assert_allclose(norms, np.linalg.norm(cache[b + "attn.hook_q"], axis=-1), rtol=1e-5)
    gate, up = cache[b + "mlp.hook_pre"].astype(np.float64), cache[b + "mlp.hook_pre_linear"].astype(np.float64)
    np.testing.assert_allclose(cache[b + "mlp.hook_post"], gate / (1 + np.exp(-gate)) * up, rtol=1e-5, atol=1e-6)
    x = cache[b + "hook_resid_pre"].astype(np.float64)
    scale = np.sqrt((x ** 2).mean(-1, keepdims=True) + 1e-6)
    np.testing.assert_allclose(cache[b + "ln1.hook_scale"], scale, rtol=1e-5)
    np.testing.assert_allclose(cache[b + "ln1.hook_normalized"], x / scale, rtol=1e-5, atol=1e-6)


def test_config_as_transformers_4_and_5_write_it_and_refusals():
    base = {"model_type": "llama", "vocab_size": 10, "hidden_size": 8, "intermediate_size": 8, "num_hidden_layers": 1,
            "num_attention_heads": 2, "num_key_value_heads": 1, "max_position_embeddings": 64}
    v4 = LlamaConfig.from_dict({**base, "rope_theta": 500000.0, "rope_scaling": {**LLAMA3, "type": "llama3"}})
    v5 = LlamaConfig.from_dict({**base, "rope_parameters": {**LLAMA3, "rope_theta": 500000.0}})
    assert v4 == v5 and v5.rope_scaling.factor == 8.0 and v5.rope_theta == 500000.0
    plain = LlamaConfig.from_dict({**base, "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0}})
    assert plain.rope_scaling is None and plain.rope_theta == 10000.0
    for change, match in (({"hidden_act": "gelu"}, 'hidden_act: "gelu" is not supported'),
                          ({"rope_parameters": {"rope_type": "yarn", "factor": 4.0}},
                           'rope_parameters.rope_type: "yarn" is not supported'),
                          ({"num_key_value_heads": 3}, "num_key_value_heads: 3 does not divide num_attention_heads=2"),
                          ({"rope_scaling": {"rope_type": "llama3", "factor": 8.0}}, "needs low_freq_factor")):
        with pytest.raises(ConfigError, match=match):
            LlamaConfig.from_dict({**base, **change})


def test_fields_left_out_mean_transformers_defaults(reference):
    """A config.json without rms_norm_eps, rope_theta or num_key_value_heads means what
    transformers' LlamaConfig assumes (a wrong eps moved logits by 6% of their scale)."""
    hf = reference.transformers.LlamaConfig()
    ours = LlamaConfig.from_dict({"model_type": "llama", "vocab_size": 10, "hidden_size": 8, "intermediate_size": 8,
                                  "num_hidden_layers": 1, "num_attention_heads": 2})
    assert (ours.rms_norm_eps, ours.rope_theta, ours.num_key_value_heads, ours.max_position_embeddings,
            ours.tie_word_embeddings) == (hf.rms_norm_eps, hf.rope_parameters["rope_theta"], 2,
                                          hf.max_position_embeddings, hf.tie_word_embeddings)


def test_inverse_frequencies_equal_transformers_llama3_scaling(reference):
    import torch

    from minigpt.llama import inverse_frequencies

    cfg = reference.transformers.LlamaConfig(hidden_size=256, num_attention_heads=2, rope_theta=500000.0,
                                             rope_scaling={**LLAMA3, "original_max_position_embeddings": 8192})
    assert "rope_theta" not in LLAMA3
    ref, _ = reference.transformers.modeling_rope_utils.ROPE_INIT_FUNCTIONS["llama3"](cfg, torch.device("cpu"))
    ours = inverse_frequencies(LlamaConfig(hidden_size=256, num_attention_heads=2, num_key_value_heads=2,
                                           rope_theta=500000.0, rope_scaling=minigpt.llama.RopeScaling(8.0, 1.0, 4.0, 8192)))
    np.testing.assert_allclose(ours, ref.numpy(), rtol=1e-6)
    assert not np.allclose(ours, 1 / 500000.0 ** (np.arange(0, 128, 2) / 128))   # the scaling changed some


def test_lazy_weights_give_the_float32_policys_floats_with_half_the_memory(reference, tmp_path):
    """A bfloat16 file: weights="lazy" keeps the matrices as bfloat16 views of the mapped file and
    widens each block's when it runs; its logits are bit-equal to weights="float32"'s."""
    import torch

    from minigpt.weights import HalfTensor

    hf = write_llama(reference, tmp_path / "f32", FIELDS, seed=8)
    hf.to(torch.bfloat16).save_pretrained(tmp_path / "bf16")
    eager = minigpt.from_pretrained(tmp_path / "bf16", weights="float32")
    lazy = minigpt.from_pretrained(tmp_path / "bf16", weights="lazy")
    auto = minigpt.from_pretrained(tmp_path / "bf16")                   # a small model: float32
    assert lazy.lazy_weights and not eager.lazy_weights and not auto.lazy_weights
    held = sum(t.nbytes for t in lazy.state_dict().values())
    assert held < 0.51 * sum(t.nbytes for t in eager.state_dict().values())
    assert isinstance(lazy.layers[0]["mlp"]["up_proj"]["weight"], HalfTensor)
    prompts = [[1, 5, 9, 2], [7, 7]]
    tokens, mask = left_pad(prompts)
    assert np.array_equal(lazy(tokens, attention_mask=mask), eager(tokens, attention_mask=mask))
    assert lazy(tokens, attention_mask=mask).dtype == np.float32
    # steering and generation work on it unchanged, and the vector file's weights hash agrees
    vector = actadd.steering_vector(lazy, [actadd.ActivationAddition((1, 5), 2.0, 1)])
    ref_vector = actadd.steering_vector(eager, [actadd.ActivationAddition((1, 5), 2.0, 1)])
    assert np.array_equal(vector.activations[0], ref_vector.activations[0])
    assert actadd.weights_hash(lazy) == actadd.weights_hash(eager)
    assert minigpt.generate(lazy, prompts, max_new_tokens=5, temperature=0).tokens == \
        minigpt.generate(eager, prompts, max_new_tokens=5, temperature=0).tokens
    with pytest.raises(ValueError, match="weights='half': expected one of"):
        minigpt.from_pretrained(tmp_path / "bf16", weights="half")


def test_lazy_prefill_of_the_llama_3_2_1b_shape_stays_within_the_file(tmp_path):
    """A random bfloat16 checkpoint of Llama-3.2-1B's shape (2.47 GB): a fresh process loads it with
    weights="lazy" and runs a 16-token prefill. Bound held: its peak RSS is at most the file (all of
    whose pages a pass touches) + 0.5 GB, the tied unembedding included (it is multiplied a slab
    at a time, never widened whole: 1.05 GB in float32); float32 weights alone would be 4.9 GB."""
    import subprocess
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
    from bench_lazy import write_checkpoint

    size = write_checkpoint(tmp_path, "llama-3.2-1b")
    child = ("import sys, numpy as np, minigpt\n"
             "m = minigpt.from_pretrained(sys.argv[1], weights='lazy')\n"
             "assert m.lazy_weights\n"
             "assert np.isfinite(m(np.arange(1, 17)[None], last_only=True)).all()\n"
             "print(int(next(l for l in open('/proc/self/status') if l.startswith('VmHWM')).split()[1]) * 1024)\n")
    peak = int(subprocess.run([sys.executable, "-c", child, str(tmp_path)], capture_output=True, text=True,
                              check=True).stdout.split()[-1])
    print(f"lazy prefill, Llama-3.2-1B shape: peak RSS {peak / 1e9:.2f} GB; file {size / 1e9:.2f} GB")
    assert peak <= size + 0.5e9


def test_every_command_that_loads_a_model_takes_the_weight_policy(reference, tmp_path, monkeypatch, capsys):
    """--weights on the command lines reaches from_pretrained (the policy each load asked for is
    recorded), and lazy and float32 print the same tokens: LLaMA greedy, GPT-2 sampled."""
    import torch

    from actadd.cli import main as actadd_main
    from minigpt.cli import main as minigpt_main

    hf = write_llama(reference, tmp_path / "f32", FIELDS, seed=4)
    hf.to(torch.bfloat16).save_pretrained(tmp_path / "bf16")
    asked = []
    original = Llama.from_pretrained.__func__

    def spy(cls, *args, **kwargs):
        asked.append(kwargs.get("weights", "auto"))
        return original(cls, *args, **kwargs)
    monkeypatch.setattr(Llama, "from_pretrained", classmethod(spy))
    printed = {}
    for policy in ("lazy", "float32"):
        assert minigpt_main(["next", "--model", str(tmp_path / "bf16"), "--ids", "1", "5", "9", "--weights", policy,
                             "--top-k", "5"]) == 0
        printed[policy] = capsys.readouterr().out.split("\nweights ")[0]           # the memory line differs
    assert asked == ["lazy", "float32"] and printed["lazy"].replace(", weights='lazy'", "") == printed["float32"]
    assert "rank" in printed["lazy"]
    assert minigpt_main(["next", "--model", str(tmp_path / "bf16"), "--ids", "1", "5", "--rows", "3"]) == 0
    assert asked[-1] == "auto"                                           # not given: the family's default
    capsys.readouterr()
    steered = {}
    for policy in ("lazy", "float32"):                                   # GPT-2 (tiny-books is float16)
        assert actadd_main(["steer", "--model", "tiny-books", "--prompt", "In the morning we", "--plus", "whale",
                            "--minus", "", "--layer", "0", "--coeff", "4", "--max-new-tokens", "8",
                            "--weights", policy]) == 0
        steered[policy] = capsys.readouterr().out
    memory = {p: out.rstrip().rsplit("\n", 1) for p, out in steered.items()}   # (the text, the memory line)
    assert "weights='lazy') from tiny-books" in memory["lazy"][0] and "weights='lazy'" not in memory["float32"][0]
    assert memory["lazy"][0].replace(", weights='lazy'", "") == memory["float32"][0] and "steered #2" in memory["lazy"][0]
    assert re.fullmatch(r"weights lazy: 9 MB of float16/bfloat16 matrices read from the mapped file a slab at a "
                        r"time; peak resident memory [\d.]+ [MG]B", memory["lazy"][1])
    assert re.fullmatch(r"weights float32; peak resident memory [\d.]+ [MG]B", memory["float32"][1])
