"""`actadd compare` (actadd.experiments.compare) on tiny-books with data written here: the rule
picks the cell it states, the table's paired differences are those of the continuations on
disk, every vector has the size it is said to have, a rerun resumes without generating, and
the command line runs it. (The published comparisons read ../shared; these tests do not.)"""

import json
from pathlib import Path

import numpy as np
import pytest

import minigpt
from actadd import methods
from actadd.cli import main as actadd_main
from actadd.experiments import compare
from actadd.pairs import rms_norm

POS = ["a fine and happy story with good people in it and a warm end for all of them here",
       "the best film of the year, full of joy and love and light and good music all along",
       "I loved every minute, the cast is great and the story is kind and very funny too"]
NEG = ["a dull and sad story with bad people in it and a cold end for all of them there",
       "the worst film of the year, full of noise and hate and dark and poor music all along",
       "I hated every minute, the cast is weak and the story is cruel and very boring too"]


def write_data(folder: Path) -> dict:
    folder.mkdir(parents=True, exist_ok=True)
    reviews = [{"text": f"{t} ({i})", "label": label} for i in range(8) for label, texts in (("pos", POS), ("neg", NEG))
               for t in texts]
    (folder / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in reviews))
    (folder / "test.jsonl").write_text("".join(json.dumps(r) + "\n" for r in reviews[::-1]))
    prompts = [{"prompt": {"text": f"{w} said that the people in the town were {i}"}} for i, w in
               enumerate(["He", "She", "They", "We", "You", "I"] * 3)]
    (folder / "rtp.jsonl").write_text("".join(json.dumps(p) + "\n" for p in prompts))
    tweets = []
    for i in range(60):               # ids ending in 5: the dev split; in 0: the held-out split the pairs come from
        toxic = (i // 2) % 2 == 0
        text = (f"you are a stupid idiot and a fool number {i}" if toxic else f"what a lovely sunny day in the park {i}")
        tweets.append({"id": i * 5, "tweet": text, "class": 1 if toxic else 2})
    (folder / "labeled_data.jsonl").write_text("".join(json.dumps(t) + "\n" for t in tweets))
    return {"sentiment_data": folder / "test.jsonl", "sentiment_dev_data": folder / "train.jsonl",
            "toxicity_data": folder / "rtp.jsonl", "toxicity_dev_data": folder / "labeled_data.jsonl"}


@pytest.fixture(scope="module")
def model():
    return minigpt.load("tiny-books")


@pytest.fixture(scope="module")
def ran(model, tmp_path_factory):
    root = tmp_path_factory.mktemp("compare")
    paths = write_data(root / "data")
    out = root / "out"
    report = compare.compare(*model, out, model_name="tiny-books", quick=True, progress=False, **paths)
    return report, out, paths


def _records(path: Path):
    samples, scores = {}, {}
    for line in path.read_text().splitlines():
        r = json.loads(line)
        if r.get("kind") not in ("sample", "score"):
            continue                                  # the settings line
        key = (r["condition"], r["prompt_id"], r["sample"])
        (samples if r["kind"] == "sample" else scores)[key] = r
    return samples, scores


def test_the_table_s_differences_are_those_of_the_continuations_on_disk(ran):
    report, out, _ = ran
    for task, t in report["tasks"].items():
        samples, scores = _records(out / task.replace(" ", "-") / "test" / "results.jsonl")
        conditions = {c for c, _, _ in samples}
        assert conditions == set(t["conditions"])
        ids = sorted({p for _, p, _ in samples})
        assert len(ids) == t["test_prompts"] == compare.SIZES["quick"]["prompts"]

        for name, c in t["conditions"].items():
            if name == "unsteered":
                continue
            for against, key in (("unsteered", "vs_unsteered"), ("prompted", "vs_prompted")):
                if key not in c:
                    continue
                if task == "toxicity":
                    a = [scores[name, p, 0]["score"] for p in ids]
                    b = [scores[against, p, 0]["score"] for p in ids]
                else:
                    target = "positive" if "neg-to-pos" in task else "negative"
                    a = [float(scores[name, p, 0]["label"] == target) for p in ids]
                    b = [float(scores[against, p, 0]["label"] == target) for p in ids]
                assert c[key]["value"] == pytest.approx(float(np.mean(np.subtract(a, b))), abs=1e-12), (task, name, key)
                assert c[key]["n"] == len(ids)


def test_each_method_s_cell_is_the_one_the_rule_names(ran):
    report, _, _ = ran
    for task, t in report["tasks"].items():
        sign = -1 if task == "toxicity" else 1
        for method, cells in t["dev"].items():
            chosen = t["conditions"][method]["chosen"]
            within = [c for c in cells if c["within_budget"]]
            assert all(c["within_budget"] == (c["perplexity_ratio"] <= compare.FLUENCY_BUDGET) for c in cells)
            if within:
                best = max(sign * c["effect"]["value"] for c in within)
                assert chosen["within_budget"] and sign * chosen["dev_effect"]["value"] == best
                assert chosen["dev_perplexity_ratio"] <= compare.FLUENCY_BUDGET
            else:
                assert not chosen["within_budget"]
                assert chosen["dev_perplexity_ratio"] == min(c["perplexity_ratio"] for c in cells)


def test_the_curve_the_cost_and_the_files(ran):
    report, out, _ = ran
    quick = compare.SIZES["quick"]
    for task, t in report["tasks"].items():
        assert set(t["curve"]) == {"mean-diff", "mean-centring", "pca", "ablation"}
        for method, points in t["curve"].items():
            assert [p["k"] for p in points] == list(quick["curve"])
            assert (points[0]["vs_unsteered"] is None) == (method == "pca")      # repeng's PCA needs two pairs
        cost = {m: t["conditions"][m]["cost"] for m in methods.METHODS}
        assert cost["actadd"]["passes_to_make"] == 2 and cost["actadd"]["examples"] == 1
        assert cost["mean-diff"]["passes_to_make"] == 2 * quick["pairs"] == cost["pca"]["passes_to_make"]
        assert cost["mean-centring"]["passes_to_make"] == t["centring_target_texts"] + t["general_texts"]
        assert cost["ablation"]["hook_sites"] == 2 * report["n_layer"] + 1 and cost["mean-diff"]["hook_sites"] == 1
    rows = (out / "compare.csv").read_text().splitlines()
    assert len(rows) == 1 + 3 * (2 + len(methods.METHODS))
    assert (out / "compare.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    md = (out / "compare.md").read_text()
    assert md.count("| mean-centring |") == 3 * 2 + 1           # the table and the curve of each task, and the timing
    assert json.loads((out / "compare.json").read_text())["fluency_budget"] == compare.FLUENCY_BUDGET


def test_every_vector_is_the_size_it_is_said_to_be(model, ran):
    """Size r: the vector's RMS norm (ActAdd: per position after BOS) is r x the residual
    stream's RMS norm at its layer on the dev prompts."""
    _, _, paths = ran
    m, tok = model
    size = compare.SIZES["quick"]
    task = compare.toxicity_task(tok, paths["toxicity_data"], paths["toxicity_dev_data"], None, size,
                                 compare.get_scorer("toxicity", "toxicity"))
    mat = compare.Materials(m, tok, task, [1, 2])
    for method in ("actadd", "mean-diff", "mean-centring", "pca"):
        for layer in (1, 2):
            v = mat.vector(method, layer, 2.0)
            assert rms_norm(v.rows_at(layer)[0], after_bos=False) == pytest.approx(2.0 * mat.resid[layer], rel=1e-5)
    v = mat.vector("ablation", 2, 2.0)
    assert v.strength == 2.0 and v.read_at == 2
    # toxicity's mean-centring steers away from the toxic tweets: minus (toxic mean - general mean)
    unit = mat.unit("mean-centring", 2)
    expected = -(mat.t_rows[2].mean(axis=0) - mat.g_rows[2].mean(axis=0))
    assert np.abs(unit.direction(2) - expected).max() < 1e-5


def test_a_rerun_resumes_without_generating(model, ran, monkeypatch):
    report, out, paths = ran
    before = {p: p.read_bytes() for p in out.rglob("results.jsonl")}
    import minigpt as mg

    def refuse(*a, **k):
        raise AssertionError("a resumed comparison generated again")
    monkeypatch.setattr(mg, "generate", refuse)
    again = compare.compare(*model, out, model_name="tiny-books", quick=True, progress=False, **paths)
    assert {p: p.read_bytes() for p in out.rglob("results.jsonl")} == before
    for task in report["tasks"]:
        assert again["tasks"][task]["conditions"] == report["tasks"][task]["conditions"]


def test_the_rule_keeps_to_the_budget_and_flags_a_method_with_no_fluent_cell():
    class Scorer:
        name = "stub"

        def label(self, s):
            return "positive" if s >= 0.5 else "negative"

    class Run:
        samples, scores = [], {}

    task = compare.Task("sentiment neg-to-pos", "sentiment", "positive", "Love", "Hate", "Love ", [], [], [], [], 1.0,
                        [], "", Scorer())
    # per cell: (success over 4 prompts, perplexity): "big" moves most but is 1.3x as perplexed
    cells = {"unsteered": ([0, 0, 0, 0], 10.0), "small": ([1, 0, 0, 0], 11.0), "mid": ([1, 1, 0, 0], 12.4),
             "big": ([1, 1, 1, 1], 13.0)}
    for name, (hits, ppl) in cells.items():
        for p, hit in enumerate(hits):
            Run.samples.append({"condition": name, "prompt_id": p, "sample": 0, "fluency": {"perplexity": ppl}})
            Run.scores[name, p, 0] = {"score": float(hit)}
    chosen = compare.choose(task, Run, {"small": (1, 0.5), "mid": (1, 1.0), "big": (1, 2.0)})
    assert (chosen["layer"], chosen["size"], chosen["within_budget"]) == (1, 1.0, True)
    assert chosen["dev_effect"]["value"] == 0.5
    over = compare.choose(task, Run, {"big": (2, 4.0)})
    assert not over["within_budget"] and over["size"] == 4.0


def test_actadd_compare_on_the_command_line(tmp_path, capsys):
    paths = write_data(tmp_path / "data")
    out = tmp_path / "out"
    argv = ["compare", "--model", "tiny-books", "--out", str(out), "--quick", "--no-progress", "--methods",
            "actadd,mean-diff", "--toxicity-data", str(paths["toxicity_data"]), "--toxicity-dev-data",
            str(paths["toxicity_dev_data"]), "--prompts", "8", "--curve", "1,2"]
    assert actadd_main(argv) == 0
    printed = capsys.readouterr().out
    assert "### toxicity" in printed and "| mean-diff |" in printed and "| pca |" not in printed
    report = json.loads((out / "compare.json").read_text())
    assert report["tasks"]["toxicity"]["test_prompts"] == 8 and report["methods"] == ["actadd", "mean-diff"]
    assert report["command"].startswith("actadd compare --model tiny-books")
    assert [p["k"] for p in report["tasks"]["toxicity"]["curve"]["mean-diff"]] == [1, 2]
    base = argv[:5] + ["--quick", "--toxicity-data", str(paths["toxicity_data"]), "--toxicity-dev-data",
                       str(paths["toxicity_dev_data"])]
    with pytest.raises(SystemExit):
        actadd_main(base + ["--methods", "caa"])
    assert "--methods 'caa': expected some of" in capsys.readouterr().err
    assert actadd_main(base + ["--curve", "1,99"]) == 2
    assert "at most the 4 pairs" in capsys.readouterr().err
    assert actadd_main(base[:5] + ["--quick", "--toxicity-data", str(paths["toxicity_data"])]) == 2
    assert "needs its test data and its dev data" in capsys.readouterr().err


def test_each_published_comparison_is_its_json_rendered():
    """docs/compare/MODEL/compare.md, as published, is what compare.render makes of the
    compare.json beside it (no figure edited by hand), and docs/methods.md links it."""
    root = Path(__file__).resolve().parent.parent / "docs"
    folders = sorted(p for p in (root / "compare").iterdir() if p.is_dir())
    assert {f.name for f in folders} >= {"tiny-imdb", "smollm2-135m"}
    page = (root / "methods.md").read_text()
    for folder in folders:
        report = json.loads((folder / "compare.json").read_text())
        assert (folder / "compare.md").read_text() == compare.render(report), folder
        assert f"compare/{folder.name}/compare.md" in page
        assert report["tasks"] and all(t["test_prompts"] >= 500 for t in report["tasks"].values())


def test_the_methods_page_shows_each_published_table_as_rendered():
    """docs/methods.md carries each model's tables between its markers, exactly as
    compare.table renders that model's compare.json."""
    root = Path(__file__).resolve().parent.parent / "docs"
    page = (root / "methods.md").read_text()
    for folder in sorted(p for p in (root / "compare").iterdir() if p.is_dir()):
        start, end = f"<!-- compare {folder.name} -->", f"<!-- /compare {folder.name} -->"
        assert start in page and end in page, folder.name
        shown = page.split(start, 1)[1].split(end, 1)[0].strip()
        report = json.loads((folder / "compare.json").read_text())
        assert shown == compare.table(report).replace("### ", "#### ").strip()
