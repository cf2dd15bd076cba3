"""The steering methods beside ActAdd (actadd.methods) against their references, on random tiny
models of each family that transformers writes:

- mean-diff (CAA) and the PCA direction against the `steering-vectors` library (0.12.2): its
  mean_aggregator / pca_aggregator on activations its own hooks record, and its patched model's
  logits (addition_operator, ablation_operator) against ours. Its "decoder_block" layer N is
  the output of block N, our layer N + 1.
- pca's repeng recipe against scikit-learn's PCA (repeng's pca_diff runs it) with repeng's
  sign rule; repeng 0.4 itself does not import under NumPy 2 (np.float_).
- mean-centring against its published formula, on hidden states transformers computes.
- ablation at every residual stream activation: nothing along the direction is left at any
  of them (and the strength-2 reflection flips it); with the cache, row by row.
"""

import json

import numpy as np
import pytest

import actadd
import minigpt
from actadd import methods
from conftest import assert_close, decode_with_cache, max_abs, record_parity

PAIRS = [("ab c", "xy z"), ("love it", "hate it"), ("fine day", "bad day"), ("gl", "qm"), ("so good", "so bad"),
         ("a b", "c d")]
PROMPT = "the weather today is"


class CharTokenizer:
    """One token a character (ids 1..vocab-1), BOS 0: enough to turn the pairs into ids."""

    bos_token_id = eos_token_id = 0

    def __init__(self, vocab: int):
        self.vocab = vocab

    def encode(self, text, **_):
        return [1 + ord(c) % (self.vocab - 1) for c in text]


def _families():
    return ["gpt2", "opt", "llama", "gemma3"]


@pytest.fixture(scope="module", params=_families())
def family(request, reference, tmp_path_factory):
    """(minigpt model, transformers model, tokenizer) on one random checkpoint of the family."""
    import torch

    folder = tmp_path_factory.mktemp(f"methods-{request.param}")
    kind = request.param
    if kind == "gpt2":
        config = minigpt.GPT2Config(vocab_size=64, n_positions=48, n_embd=32, n_layer=3, n_head=4)
        reference.write_checkpoint(folder, config, seed=3)
        hf = reference.transformers.GPT2LMHeadModel.from_pretrained(folder, dtype=torch.float32).eval()
    elif kind == "opt":
        from test_opt import write_opt
        hf = write_opt(reference, folder, dict(vocab_size=64, hidden_size=32, num_hidden_layers=3, num_attention_heads=4,
                                               ffn_dim=40, max_position_embeddings=48), seed=3)
    elif kind == "llama":
        from test_llama import FIELDS, write_llama
        hf = write_llama(reference, folder, FIELDS, seed=3)
    else:
        from test_gemma3 import FIELDS, write_gemma
        hf = write_gemma(reference, folder, FIELDS, seed=3)
    model = minigpt.from_pretrained(folder)
    return model, hf, CharTokenizer(model.config.vocab_size)


def _sv():
    from conftest import _import_reference
    return _import_reference("steering_vectors")


def _ids(tok, text):
    return [tok.bos_token_id] + tok.encode(text)


def _recorded(sv, hf, tok, texts, block):
    """steering-vectors' record_activations: the output of decoder block `block` at each text's
    last token, [texts, d_model], one unpadded pass a text (as our ContrastPairs)."""
    import torch

    rows = []
    for text in texts:
        with torch.no_grad(), sv.record_activations(hf, "decoder_block", layer_nums=[block]) as rec:
            hf(torch.tensor([_ids(tok, text)]))
        rows.append(rec[block][-1][0, -1])
    return torch.stack(rows)


@pytest.mark.parametrize("layer", [1, 2])
def test_mean_diff_and_pca_equal_steering_vectors_aggregators(family, layer):
    model, hf, tok = family
    sv = _sv()
    pos = _recorded(sv, hf, tok, [p for p, _ in PAIRS], layer - 1)
    neg = _recorded(sv, hf, tok, [m for _, m in PAIRS], layer - 1)
    ref_mean = sv.mean_aggregator()(pos, neg).double().numpy()
    ours = methods.mean_diff(model, tok, PAIRS, 1.0, [layer]).direction(layer)
    err = assert_close(ours, ref_mean, f"mean-diff at layer {layer}")
    ref_pca = sv.pca_aggregator()(pos, neg).double().numpy()
    diffs, _ = methods.last_token_differences(model, tok, PAIRS, [layer])
    u, _ = methods.principal_direction(diffs[layer], "steering-vectors")
    assert abs(np.linalg.norm(u) - 1) < 1e-9
    assert max_abs(u.astype(np.float32), ref_pca) < 1e-4, "steering-vectors' PCA direction"
    record_parity("methods: mean-diff / pca vs steering-vectors", hidden_states=max_abs(ours, ref_mean), scaled=err)


