"""Test-only: the reference implementation (transformers' GPT2LMHeadModel, PyTorch on the CPU,
or on a CUDA GPU for the GPU backend's tests).

`write_checkpoint` makes real-format checkpoint folders (transformers' own `save_pretrained`,
or the hub's bare-name layout); `reference_run` runs transformers on such a folder and returns
its logits, `hidden_states`, and every activation under its TransformerLens name, read with
PyTorch module hooks, so that minigpt's hook points are compared one by one.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
import transformers
from safetensors.torch import save_file

from minigpt import GPT2Config

transformers.logging.set_verbosity_error()
torch.set_num_threads(1)  # tiny models: threads only add noise

TORCH_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
LAYOUTS = ("prefixed", "bare", "sharded")


def hf_config(config: GPT2Config) -> transformers.GPT2Config:
    return transformers.GPT2Config(
        n_layer=config.n_layer, n_head=config.n_head, n_embd=config.n_embd,
        n_positions=config.n_positions, vocab_size=config.vocab_size,
        layer_norm_epsilon=config.layer_norm_epsilon, n_inner=config.n_inner,
        activation_function=config.activation_function,
        bos_token_id=config.vocab_size - 1, eos_token_id=config.vocab_size - 1,
    )


def random_hf_model(config: GPT2Config, seed: int) -> transformers.GPT2LMHeadModel:
    """GPT-2 with every parameter random (LayerNorm gains around 1), so no term hides at 0 or 1."""
    model = transformers.GPT2LMHeadModel(hf_config(config)).eval()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            is_norm = ".ln_" in name
            std = 0.3 if is_norm or name.endswith("bias") else 0.1
            offset = 1.0 if is_norm and name.endswith("weight") else 0.0
            p.copy_(torch.randn(p.shape, generator=g) * std + offset)
    return model


def write_checkpoint(folder: Path, config: GPT2Config, seed: int = 0,
                     dtype: str = "float32", layout: str = "prefixed") -> None:
    """A random GPT-2 written in the given dtype and layout:

    prefixed: `save_pretrained` of transformers 5 (`transformer.h.0...`, no lm_head);
    bare:     the hub's `gpt2` layout (`h.0...`, plus the `attn.bias`/`attn.masked_bias` buffers);
    sharded:  `save_pretrained` split into several files with `model.safetensors.index.json`.
    """
    folder = Path(folder)
    model = random_hf_model(config, seed).to(TORCH_DTYPES[dtype])
    if layout == "prefixed":
        model.save_pretrained(folder)
    elif layout == "sharded":
        total = sum(p.numel() * p.element_size() for p in model.parameters())
        model.save_pretrained(folder, max_shard_size=max(total // 3, 1))
        assert (folder / "model.safetensors.index.json").is_file()
    elif layout == "bare":
        P = config.n_positions
        tensors = {k.removeprefix("transformer."): v.contiguous()
                   for k, v in model.state_dict().items() if not k.startswith("lm_head")}
        for i in range(config.n_layer):
            tensors[f"h.{i}.attn.bias"] = torch.tril(torch.ones(P, P)).view(1, 1, P, P)
            tensors[f"h.{i}.attn.masked_bias"] = torch.tensor(-1e4)
        folder.mkdir(parents=True, exist_ok=True)
        save_file(tensors, folder / "model.safetensors", metadata={"format": "pt"})
        model.config.save_pretrained(folder)
    else:
        raise ValueError(f"layout {layout!r} not in {LAYOUTS}")


def reference_run(folder: Path, tokens: np.ndarray, device: str = "cpu"):
    """(logits, hidden_states, activations by TransformerLens name) from transformers, float32,
    computed on `device` ("cpu", or "cuda")."""
    model = transformers.GPT2LMHeadModel.from_pretrained(
        folder, dtype=torch.float32, attn_implementation="eager").eval().to(device)
    cfg, tr = model.config, model.transformer
    H, eps = cfg.n_head, cfg.layer_norm_epsilon
    seen: dict[str, torch.Tensor] = {}

    def output_of(module, name):
        module.register_forward_hook(lambda m, i, o: seen.__setitem__(name, o[0] if isinstance(o, tuple) else o))

    def input_of(module, name):
        module.register_forward_pre_hook(lambda m, i: seen.__setitem__(name, i[0]))

    output_of(tr.wte, "hook_embed")
    output_of(tr.wpe, "hook_pos_embed")
    for L, block in enumerate(tr.h):
        b = f"blocks.{L}."
        output_of(block.attn.c_attn, b + "qkv")
        input_of(block.attn.c_proj, b + "z_flat")
        output_of(block.attn, b + "hook_attn_out")
        input_of(block.ln_2, b + "hook_resid_mid")
        output_of(block.mlp.c_fc, b + "mlp.hook_pre")
        output_of(block.mlp.act, b + "mlp.hook_post")
        output_of(block.mlp, b + "hook_mlp_out")
        output_of(block, b + "hook_resid_post")
    input_of(tr.ln_f, "ln_final.input")

    with torch.no_grad():
        out = model(torch.as_tensor(tokens, device=device), output_hidden_states=True, output_attentions=True)
        batch, seq = tokens.shape
        acts = {"hook_embed": seen["hook_embed"],
                "hook_pos_embed": seen["hook_pos_embed"].expand(batch, seq, -1)}

        def norm(prefix, x):  # TransformerLens's LayerNorm hooks: before gain and bias
            acts[prefix + ".hook_scale"] = (x.var(-1, unbiased=False, keepdim=True) + eps).sqrt()
            acts[prefix + ".hook_normalized"] = F.layer_norm(x, x.shape[-1:], eps=eps)

        for L in range(cfg.n_layer):
            b = f"blocks.{L}."
            acts[b + "hook_resid_pre"] = out.hidden_states[L]
            norm(b + "ln1", out.hidden_states[L])
            q, k, v = seen[b + "qkv"].split(cfg.n_embd, dim=-1)
            for name, t in (("q", q), ("k", k), ("v", v)):
                acts[b + f"attn.hook_{name}"] = t.reshape(batch, seq, H, -1)
            acts[b + "attn.hook_pattern"] = out.attentions[L]
            acts[b + "attn.hook_z"] = seen[b + "z_flat"].reshape(batch, seq, H, -1)
            acts[b + "hook_attn_out"] = seen[b + "hook_attn_out"]
            acts[b + "hook_resid_mid"] = seen[b + "hook_resid_mid"]
            norm(b + "ln2", seen[b + "hook_resid_mid"])
            for name in ("mlp.hook_pre", "mlp.hook_post", "hook_mlp_out", "hook_resid_post"):
                acts[b + name] = seen[b + name]
        norm("ln_final", seen["ln_final.input"])

    def to_np(t):
        return t.detach().cpu().numpy()

    return (to_np(out.logits), [to_np(h) for h in out.hidden_states],
            {name: to_np(t) for name, t in acts.items()})


def greedy_generate(folder: Path, prompts: list[list[int]], max_new_tokens: int, eos_token_id: int):
    """transformers' generate(do_sample=False) on left-padded prompts: each row's new tokens (up
    to and including eos), and the raw logits of every step, [steps][batch, vocab]."""
    model = transformers.GPT2LMHeadModel.from_pretrained(folder, dtype=torch.float32).eval()
    width = max(map(len, prompts))
    ids = torch.zeros((len(prompts), width), dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, p in enumerate(prompts):
        ids[i, width - len(p):] = torch.tensor(p)
        mask[i, width - len(p):] = 1
    with torch.no_grad():
        out = model.generate(input_ids=ids, attention_mask=mask, do_sample=False, max_new_tokens=max_new_tokens,
                             min_new_tokens=0, pad_token_id=0, eos_token_id=eos_token_id,
                             output_logits=True, return_dict_in_generate=True)
    rows = []
    for row in out.sequences[:, width:].tolist():
        rows.append(row[:row.index(eos_token_id) + 1] if eos_token_id in row else row)
    return rows, [step.numpy() for step in out.logits]


def original_actadd_logits(folder: Path, prompt: list[int], additions: list[tuple[list[int], float, int]],
                           alignment: str = "front") -> np.ndarray:
    """ActAdd as the original code (montemac/activation_additions) does it, written independently
    of minigpt with PyTorch forward pre-hooks on transformers' GPT-2 blocks: each addition's
    activations are coeff * hidden_states[layer] of its tokens on the clean model (hidden_states[L]
    is the residual stream entering block L), and each is added in place to the prompt's
    front/mid/back slice by its own hook, in order. Logits [pos, vocab] of the steered prompt."""
    model = transformers.GPT2LMHeadModel.from_pretrained(folder, dtype=torch.float32).eval()
    with torch.no_grad():
        acts = [(coeff * model(torch.tensor([tokens]), output_hidden_states=True).hidden_states[layer][0], layer)
                for tokens, coeff, layer in additions]

    def hook_for(activations):
        n = activations.shape[0]

        def pre_hook(module, args, kwargs):
            hidden = args[0] if args else kwargs["hidden_states"]          # [batch, pos, d_model]
            length = hidden.shape[1]
            assert length >= n
            if alignment == "front":
                span = slice(0, n)
            elif alignment == "mid":
                span = slice(length // 2 - n // 2, length // 2 - n // 2 + n)
            else:
                span = slice(length - n, length)
            hidden[:, span] = activations + hidden[:, span]
        return pre_hook

    handles = [model.transformer.h[layer].register_forward_pre_hook(hook_for(a), with_kwargs=True) for a, layer in acts]
    try:
        with torch.no_grad():
            return model(torch.tensor([prompt])).logits[0].numpy()
    finally:
        for h in handles:
            h.remove()


def pre_hook_actadd_logits(model, blocks, additions: list[tuple[list[int], float]], layer: int,
                           prompt: list[int]) -> np.ndarray:
    """ActAdd on any transformers causal LM, written with a forward pre-hook on decoder block
    `blocks[layer]`: each addition's coeff * hidden_states[layer] of its tokens (the input of that
    block, on the clean model) added to the prompt's first positions. Logits [pos, vocab]."""
    with torch.no_grad():
        acts = [coeff * model(torch.tensor([tokens]), output_hidden_states=True).hidden_states[layer][0]
                for tokens, coeff in additions]

    def pre_hook(module, args, kwargs):
        hidden = args[0] if args else kwargs["hidden_states"]
        for a in acts:
            hidden[:, :len(a)] = a + hidden[:, :len(a)]
    handle = blocks[layer].register_forward_pre_hook(pre_hook, with_kwargs=True)
    try:
        with torch.no_grad():
            return model(torch.tensor([prompt])).logits[0].numpy()
    finally:
        handle.remove()
