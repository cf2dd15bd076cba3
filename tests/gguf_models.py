"""Test-only: GGUF model files written as llama.cpp's converter (convert_hf_to_gguf.py) writes
them, with gguf-py's GGUFWriter and quantizers, from a Hugging Face LLaMA's tensors: llama.cpp's
names, the q/k rows permuted to interleaved pairs, `llama.*` metadata, a byte-level BPE in
`tokenizer.ggml.*`. Nothing here is minigpt's code: the permutation and the rope_freqs tensor are
written from the converter's own definitions, so that minigpt's loader is checked against them."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

gguf = __import__("gguf")
T = gguf.GGMLQuantizationType

HF_TO_GGUF = {"embed_tokens": "token_embd", "norm": "output_norm", "lm_head": "output",
              "input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm",
              "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
              "self_attn.o_proj": "attn_output", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
              "mlp.down_proj": "ffn_down"}


# Gemma 3's (convert_hf_to_gguf.py's Gemma3Model): four norms a block, and q/k norms
GEMMA3_TO_GGUF = {**HF_TO_GGUF, "post_attention_layernorm": "post_attention_norm",
                  "pre_feedforward_layernorm": "ffn_norm", "post_feedforward_layernorm": "post_ffw_norm",
                  "self_attn.q_norm": "attn_q_norm", "self_attn.k_norm": "attn_k_norm"}


def gguf_name(hf: str, names: dict = HF_TO_GGUF) -> str:
    """A transformers name as llama.cpp's (a name already in llama.cpp's form is kept)."""
    if hf.startswith("blk."):
        return hf
    parts = hf.removeprefix("model.").split(".")
    if parts[0] == "layers":
        return f"blk.{parts[1]}.{names['.'.join(parts[2:-1])]}.{parts[-1]}"
    return f"{names[parts[0]]}.{parts[-1]}"


def llama_cpp_permute(weights: np.ndarray, n_head: int) -> np.ndarray:
    """convert_hf_to_gguf.py's LlamaModel.permute: each head's rows from rotate-half order to
    interleaved pairs."""
    return (weights.reshape(n_head, 2, weights.shape[0] // n_head // 2, *weights.shape[1:])
            .swapaxes(1, 2).reshape(weights.shape))


def llama3_rope_freqs(config: dict) -> np.ndarray:
    """convert_hf_to_gguf.py's LlamaModel.generate_extra_tensors: the "llama3" scaling as one
    divisor per rotary frequency (the rope_freqs tensor)."""
    s = config["rope_scaling"]
    base, dim = config.get("rope_theta", 10000.0), config["hidden_size"] // config["num_attention_heads"]
    freqs = 1.0 / (base ** (np.arange(0, dim, 2, dtype=np.float32) / dim))
    low_wavelen = s["original_max_position_embeddings"] / s["low_freq_factor"]
    high_wavelen = s["original_max_position_embeddings"] / s["high_freq_factor"]
    factors = []
    for freq in freqs:
        wavelen = 2 * math.pi / freq
        if wavelen < high_wavelen:
            factors.append(1)
        elif wavelen > low_wavelen:
            factors.append(s["factor"])
        else:
            smooth = (s["original_max_position_embeddings"] / wavelen - s["low_freq_factor"]) / (
                s["high_freq_factor"] - s["low_freq_factor"])
            factors.append(1 / ((1 - smooth) / s["factor"] + smooth))
    return np.array(factors, dtype=np.float32)


def random_blocks(kind: str, rows: int, width: int, rng) -> np.ndarray:
    """Random bytes in the layout of `kind` (for the types gguf-py dequantizes but cannot make)."""
    block, size = gguf.GGML_QUANT_SIZES[T[kind]]
    return rng.integers(0, 256, (rows, width // block * size), dtype=np.uint8)


def encode(tensor: np.ndarray, kind: str, rng) -> np.ndarray:
    """The tensor stored as `kind`: gguf-py's quantizer where it has one, else random blocks."""
    if kind == "F32":
        return tensor.astype(np.float32)
    if kind == "F16":
        return tensor.astype(np.float16)
    try:
        return gguf.quants.quantize(tensor.astype(np.float32), T[kind])
    except NotImplementedError:
        return random_blocks(kind, tensor.shape[0], tensor.shape[1], rng)