def test_steered_logits_equal_steering_vectors_patched_model(family):
    """Our hooks against its patch_activations: addition of the mean difference at block L-1's
    output (= our layer L) at every token, and its ablation operator at every block's output."""
    import torch

    model, hf, tok = family
    sv = _sv()
    ids = _ids(tok, PROMPT)
    layer, coeff = 2, 3.0
    md = methods.mean_diff(model, tok, PAIRS, coeff, [layer])
    ref_vec = sv.SteeringVector({layer - 1: torch.tensor(md.direction(layer) / coeff)})
    with torch.no_grad(), ref_vec.apply(hf, multiplier=coeff):
        ref = hf(torch.tensor([ids])).logits[0].double().numpy()
    ours = model.run_with_hooks([ids], md.hooks())[0]
    assert max_abs(ours, model([ids])[0]) > 1e-2                             # it did steer
    err = assert_close(ours, ref, "mean-diff steered logits")

    ab = methods.ablation(model, tok, PAIRS, layer, at="block-outputs")
    u = torch.tensor(ab.direction)
    ref_ab = sv.SteeringVector({b: u for b in range(model.config.n_layer)})
    with torch.no_grad(), ref_ab.apply(hf, operator=sv.ablation_operator()):
        ref = hf(torch.tensor([ids])).logits[0].double().numpy()
    ours_ab = model.run_with_hooks([ids], ab.hooks())[0]
    assert max_abs(ours_ab, model([ids])[0]) > 1e-3
    err_ab = assert_close(ours_ab, ref, "ablation (block outputs) logits")
    record_parity("methods: steered logits vs steering-vectors", scaled=max(err, err_ab))


def test_pca_repeng_recipe_equals_sklearn_pca_with_repengs_sign(family):
    """(Checked to fail with the differences left uncentred, and with the sign rule reversed.)"""
    from sklearn.decomposition import PCA

    model, _, tok = family
    layer = 2
    diffs, cp = methods.last_token_differences(model, tok, PAIRS, [layer])
    d = diffs[layer]
    ref = PCA(n_components=1, svd_solver="full").fit(d).components_[0]
    # repeng's read_representations: project each plus and minus activation, flip the direction
    # if more pairs have plus below minus
    h = np.stack([x for i in range(len(PAIRS)) for x in (cp.resid[cp.plus_tokens[i], layer][-1],
                                                           cp.resid[cp.minus_tokens[i], layer][-1])]).astype(np.float64)
    proj = h @ ref / np.linalg.norm(ref)
    smaller = np.mean([proj[i] < proj[i + 1] for i in range(0, len(h), 2)])
    larger = np.mean([proj[i] > proj[i + 1] for i in range(0, len(h), 2)])
    ref = -ref if smaller > larger else ref
    vector = methods.pca(model, tok, PAIRS, 2.0, [layer])
    u = vector.direction(layer).astype(np.float64) / (2.0 * vector.provenance["scale"][0])
    if smaller == larger:     # a tie: repeng keeps sklearn's arbitrary sign; ours takes the mean projection's
        ref = ref if (d @ ref).mean() > 0 else -ref
    assert max_abs(u, ref) < 1e-5
    scale = np.sqrt(np.mean((d @ ref) ** 2))                                  # the stated per-layer size
    assert abs(vector.provenance["scale"][0] - scale) <= 1e-9 * scale
    assert vector.provenance["explained"][0] == pytest.approx(
        PCA(n_components=1, svd_solver="full").fit(d).explained_variance_ratio_[0], rel=1e-9)


