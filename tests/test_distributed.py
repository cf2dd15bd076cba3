"""The eval tasks on Dask (actadd.experiments.dask): on a LocalCluster of 2 processes on 127.0.0.1,
started and stopped here, the topic and sentiment runs write the same files as one process, a
worker killed mid-run loses nothing and duplicates nothing, a stopped client resumes, each
worker loads the model once, and the refusals say what to do."""

import json
import os
import signal
import sys
import threading
import time

import distributed  # the test extra's dask[distributed]: never skipped
import pytest

import minigpt
from actadd.experiments import data, generation
from actadd.cli import main
from actadd.experiments.dask import DaskRunner, DistributedError, loads_on_worker
from actadd.provenance import ModelSource, ModelSourceError

SEA = ["whale", "whales", "sea", "ship", "boat"]
TOPIC = dict(prompt="In the morning we", plus="whale", minus="", layers=[0, 2], coeffs=[1.0, 4.0], words=SEA,
             samples=6, max_new_tokens=12, batch_rows=4, progress=False)
SENTENCES = ["The food was cold and the service slow", "I will never come back here", "A dull and tired film",
             "The staff were rude to us", "What a lovely day by the sea", "Great acting and a fine story"]


@pytest.fixture(scope="module")
def books():
    return minigpt.load("tiny-books")


@pytest.fixture(scope="module")
def cluster():
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                                  dashboard_address=":0") as c, distributed.Client(c) as client:
        yield c, client


def bounded(fn, *args, seconds=180, **kwargs):
    """fn(*args, **kwargs) in a thread that must finish within `seconds`: a cluster that hangs
    fails the test instead of the suite."""
    out, errors = [], []

    def call():
        try:
            out.append(fn(*args, **kwargs))
        except BaseException as e:  # re-raised in the test's thread
            errors.append(e)
    thread = threading.Thread(target=call, daemon=True)
    thread.start()
    thread.join(seconds)
    assert not thread.is_alive(), f"{getattr(fn, '__name__', fn)} did not finish within {seconds} s"
    if errors:
        raise errors[0]
    return out[0]


def files(folder):
    return {name: (folder / name).read_bytes() for name in ("results.jsonl", "summary.json", "summary.csv")}


def test_topic_on_two_workers_writes_what_one_process_writes(books, cluster, tmp_path):
    model, tok = books
    c, client = cluster
    one = generation.topic(model, tok, tmp_path / "one", **TOPIC)
    two = bounded(generation.topic, model, tok, tmp_path / "two", scheduler=c.scheduler_address, worker_backend="numpy",
                  **TOPIC)
    assert files(tmp_path / "two") == files(tmp_path / "one")           # byte for byte, the record order too
    assert two.samples == json.loads(json.dumps(one.samples)) and len(two.samples) == 5 * 6
    loads = client.run(loads_on_worker)
    assert sorted(len(v) for v in loads.values()) == [1, 1]              # 8 units, one model load per worker


def labelled(tmp_path):
    path = tmp_path / "labelled.tsv"
    path.write_text("".join(f"{t}\t{'neg' if i < 4 else 'pos'}\n" for i, t in enumerate(SENTENCES)), encoding="utf-8")
    return data.read_labelled(path)


def test_sentiment_on_two_workers_writes_what_one_process_writes(books, cluster, tmp_path):
    model, tok = books
    c, _ = cluster
    common = dict(layer=0, coeff=4.0, plus="whale", minus="", samples=3, max_new_tokens=10, batch_rows=4,
                  scorer="vader", progress=False)
    generation.sentiment(model, tok, labelled(tmp_path), tmp_path / "one", **common)
    bounded(generation.sentiment, model, tok, labelled(tmp_path), tmp_path / "two", scheduler=c.scheduler_address,
            **common)
    assert files(tmp_path / "two") == files(tmp_path / "one")
    kinds = [json.loads(line)["kind"] for line in (tmp_path / "two" / "results.jsonl").read_text().splitlines()]
    assert kinds.count("sample") == kinds.count("score") == 4 * 3 * 3    # 4 negative prompts x 3 conditions x 3


def test_the_dev_search_on_two_workers_writes_what_one_process_writes(books, cluster, tmp_path):
    """Before: actadd paper's dev searches ignored --workers and ran here while the rest went to the cluster."""
    from actadd.experiments import search
    from actadd.experiments.scorers import get_scorer

    model, tok = books
    c, _ = cluster
    prompts = [p for p in labelled(tmp_path) if p.label == "negative"]
    common = dict(layers=[0, 2], coeffs=[2.0], scorer=get_scorer("vader", "sentiment"), max_new_tokens=6,
                  sampling={"temperature": 1.0, "top_p": 0.3, "freq_penalty": 1.0}, direction="neg-to-pos",
                  progress=False, batch_rows=4)
    one = search.search(model, tok, "sentiment", prompts, tmp_path / "one", **common)
    two = bounded(search.search, model, tok, "sentiment", prompts, tmp_path / "two", scheduler=c.scheduler_address,
                  **common)
    assert (tmp_path / "two" / "results.jsonl").read_bytes() == (tmp_path / "one" / "results.jsonl").read_bytes()
    assert two == one and len(two["cells"]) == 2


