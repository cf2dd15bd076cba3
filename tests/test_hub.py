"""Hub ids, offline: a Hugging Face cache laid out as huggingface_hub lays it out, read with
HF_HUB_OFFLINE=1 in a fresh process (the variable is read when huggingface_hub is imported).

    $HF_HUB_CACHE/models--{org}--{name}/refs/{branch}            -> a commit hash
    $HF_HUB_CACHE/models--{org}--{name}/snapshots/{commit}/...   -> the files at that commit
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import save_file

from conftest import config_dict, handmade_tokenizer, random_state_dict, write_tokenizer_files
from minigpt import GPT2, GPT2Config

CONFIG = GPT2Config(n_layer=1, n_head=2, n_embd=8, n_positions=8, vocab_size=13)
TOKENS = [[1, 2, 3, 4, 5]]
COMMIT_A, COMMIT_B = "a" * 40, "b" * 40


def add_snapshot(cache: Path, repo: str, commit: str, files: dict[str, object], branch: str | None = None):
    repo_dir = cache / ("models--" + repo.replace("/", "--"))
    snap = repo_dir / "snapshots" / commit
    snap.mkdir(parents=True, exist_ok=True)
    for name, content in files.items():
        if isinstance(content, dict) and name.endswith(".safetensors"):
            save_file(content, snap / name)
        else:
            (snap / name).write_text(content if isinstance(content, str) else json.dumps(content))
    if branch:
        (repo_dir / "refs").mkdir(exist_ok=True)
        (repo_dir / "refs" / branch).write_text(commit)


def config_json():
    return config_dict(CONFIG)


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    cache = tmp_path_factory.mktemp("hf-cache")
    a, b = random_state_dict(CONFIG, seed=1), random_state_dict(CONFIG, seed=2)
    add_snapshot(cache, "acme/tiny-gpt2", COMMIT_A, {"config.json": config_json(), "model.safetensors": a}, "main")
    add_snapshot(cache, "acme/tiny-gpt2", COMMIT_B, {"config.json": config_json(), "model.safetensors": b}, "v2")
    names = sorted(a)
    add_snapshot(cache, "acme/sharded", COMMIT_A, {
        "config.json": config_json(),
        "model-1.safetensors": {k: a[k] for k in names[::2]},
        "model-2.safetensors": {k: a[k] for k in names[1::2]},
        "model.safetensors.index.json": {"weight_map": {k: f"model-{1 + i % 2}.safetensors" for i, k in enumerate(names)}},
    }, "main")
    add_snapshot(cache, "acme/pickled", COMMIT_A, {"config.json": config_json(), "pytorch_model.bin": "not read"}, "main")
    big = GPT2Config(n_layer=1, n_head=2, n_embd=8, n_positions=8, vocab_size=262)
    c = random_state_dict(big, seed=3)
    add_snapshot(cache, "acme/with-tokenizer", COMMIT_A,
                 {"config.json": config_dict(big), "model.safetensors": c}, "main")
    write_tokenizer_files(cache / "models--acme--with-tokenizer" / "snapshots" / COMMIT_A, handmade_tokenizer())
    ids = handmade_tokenizer().encode(" the abab")
    return cache, {"a": GPT2(CONFIG, a)(TOKENS), "b": GPT2(CONFIG, b)(TOKENS), "c": GPT2(big, c)([ids])}


def load_offline(cache_dir: Path, name: str, revision: str | None = None, with_tokenizer: bool = False):
    """GPT2.from_pretrained (or minigpt.load, encoding ' the abab') in a fresh process with
    HF_HUB_OFFLINE=1: its logits, or its error."""
    load = (f"m, tok = minigpt.load({name!r}, revision={revision!r}); ids = [tok.encode(' the abab')]"
            if with_tokenizer else f"m = minigpt.GPT2.from_pretrained({name!r}, revision={revision!r}); ids = {TOKENS!r}")
    script = (
        "import json, sys, minigpt\n"
        f"try: {load}\n"
        "except Exception as e: print(json.dumps({'error': type(e).__name__ + ': ' + str(e)})); sys.exit()\n"
        "print(json.dumps({'logits': m(ids).tolist()}))\n"
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(cache_dir), "HF_HOME": str(cache_dir)}
    out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout.strip().splitlines()[-1])
    return np.array(result["logits"], np.float32) if "logits" in result else result["error"]


def test_hub_id_loads_from_the_cache_offline_at_the_default_revision(cache):
    cache_dir, expected = cache
    np.testing.assert_array_equal(load_offline(cache_dir, "acme/tiny-gpt2"), expected["a"])


@pytest.mark.parametrize("revision,which", [("v2", "b"), (COMMIT_B, "b"), (COMMIT_A, "a"), ("main", "a")])
def test_revision_is_honoured(cache, revision, which):
    cache_dir, expected = cache
    np.testing.assert_array_equal(load_offline(cache_dir, "acme/tiny-gpt2", revision), expected[which])


def test_sharded_hub_checkpoint_loads_offline(cache):
    cache_dir, expected = cache
    np.testing.assert_array_equal(load_offline(cache_dir, "acme/sharded"), expected["a"])


def test_uncached_repo_offline_says_what_is_missing_and_why(cache):
    error = load_offline(cache[0], "acme/elsewhere")
    assert error.startswith("CheckpointError: config.json of hub repo 'acme/elsewhere' is not in the local")
    assert "HF_HUB_OFFLINE=1" in error
    error = load_offline(cache[0], "acme/tiny-gpt2", revision="v3")
    assert "hub repo 'acme/tiny-gpt2' at revision 'v3'" in error


def test_hub_repo_with_only_a_pickle_is_refused(cache):
    error = load_offline(cache[0], "acme/pickled")
    assert error.startswith("CheckpointError: hub repo 'acme/pickled' has, in the local cache, neither "
                            "model.safetensors nor model.safetensors.index.json")
    assert "unpickling can run arbitrary code" in error


def test_model_and_tokenizer_load_together_from_the_hub_cache(cache):
    cache_dir, expected = cache
    np.testing.assert_array_equal(load_offline(cache_dir, "acme/with-tokenizer", with_tokenizer=True), expected["c"])
    error = load_offline(cache_dir, "acme/tiny-gpt2", with_tokenizer=True)
    assert error.startswith("CheckpointError: vocab.json of hub repo 'acme/tiny-gpt2' is not in the local")


def load_unreachable(cache_dir: Path, name: str):
    """minigpt.GPT2.from_pretrained(name) in a fresh process whose hub endpoint does not resolve
    (no HF_HUB_OFFLINE): (its logits or its error, stderr, what it did on the network: the sockets
    it connected and the seconds it slept, as a client retrying with backoff would)."""
    script = ("import json, socket, sys, time\n"
              "network = {'connects': [], 'slept': []}\n"
              "real_sleep, real_connect = time.sleep, socket.socket.connect\n"
              "time.sleep = lambda s: (network['slept'].append(s), real_sleep(s))[1]\n"
              "def connect(self, address, *a):\n"
              "    network['connects'].append(str(address))\n"
              "    return real_connect(self, address, *a)\n"
              "socket.socket.connect = connect\n"
              "import minigpt\n"
              f"try: out = {{'logits': minigpt.GPT2.from_pretrained({name!r})({TOKENS!r}).tolist()}}\n"
              "except Exception as e: out = {'error': type(e).__name__ + ': ' + str(e)}\n"
              "print(json.dumps({**out, 'network': network}))\n")
    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "HTTPS_PROXY", "https_proxy", "ALL_PROXY",
                                                             "all_proxy")}
    env.update(HF_ENDPOINT="https://hub.example.invalid", HF_HUB_CACHE=str(cache_dir), HF_HOME=str(cache_dir))
    out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True,
                         timeout=300)                               # a hang guard only
    result = json.loads(out.stdout.strip().splitlines()[-1])
    return (np.array(result["logits"], np.float32) if "logits" in result else result["error"]), out.stderr, \
        result["network"]


def test_a_hub_that_does_not_resolve_is_answered_from_the_cache_at_once(cache):
    """No network: five retries and 25 s of 'Retrying in 8s' before (a name that does not
    resolve is no transient fault); now the cache answers at once, or the error says why."""
    cache_dir, expected = cache
    logits, stderr, network = load_unreachable(cache_dir, "acme/tiny-gpt2")
    np.testing.assert_array_equal(logits, expected["a"])
    assert network == {"connects": [], "slept": []}, network
    error, stderr, network = load_unreachable(cache_dir, "acme/elsewhere")
    assert error == ("CheckpointError: config.json of hub repo 'acme/elsewhere' is not in the local Hugging Face cache, "
                     "and the hub's host hub.example.invalid does not resolve (no network). Download it once with "
                     "network access, or pass a local folder.")
    assert "Retrying" not in stderr and "thrown while requesting" not in stderr, stderr
    error, _, _ = load_unreachable(cache_dir, "tiny-boks")    # a typo of a shipped model: named, not a hub riddle
    assert error.endswith("or pass a local folder. Did you mean 'tiny-books'? (models that need no network: "
                          "tiny-books, tiny-imdb, smollm2-135m, gemma3-270m)"), error
    # answered at once: no connection tried, no backoff slept (counted, not timed: the retrying
    # client slept 1 + 2 + 4 + 8 + 8 s here before)
    assert network == {"connects": [], "slept": []}, network