def test_mean_centring_is_the_target_mean_minus_the_general_mean(reference, family):
    """Hand-computed from transformers' hidden states: each text's mean over its tokens after
    BOS, the texts' means averaged, target minus general, times the coefficient."""
    import torch

    model, hf, tok = family
    target, general = ["so good and fine", "love it"], ["the day", "a cat sat down", "xyz"]
    layer, coeff = 2, -1.5

    def text_mean(text):
        with torch.no_grad():
            h = hf(torch.tensor([_ids(tok, text)]), output_hidden_states=True).hidden_states[layer][0].double().numpy()
        return h[1:].mean(axis=0)
    expected = coeff * (np.mean([text_mean(t) for t in target], axis=0) - np.mean([text_mean(g) for g in general], axis=0))
    vector = methods.mean_centring(model, tok, target, general, coeff, [layer])
    err = assert_close(vector.direction(layer), expected, "mean-centring")
    assert vector.provenance["target_texts"] == 2 and vector.provenance["general_texts"] == 3
    record_parity("methods: mean-centring vs the formula on transformers' hidden states", scaled=err)


def test_mean_centring_by_hand_on_a_model_that_is_its_embeddings():
    """A model of no blocks whose stream is the embedding row: the vector is arithmetic."""
    config = minigpt.GPT2Config(vocab_size=8, n_positions=8, n_embd=2, n_layer=1, n_head=1)
    state = {k: np.zeros_like(v) for k, v in __import__("conftest").random_state_dict(config, 0).items()}
    state["wte.weight"] = np.array([[0, 0], [1, 0], [0, 1], [2, 2], [4, 0], [0, 0], [0, 0], [0, 0]], np.float32)
    model = minigpt.GPT2(config, state)
    tok = CharTokenizer(8)                                                     # 'a' = 97 -> 1 + 97 % 7 = 7
    tok.encode = lambda text, **_: [int(c) for c in text]
    # target texts: "12" -> mean of rows 1, 2 = (0.5, 0.5); "3" -> (2, 2); mean (1.25, 1.25)
    # general: "4" -> (4, 0); "11" -> (1, 0); mean (2.5, 0)
    vector = methods.mean_centring(model, tok, ["12", "3"], ["4", "11"], 2.0, [0])
    assert vector.direction(0).tolist() == [2.0 * (1.25 - 2.5), 2.0 * 1.25]


def test_ablation_leaves_nothing_along_the_direction_at_any_residual_activation(family):
    model, _, tok = family
    ab = methods.ablation(model, tok, PAIRS, 1)
    u = ab.direction.astype(np.float64)
    names = [name for _, name in ab.sites()]
    assert len(names) == 2 * model.config.n_layer + 1
    ids = _ids(tok, PROMPT)
    _, plain = model.run_with_cache([ids], names=names)
    cache = {}

    def reading(name, fn):                    # each site as the rest of the pass sees it: after the ablation
        def read(x, hook):
            out = fn(x, hook)
            cache[name] = np.asarray(out, np.float64)
            return out
        return read
    model.run_with_hooks([ids], [(name, reading(name, fn)) for name, fn in ab.hooks()])
    for name in names:
        before = np.abs(plain[name].astype(np.float64) @ u).max()
        after = np.abs(cache[name] @ u).max()
        assert before > 1e-3 and after <= 1e-5 * (1 + np.abs(cache[name]).max()), name
    # strength 2 reflects: the component is flipped, not removed
    reflect = ab.scaled(2.0)
    _, c2 = model.run_with_cache([ids], names=[names[0]])
    x = c2[names[0]][0].astype(np.float64)
    delta = reflect.delta(0, len(ids), resid=c2[names[0]][0])
    assert max_abs((x + delta) @ u, -(x @ u)) < 1e-4