def test_a_worker_killed_mid_run_loses_nothing_and_writes_nothing_twice(books, cluster, tmp_path):
    model, tok = books
    c, client = cluster
    big = {**TOPIC, "layers": [0, 1, 2, 3], "coeffs": [1.0, 2.0, 4.0], "samples": 8}   # 13 conditions: 26 units
    generation.topic(model, tok, tmp_path / "one", **big)
    errors, records_at_kill = [], []

    def run():
        try:
            generation.topic(model, tok, tmp_path / "two", scheduler=c.scheduler_address, **big)
        except Exception as e:  # reported below, in the test's thread
            errors.append(e)
    thread = threading.Thread(target=run)
    thread.start()
    results = tmp_path / "two" / "results.jsonl"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and (not results.exists() or results.read_text().count("\n") < 2):
        time.sleep(0.05)
    records_at_kill.append(results.read_text().count("\n") - 1)
    victim = next(iter(client.run(os.getpid).values()))
    os.kill(victim, signal.SIGKILL)                                        # mid-run: the nanny starts a new one
    thread.join(timeout=300)
    assert not thread.is_alive() and not errors, errors
    assert 0 < records_at_kill[0] < 13 * 8                                  # it was killed with work left
    assert files(tmp_path / "two") == files(tmp_path / "one")
    keys = [(r["condition"], r["sample"]) for r in map(json.loads, results.read_text().splitlines()[1:])]
    assert len(keys) == len(set(keys)) == 13 * 8


def test_a_client_stopped_mid_run_resumes_from_the_results_file(books, cluster, tmp_path):
    model, tok = books
    c, _ = cluster
    generation.topic(model, tok, tmp_path / "one", **TOPIC)
    bounded(generation.topic, model, tok, tmp_path / "two", scheduler=c.scheduler_address, **TOPIC)
    results = tmp_path / "two" / "results.jsonl"
    lines = results.read_bytes().split(b"\n")
    results.write_bytes(b"\n".join(lines[:9]) + b"\n" + lines[9][:20])   # as a stop leaves it: 8 records and a torn line
    bounded(generation.topic, model, tok, tmp_path / "two", scheduler=c.scheduler_address, **TOPIC)
    assert files(tmp_path / "two") == files(tmp_path / "one")


def test_the_cli_starts_a_local_cluster_of_n_workers(tmp_path, capsys):
    args = ["eval", "topic", "--model", "tiny-books", "--prompt", "In the morning we", "--plus", "whale",
            "--layers", "0", "--coeffs", "4", "--words", "whale,sea", "-n", "4", "--max-new-tokens", "8",
            "--batch-rows", "4", "--no-progress"]
    assert main(args + ["--out", str(tmp_path / "one")]) == 0
    assert bounded(main, args + ["--out", str(tmp_path / "two"), "--workers", "2"]) == 0
    assert files(tmp_path / "two") == files(tmp_path / "one")
    with pytest.raises(SystemExit):
        main(args + ["--out", str(tmp_path / "x"), "--workers", "2", "--scheduler", "tcp://127.0.0.1:1"])
    assert "not allowed with argument" in capsys.readouterr().err


def test_refusals(books, monkeypatch, capsys):
    model, tok = books
    with pytest.raises(DistributedError, match="no Dask scheduler answered"):
        DaskRunner(scheduler="tcp://127.0.0.1:9", timeout=2)
    with pytest.raises(ValueError, match="either workers .* or scheduler"):
        DaskRunner()
    with pytest.raises(ValueError, match="workers=0"):
        DaskRunner(workers=0)
    from conftest import random_model
    from minigpt import GPT2Config

    with pytest.raises(ModelSourceError, match="must come from minigpt.load"):
        ModelSource.of(random_model(GPT2Config(n_layer=1, n_head=1, n_embd=4, n_positions=8, vocab_size=8)))
    source = ModelSource.of(model)
    assert source.load()[0].config == model.config                       # the same name gives the same weights
    with pytest.raises(ModelSourceError, match="is another checkpoint on this machine"):
        ModelSource(source.name_or_path, None, (), "numpy", "0" * 64).load()
    with pytest.raises(ValueError, match="worker_backend is for runs on Dask"):
        generation.topic(model, tok, None, worker_backend="numpy", **TOPIC)
    monkeypatch.setitem(sys.modules, "distributed", None)
    with pytest.raises(DistributedError, match=r"pip install 'minigpt-actadd\[dask\]'"):
        generation.topic(model, tok, None, workers=2, **TOPIC)
    assert main(["eval", "topic", "--model", "tiny-books", "--out", "unused", "--workers", "2", "--layers", "0",
                 "--coeffs", "1", "-n", "1"]) == 2
    assert "pip install 'minigpt-actadd[dask]'" in capsys.readouterr().err