def write_llama_gguf(path: Path, tensors: dict[str, np.ndarray], config: dict, kinds=None, tokenizer=None,
                     metadata: dict | None = None, seed: int = 0, rope_freqs: np.ndarray | None = None,
                     architecture: str = "llama") -> Path:
    """A GGUF file of a LLaMA with these Hugging Face tensors (float32, names as transformers
    saves them) and config.json fields. `kinds(gguf_name, shape)` -> the ggml type of each matrix
    (default F32; vectors stay F32 as llama.cpp keeps norms); `tokenizer`: a dict of tokens,
    merges, token_type, pre, bos/eos ids; `metadata`: extra or replaced keys (a value of None
    removes the key)."""
    rng = np.random.default_rng(seed)
    heads, kv = config["num_attention_heads"], config.get("num_key_value_heads") or config["num_attention_heads"]
    d_head = config.get("head_dim") or config["hidden_size"] // heads
    writer = gguf.GGUFWriter(str(path), architecture)
    keys = {
        f"{architecture}.block_count": config["num_hidden_layers"],
        f"{architecture}.context_length": config["max_position_embeddings"],
        f"{architecture}.embedding_length": config["hidden_size"],
        f"{architecture}.feed_forward_length": config["intermediate_size"],
        f"{architecture}.attention.head_count": heads,
        f"{architecture}.attention.head_count_kv": kv,
        f"{architecture}.rope.freq_base": float(config.get("rope_theta", 10000.0)),
        f"{architecture}.attention.layer_norm_rms_epsilon": float(config.get("rms_norm_eps", 1e-6)),
        f"{architecture}.rope.dimension_count": d_head,
        f"{architecture}.vocab_size": config["vocab_size"],
    }
    if architecture == "gemma3":      # the converter's Gemma3Model keys (no local rope base, no pattern)
        keys.update({"gemma3.attention.key_length": d_head, "gemma3.attention.value_length": d_head,
                     "gemma3.attention.sliding_window": config["sliding_window"]})
    keys.update(metadata or {})
    for key, value in keys.items():
        if value is None:
            continue
        if isinstance(value, bool):
            writer.add_bool(key, value)
        elif isinstance(value, int):
            writer.add_uint32(key, value)
        elif isinstance(value, float):
            writer.add_float32(key, value)
        else:
            writer.add_string(key, value)
    if tokenizer is not None:
        writer.add_tokenizer_model(tokenizer.get("model", "gpt2"))
        if tokenizer.get("pre") is not None:
            writer.add_tokenizer_pre(tokenizer["pre"])
        writer.add_token_list(tokenizer["tokens"])
        writer.add_token_types(tokenizer["token_type"])
        if tokenizer.get("merges") is not None:          # SentencePiece-style files store scores instead
            writer.add_token_merges(tokenizer["merges"])
        if tokenizer.get("scores") is not None:
            writer.add_token_scores(tokenizer["scores"])
        if tokenizer.get("add_space_prefix") is not None:
            writer.add_add_space_prefix(tokenizer["add_space_prefix"])
        for role in ("bos", "eos", "unk", "pad"):
            if tokenizer.get(role) is not None:
                getattr(writer, {"bos": "add_bos_token_id", "eos": "add_eos_token_id", "unk": "add_unk_token_id",
                                 "pad": "add_pad_token_id"}[role])(tokenizer[role])
        if tokenizer.get("add_bos") is not None:
            writer.add_add_bos_token(tokenizer["add_bos"])
    if rope_freqs is not None:
        writer.add_tensor("rope_freqs.weight", rope_freqs.astype(np.float32))
    for hf, tensor in tensors.items():
        if architecture == "gemma3":  # no permutation (llama.cpp rotates Gemma's halves); norms + 1
            name = gguf_name(hf, GEMMA3_TO_GGUF)
            tensor = tensor + np.float32(1.0) if hf.endswith("norm.weight") else tensor
        else:
            name = gguf_name(hf)
        if "q_proj" in hf and architecture != "gemma3":
            tensor = llama_cpp_permute(tensor, heads)
        elif "k_proj" in hf and architecture != "gemma3":
            tensor = llama_cpp_permute(tensor, kv)
        kind = "F32" if tensor.ndim == 1 or kinds is None else kinds(name, tensor.shape)
        data = encode(tensor, kind, rng)
        writer.add_tensor(name, data, raw_dtype=None if kind in ("F32", "F16") else T[kind])
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def hf_tensors(model) -> dict[str, np.ndarray]:
    """A transformers model's parameters as float32 NumPy arrays, as it saves them (a tied lm_head
    left out, as llama.cpp's converter leaves output.weight out)."""
    out = {k: v.detach().float().numpy() for k, v in model.state_dict().items() if "rotary_emb" not in k}
    if model.config.tie_word_embeddings:
        out.pop("lm_head.weight", None)
    return out


def stored_raw(path: Path, name: str):
    """(raw bytes or numbers, ggml type) of one tensor as gguf-py's reader finds it."""
    reader = gguf.GGUFReader(str(path))
    t = next(t for t in reader.tensors if t.name == name)
    return t.data, t.tensor_type


def gpt2_style_tokenizer(tok, pre: str = "gpt-2", bos: str | None = None, types: dict | None = None) -> dict:
    """tokenizer.ggml.* fields of a minigpt byte-level BPE (its vocab and merges); `types`: token ->
    llama.cpp type (default: its special tokens control, the rest normal)."""
    tokens = [t for t, _ in sorted(tok.vocab.items(), key=lambda kv: kv[1])]
    merges = [f"{a} {b}" for (a, b), _ in sorted(tok.ranks.items(), key=lambda kv: kv[1])]
    token_type = [3 if t in tok.special_tokens else 1 for t in tokens]
    for token, kind in (types or {}).items():
        token_type[tok.vocab[token]] = kind
    bos_id = tok.vocab[bos] if bos else None
    return {"tokens": tokens, "merges": merges, "token_type": token_type, "pre": pre, "bos": bos_id, "eos": bos_id}