@pytest.mark.parametrize("method", methods.METHODS)
def test_every_method_is_bit_stable_per_row_and_with_the_cache(family, method):
    model, _, tok = family
    common = dict(coeff=2.0, layer=2, pairs=PAIRS, target=["so good", "love it"], general=["the day", "a cat"])
    v1 = methods.make(method, model, tok, **common)
    v2 = methods.make(method, model, tok, **common)
    arrays = (lambda v: [v.direction] if method == "ablation" else
              list(v.activations) if method == "actadd" else list(v.directions))
    assert all(np.array_equal(a, b) for a, b in zip(arrays(v1), arrays(v2)))      # bit for bit on a rerun
    prompts = [_ids(tok, PROMPT), _ids(tok, "so so bad")[:6]]
    # per row: row 0 steered by this method, row 1 unsteered, in one batch; each equals its pass alone
    from minigpt.generate import left_pad
    tokens, mask = left_pad(prompts)
    both = model.run_with_hooks(tokens, actadd.row_hooks([v1, None], prompt_lengths=[len(p) for p in prompts]),
                                attention_mask=mask)
    alone = model.run_with_hooks([prompts[0]], v1.hooks(len(prompts[0])))[0]
    plain = model([prompts[1]])[0]
    assert alone.dtype == np.float32 and max_abs(both[0, -len(prompts[0]):], alone) < 1e-4
    assert max_abs(both[1, -len(prompts[1]):], plain) < 1e-4
    # the KV cache: decoding step by step equals recomputing each whole sequence with the same hooks
    rng = np.random.default_rng(0)
    lengths = [len(p) for p in prompts]
    cached, seqs = decode_with_cache(model, prompts, 4, rng, v1.hooks(lengths))
    for step in range(5):
        for b, seq in enumerate(seqs):
            full = seq[:lengths[b] + step]
            ref = model.run_with_hooks([full], v1.hooks(lengths[b]))[0, -1]
            assert max_abs(cached[step][b], ref) < 1e-4, (method, step, b)


def test_refusals(family):
    model, _, tok = family
    with pytest.raises(ValueError, match="two pairs or more"):
        methods.pca(model, tok, PAIRS[:1], 1.0, [1])
    with pytest.raises(ValueError, match="no variance"):
        methods.principal_direction(np.zeros((3, 4)), "steering-vectors")
    with pytest.raises(ValueError, match="expected one of"):
        methods.make("caa", model, tok, coeff=1.0, layer=1, pairs=PAIRS)
    with pytest.raises(ValueError, match="target: no texts"):
        methods.mean_centring(model, tok, [], ["a"], 1.0, [1])
    with pytest.raises(ValueError, match="no tokens after BOS"):
        methods.mean_centring(model, tok, [""], ["a"], 1.0, [1])
    with pytest.raises(ValueError, match="unit vector"):
        methods.AblationVector(np.ones(model.config.n_embd, np.float32), model.config.n_layer)
    with pytest.raises(ValueError, match="no direction to ablate"):
        methods.ablation(model, tok, [("same", "same")], 1)
    with pytest.raises(ValueError, match="every position"):
        methods.ablation(model, tok, PAIRS, 1).hooks(alignment="mid")


@pytest.mark.parametrize("method", methods.METHODS)
def test_every_method_saves_and_loads_with_its_provenance(family, tmp_path, method):
    model, _, tok = family
    vector = methods.make(method, model, tok, coeff=-2.0, layer=2, pairs=PAIRS, target=["so good", "love it"],
                          general=["the day", "a cat"])
    back = actadd.load(actadd.save(vector, tmp_path / "v.safetensors"), model)
    assert type(back) is type(vector) and back.describe() == vector.describe()
    assert back.summary() == vector.summary()                                  # provenance and pairs included
    ids = _ids(tok, PROMPT)
    assert np.array_equal(model.run_with_hooks([ids], back.hooks(len(ids))), model.run_with_hooks([ids], vector.hooks(len(ids))))
    if method in ("mean-diff", "pca", "mean-centring"):
        pytest.importorskip("gguf")
        gg = actadd.load(actadd.save(vector, tmp_path / "v.gguf"), model)  # layer 2 = llama.cpp's direction.1
        assert gg.provenance == vector.provenance and gg.reading == vector.reading
    if method == "ablation":
        with pytest.raises(actadd.VectorFileError, match="cannot do with one"):
            actadd.save(vector, tmp_path / "v.gguf")