def test_a_batch_that_kills_every_worker_it_meets_is_an_error_not_a_hang(books, cluster, tmp_path, monkeypatch):
    """Dask retries a unit whose worker died; after its allowed failures (3) it gives up, and the
    run stops with an error saying so (the finished batches stay in the results file)."""
    import actadd.experiments.dask as dist

    model, tok = books
    c, client = cluster

    def dies(work, recipe, unit):                  # pickled by value: the worker runs this, not run_unit
        os._exit(1)
    monkeypatch.setattr(dist, "run_unit", dies)
    with pytest.raises(DistributedError, match="Dask gave up on it"):
        bounded(generation.topic, model, tok, tmp_path / "x", scheduler=c.scheduler_address,
                **{**TOPIC, "layers": [0], "coeffs": [1.0]})
    client.wait_for_workers(2, timeout=60)         # the nannies bring the workers back


def test_relevance_and_knowledge_on_two_workers_write_what_one_process_writes(books, cluster, tmp_path):
    """The likelihood tasks' batches (fixed by the settings) on Dask: the same files."""
    from actadd.experiments import likelihood

    model, tok = books
    c, client = cluster
    text = " ".join(["The whale rose from the sea beside the ship and the boat."] * 6 + ["She walked to the house."] * 40)
    documents = [("a", text), ("b", text[::-1]), ("c", text.upper())]
    common = dict(plus="whale", minus="", layer=1, coeff=2.0, words=SEA, chunk_tokens=24, batch_tokens=100,
                  progress=False)
    likelihood.relevance(model, tok, documents, tmp_path / "one", **common)
    bounded(likelihood.relevance, model, tok, documents, tmp_path / "two", scheduler=c.scheduler_address, **common)
    assert files(tmp_path / "two") == files(tmp_path / "one")
    facts_file = tmp_path / "facts.jsonl"
    facts_file.write_text("".join(json.dumps({"masked_sentences": [f"{s} [MASK] ."], "obj_label": o}) + "\n"
                                  for s, o in [("The whale swam in the", "sea"), ("He rowed the", "boat"),
                                               ("They lived in a small", "house"), ("The captain stood on the", "deck"),
                                               ("A man and his", "wife")] * 3), encoding="utf-8")
    facts, skipped = data.read_lama(facts_file, tok)
    common = dict(plus="whale", minus="", layer=1, coeff=2.0, batch_tokens=40, progress=False, skipped=skipped)
    likelihood.knowledge(model, tok, facts, tmp_path / "k1", **common)
    bounded(likelihood.knowledge, model, tok, facts, tmp_path / "k2", scheduler=c.scheduler_address, **common)
    assert files(tmp_path / "k2") == files(tmp_path / "k1")
    lines = (tmp_path / "k2" / "results.jsonl").read_text().splitlines()
    assert len(lines) - 1 == len(facts) > 8                               # several batches of facts


def test_actadd_paper_sends_topic_relevance_and_knowledge_to_the_cluster_and_times_overhead_here(monkeypatch, tmp_path):
    from actadd.experiments import likelihood, overhead, paper

    seen = {}

    class Stop(Exception):
        pass

    def record(name):
        def fn(*args, **kwargs):
            seen[name] = {k: kwargs.get(k) for k in ("workers", "scheduler", "worker_backend")}
            raise Stop
        return fn
    monkeypatch.setattr(generation, "topic", record("topic"))
    with pytest.raises(Stop):
        paper.run(*minigpt.load("tiny-books"), tmp_path, quick=True, scheduler="tcp://h:1", worker_backend="cupy",
                  progress=False)
    assert seen["topic"] == {"workers": None, "scheduler": "tcp://h:1", "worker_backend": "cupy"}
    monkeypatch.setattr(generation, "topic", lambda *a, **k: type("R", (), {"summary": {}})())
    monkeypatch.setattr(paper, "_topic_headline", lambda summary: {})
    monkeypatch.setattr(data, "read_documents", lambda path: [])
    monkeypatch.setattr(likelihood, "relevance", record("relevance"))
    with pytest.raises(Stop):
        paper.run(*minigpt.load("tiny-books"), tmp_path, quick=True, workers=3, relevance_data="x", progress=False)
    assert seen["relevance"] == {"workers": 3, "scheduler": None, "worker_backend": None}
    monkeypatch.setattr(likelihood, "relevance", lambda *a, **k: type("R", (), {"summary": {}})())
    monkeypatch.setattr(paper, "_relevance_headline", lambda summary, data: {})
    monkeypatch.setattr(data, "read_lama", lambda path, tok: ([], []))
    monkeypatch.setattr(likelihood, "knowledge", record("knowledge"))
    with pytest.raises(Stop):
        paper.run(*minigpt.load("tiny-books"), tmp_path, quick=True, workers=3, relevance_data="x", lama="y",
                  progress=False)
    assert seen["knowledge"] == {"workers": 3, "scheduler": None, "worker_backend": None}
    import inspect

    assert "workers" not in inspect.signature(overhead.overhead).parameters      # timing stays in this process