def test_an_ablation_file_for_other_sites_or_depths_is_refused(family, tmp_path):
    import json

    from safetensors import safe_open
    from safetensors.numpy import save_file

    model, _, tok = family
    path = actadd.save(methods.ablation(model, tok, PAIRS, 1), tmp_path / "a.safetensors")
    with safe_open(str(path), framework="numpy") as f:
        manifest, direction = json.loads(f.metadata()["actadd"]), f.get_tensor("direction")
    for change, message in (({"n_layer": 7}, "n_layer: 7"), ({"hook_names": ["blocks.0.hook_resid_pre"]}, "hook_names"),
                            ({"at": "nowhere"}, "at: \"nowhere\""), ({"strength": "x"}, "strength")):
        save_file({"direction": direction}, tmp_path / "b.safetensors", metadata={"actadd": json.dumps({**manifest, **change})})
        with pytest.raises(actadd.VectorFileError, match=message):
            actadd.load(tmp_path / "b.safetensors", model)
    save_file({"direction": 2 * direction}, tmp_path / "c.safetensors", metadata={"actadd": json.dumps(manifest)})
    with pytest.raises(actadd.VectorFileError, match="unit vector"):
        actadd.load(tmp_path / "c.safetensors", model)


# --- the methods through the commands: sweep, steer, eval ------------------------------------


@pytest.fixture(scope="module")
def books():
    return minigpt.load("tiny-books")


TEXTS = ["The sun was bright and the day was long.", "We walked to the sea and sat on the sand for an hour.",
         "He said nothing for a while, then he laughed and went home."]


@pytest.mark.parametrize("method", ["mean-diff", "pca", "mean-centring", "ablation"])
def test_every_sweep_cell_is_the_vector_s_own_log_prob_shift(books, method):
    """A sweep batches cells and starts each pass at the cell's first steered layer: an
    ablation's is the embeddings, wherever its direction is read. Each cell equals the vector
    applied alone. (Checked to fail with the pass started at the read layer.)"""
    from actadd import measure

    model, tok = books
    texts = [("t", actadd.tokens_with_bos(tok, t)) for t in TEXTS]

    def unit(L):
        return methods.make(method, model, tok, coeff=1.0, layer=L, pairs=PAIRS, target=TEXTS[:2],
                            general=["It rained.", "A man sat."])
    rows = measure.sweep(model, tok, None, None, [1, 3], [0.5, 2.0], texts=texts, progress=False, unit_vector=unit)
    for row in rows:
        v = unit(row["layer"]).scaled(row["coeff"])
        alone = measure.logprob_shift(model, texts, v).summary()["all"]["mean_logprob_diff"]
        assert row["mean_logprob_diff"] == pytest.approx(alone, abs=2e-5), row
    assert len({round(r["mean_logprob_diff"], 4) for r in rows}) == 4                   # the cells differ


def test_steer_with_each_method_saves_what_it_applies_and_the_refusals(books, tmp_path, capsys):
    from actadd.cli import main

    model, _ = books
    (tmp_path / "p.tsv").write_text("I love it\tI hate it\nwonderful day\tawful day\nso good\tso bad\n")
    (tmp_path / "t.txt").write_text("It was lovely.\nA kind and happy day.\n")
    (tmp_path / "g.txt").write_text("The man walked.\nRain fell on the road.\n")
    common = ["steer", "--model", "tiny-books", "--prompt", "The weather today is", "-n", "1", "--max-new-tokens", "6",
              "--layer", "2", "--json"]
    for method, recipe in (("mean-diff", ["--pairs", "p.tsv"]), ("pca", ["--pairs", "p.tsv", "--recipe", "steering-vectors"]),
                           ("ablation", ["--pairs", "p.tsv"]), ("mean-centring", ["--target", "t.txt", "--general", "g.txt"])):
        saved = tmp_path / f"{method}.safetensors"
        argv = common + ["--method", method, *[str(tmp_path / a) if a.endswith((".tsv", ".txt")) else a for a in recipe],
                         "--save", str(saved)] + ([] if method == "ablation" else ["--coeff", "3"])
        assert main(argv) == 0, capsys.readouterr().err
        printed = json.loads(capsys.readouterr().out)
        vector = actadd.load(saved, model)
        if method == "ablation":                  # strength 1 by default: six sampled tokens may not change
            assert vector.strength == 1.0 and vector.read_at == 2 and printed["ablation"]["read_at"] == 2
            ids = actadd.tokens_with_bos(books[1], "The weather today is")
            assert max_abs(model.run_with_hooks([ids], vector.hooks()), model([ids])) > 1e-3
        else:
            assert printed["steered"] != printed["unsteered"]
            assert vector.reading == {"mean-diff": "last"}.get(method, method) and vector.positions == "all"
        if method == "pca":
            assert vector.provenance["recipe"] == "steering-vectors"
    for bad, why in ((["--method", "pca", "--plus", "a", "--minus", "b", "--coeff", "1"], "needs --pairs"),
                     (["--method", "mean-centring", "--target", str(tmp_path / "t.txt"), "--coeff", "1"], "--general"),
                     (["--method", "pca", "--pairs", str(tmp_path / "p.tsv"), "--reading", "last", "--coeff", "1"],
                      "--reading is how --method actadd"),
                     (["--plus", "a", "--minus", "b", "--coeff", "1", "--target", str(tmp_path / "t.txt")],
                      "give them with --method mean-centring")):
        with pytest.raises(SystemExit):
            main(common + bad)
        assert why in capsys.readouterr().err
    argv = common[:-3] + ["--layer", "1,2", "--method", "ablation", "--pairs", str(tmp_path / "p.tsv")]
    assert main(argv) == 2 and "reads its direction at one layer" in capsys.readouterr().err


def test_eval_takes_the_method_and_records_its_vector(books, tmp_path, capsys):
    from actadd.cli import main

    (tmp_path / "p.tsv").write_text("I love it\tI hate it\nso good\tso bad\n")
    (tmp_path / "prompts.txt").write_text("The people of the town said that\nShe looked at him and said\n")
    for task, extra in (("toxicity", ["--data", str(tmp_path / "prompts.txt"), "--layer", "2", "--coeff", "2", "-n", "1"]),
                        ("topic", ["--layers", "1,2", "--coeffs", "1", "-n", "2"])):
        for method in ("mean-diff", "ablation"):
            out = tmp_path / f"{task}-{method}"
            argv = ["eval", task, "--model", "tiny-books", "--out", str(out), "--method", method, "--pairs",
                    str(tmp_path / "p.tsv"), "--max-new-tokens", "4", "--no-progress", *extra]
            assert main(argv) == 0, capsys.readouterr().err
            capsys.readouterr()
            settings = json.loads((out / "summary.json").read_text())["settings"]
            said = json.dumps(settings)
            assert ("ablation of the unit mean-difference direction" if method == "ablation"
                    else "the mean-difference direction of 2 pairs") in said
            assert settings["plus"] is None                       # not plus - minus: the method's vector


@pytest.mark.parametrize("method", ["mean-diff", "ablation"])
def test_row_steering_past_the_prompt_follows_each_row_s_samples(books, method):
    """generate(samples=3) decodes 3 rows a prompt: each keeps its prompt's vector (one that acts
    on generated tokens too), as when that prompt is generated alone."""
    import minigpt as mg

    model, tok = books
    v = methods.make(method, model, tok, coeff=2.0, layer=2, pairs=PAIRS)
    prompts = [actadd.tokens_with_bos(tok, "The weather today is"), actadd.tokens_with_bos(tok, "She said")]
    seeds = [[0, p, j] for p in range(2) for j in range(3)]
    both = mg.generate(model, prompts, tok, max_new_tokens=6, samples=3, row_seeds=seeds, temperature=1.0,
                       fwd_hooks=actadd.row_hooks([v, None]))
    alone = mg.generate(model, prompts[:1], tok, max_new_tokens=6, samples=3, row_seeds=seeds[:3], temperature=1.0,
                        fwd_hooks=v.hooks())
    plain = mg.generate(model, prompts[1:], tok, max_new_tokens=6, samples=3, row_seeds=seeds[3:], temperature=1.0)
    assert both.tokens[:3] == alone.tokens and both.tokens[3:] == plain.tokens
    with pytest.raises(ValueError, match="built for 2 rows"):
        mg.generate(model, prompts + prompts[:1], tok, max_new_tokens=2, fwd_hooks=actadd.row_hooks([v, None]))


def test_the_methods_page_points_at_the_lines_it_quotes():
    """docs/methods.md quotes the line where each method is made and applied, with its place:
    each `quote` (file:N) must be on line N (line numbers drift when code moves)."""
    import re
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    page = (root / "docs" / "methods.md").read_text()
    found = re.findall(r"`([^`]+)`\s*\((actadd/[\w/]+\.py):(\d+)", page)
    assert len(found) >= 9
    for quote, path, line in found:
        assert quote in (root / path).read_text().splitlines()[int(line) - 1], (quote, path, line)
