"""The latent-embedding baselines (LoRe, PAL-A, PAL-B) on a tiny random Llama: each trains its
users' embeddings with the generator, infers a held-out user's embedding without touching the
generator, and runs through ``popi eval`` with a one-token overhead; the transfer table refuses
them with a reason. Also Raw-Aligned end to end."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from popi_sdk.errors import ConfigError, InputError
from popi_sdk.eval.judges import OracleJudge
from popi_sdk.eval.methods import parse_methods

torch = pytest.importorskip("torch")

METHODS = ("lore", "pal-a", "pal-b")


def _users():
    from popi_sdk.data.synth import synth_users

    return synth_users("review", 8, seed=5, pairs=2, examples=(1, 2))


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    from popi_sdk.data.jsonl import write_jsonl

    folder = tmp_path_factory.mktemp("latent-data")
    users = _users()
    write_jsonl(folder / "train.jsonl", users[:6])
    write_jsonl(folder / "test.jsonl", users[6:])
    return folder


def _cfg(tiny_dir, data_dir, out, method, **overrides):
    from popi_sdk.train.latent import load_latent_config

    values = {
        "model": str(tiny_dir), "rank": 3, "beta": 0.5, "learning_rate": 1e-3,
        "embedding_learning_rate": 0.2, "batch_size": 64,  # every pair each step: one loss curve
        "max_steps": 4, "infer_steps": 4, "infer_learning_rate": 0.5, "device": "cpu",
    }
    values.update(overrides)
    return load_latent_config(preset="cpu-small", method=method, overrides=values, data=data_dir, out=out)


@pytest.fixture(scope="module")
def latent_run(tiny_dir, data_dir, tmp_path_factory):
    """One run folder holding all three methods, trained a few steps each."""
    from popi_sdk.train.latent import main

    out = tmp_path_factory.mktemp("latent-run")
    for method in METHODS:
        main(_cfg(tiny_dir, data_dir, out, method))
    return out


@pytest.mark.parametrize("method", METHODS)
def test_each_method_trains_the_embeddings_and_the_generator(method, latent_run, tiny_dir):
    from transformers import AutoModelForCausalLM

    from popi_sdk.train import latent_model as L

    folder = latent_run / method
    rows = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in rows]
    assert len(losses) == 4 and losses[-1] < losses[0]  # the same pairs each step: the loss falls
    model, _, encoder, meta = L.load(folder)
    assert meta["method"] == method and len(meta["train_users"]) == 6
    initial = L.make_encoder(method, meta["hidden_size"], 3, 6, meta["scale"], seed=0)
    assert not torch.equal(encoder.weights, initial.weights)  # every training user's weights moved
    moved = [n for n, p in encoder.named_parameters() if n != "weights"
             and not torch.equal(p, dict(initial.named_parameters())[n])]
    assert moved  # the basis / prototypes / prototype functions learned too
    base = AutoModelForCausalLM.from_pretrained(tiny_dir)
    changed = [n for n, p in model.named_parameters() if not torch.equal(p, base.state_dict()[n])]
    assert changed  # trained jointly with the generator


@pytest.mark.parametrize("method", METHODS)
def test_a_held_out_users_embedding_is_inferred_without_touching_the_generator(method, latent_run, tiny_dir, data_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from popi_sdk.data import read_users
    from popi_sdk.scoring import ReferenceCache, SequenceScorer
    from popi_sdk.train import latent_model as L

    model, tokenizer, encoder, meta = L.load(latent_run / method)
    base = AutoModelForCausalLM.from_pretrained(tiny_dir).eval()
    ref = ReferenceCache(SequenceScorer(base, AutoTokenizer.from_pretrained(tiny_dir)), "tiny")
    codec = L.Codec(tokenizer)
    users = read_users(data_dir / "test.jsonl")
    before = {n: p.clone() for n, p in [*model.named_parameters(), *encoder.named_parameters()]}

    def loss(logits):
        pairs = [p for u in users for p in u.signals.pairs]
        owner = torch.tensor([i for i, u in enumerate(users) for _ in u.signals.pairs])
        with torch.no_grad():
            return float(L.pair_loss(
                model, encoder, logits[owner], [codec.items(p.prompt, [p.chosen])[0] for p in pairs],
                [codec.items(p.prompt, [p.rejected])[0] for p in pairs], *ref.pairs(pairs),
                beta=meta["beta"], loss_type="dpo", pad_id=codec.slot_id).mean())

    logits = L.infer_weights(model, encoder, codec, [u.signals.pairs for u in users], ref,
                             steps=6, learning_rate=0.5, beta=meta["beta"])
    assert logits.shape == (2, 3) and logits.abs().sum() > 0  # moved off the uniform start
    assert loss(logits) < loss(torch.zeros(2, 3))  # fitted to the user's own pairs
    assert not torch.allclose(logits[0], logits[1])  # two users, two fits
    after = dict([*model.named_parameters(), *encoder.named_parameters()])
    assert all(torch.equal(before[n], after[n]) for n in before)  # nothing else changed
    assert all(p.grad is None for p in after.values())


@pytest.mark.parametrize("method", METHODS)
def test_evaluation_scores_each_user_with_their_own_vector(method, latent_run, tiny_dir, data_dir):
    """popi eval's margins are the generator's with the user's fitted vector in the slot, the
    same one sequence at a time as in padded batches, and another user's vector scores otherwise."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from popi_sdk.data import read_users
    from popi_sdk.eval.latent import LatentRun
    from popi_sdk.scoring import ReferenceCache, SequenceScorer
    from popi_sdk.train import latent_model as L

    base = AutoModelForCausalLM.from_pretrained(tiny_dir).eval()
    ref = ReferenceCache(SequenceScorer(base, AutoTokenizer.from_pretrained(tiny_dir)), "tiny")
    run = LatentRun(latent_run / method, ref, batch_size=4, progress=False)
    users = read_users(data_dir / "test.jsonl")
    margins = run.margins_for(users)
    assert len(margins) == sum(len(u.examples) for u in users)
    logits = run.logits(users)

    def margin(pair, user):
        items = run.codec.items(pair.prompt, [pair.chosen, pair.rejected])
        with torch.no_grad():
            lp = [L.response_logprobs(run.model, [it], run._vectors(logits[[user]], [it]), run.codec.slot_id)
                  for it in items]  # one sequence per call: no padding at all
        return float(lp[0] - lp[1])

    last = users[-1].examples[-1]
    assert margins[-1] == pytest.approx(margin(last, len(users) - 1), abs=1e-3)
    assert margins[-1] != pytest.approx(margin(last, 0), abs=1e-4)  # the vector matters


@pytest.mark.model
def test_popi_eval_runs_the_latent_methods_with_a_one_token_overhead(latent_run, tiny_dir, data_dir, tmp_path):
    from popi_sdk.cli import app

    out = tmp_path / "eval"
    result = CliRunner().invoke(app, [
        "eval", "--data", str(data_dir / "test.jsonl"), "--methods", "base,lore,pal-a,pal-b",
        "--base", str(tiny_dir), "--latent", str(latent_run), "--out", str(out),
        "--max-new-tokens", "3", "--no-progress",
    ])
    assert result.exit_code == 0, result.output
    results = json.loads((out / "results.json").read_text())
    for method, title in zip(METHODS, ("LoRe", "PAL-A", "PAL-B")):
        got = results["methods"][method]
        assert got["title"] == title and got["context_overhead"] == 1 and got["overhead_mark"] == "†"
        assert got["n_examples"] == results["methods"]["base"]["n_examples"] > 0
        assert got["generator"] == f"{method}:{latent_run / method}"
    # The held-out fit is its own phase; scoring and generating with the vectors are counted too.
    phases = results["stats"]["phase_seconds"]
    fits = sum(results["methods"][m]["user_fit_seconds"] for m in METHODS)
    assert phases["fitting users"] == pytest.approx(fits, abs=0.2) and fits > 0
    assert set(phases) == {"scoring", "generation", "judging", "fitting users"}
    assert 0 < sum(phases.values()) <= results["stats"]["seconds"] + 0.2  # rounded, counted once
    md = (out / "results.md").read_text()
    assert "| LoRe |" in md and " 1.0† |" in md and "† one special token" in md
    records = [json.loads(line) for line in (out / "examples.jsonl").read_text().splitlines()]
    judged = [r for r in records if r["kind"] == "judged" and r["method"] == "pal-b"]
    assert judged and all(isinstance(r["response"], str) for r in judged)


def test_latent_methods_fail_clearly_before_any_model_loads(latent_run, data_dir, tmp_path):
    from popi_sdk.data import read_users
    from popi_sdk.eval.runner import evaluate

    users = read_users(data_dir / "test.jsonl")
    no_model = "no-such-backend:x"  # loading it would fail differently: the checks come first
    with pytest.raises(InputError, match=r"lore cannot condition the transfer table's generators \(hf\).*"
                       "Evaluate lore without --generators"):
        evaluate(users, parse_methods("lore"), OracleJudge(), base=no_model, latent=str(latent_run),
                 generators=["hf"])
    with pytest.raises(InputError, match="pass --latent RUN"):
        evaluate(users, parse_methods("pal-a"), OracleJudge(), base=no_model)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(InputError, match=r"popi train latent --method pal-b"):
        evaluate(users, parse_methods("pal-b"), OracleJudge(), base=no_model, latent=str(empty))


def test_train_latent_cli_and_config_errors(tiny_dir, data_dir, tmp_path):
    from popi_sdk.cli import app

    result = CliRunner().invoke(app, [
        "train", "latent", "--method", "pal-b", "--preset", "cpu-small", "--data", str(data_dir),
        "--out", str(tmp_path / "run"), "--max-steps", "1", "--set", f"model={tiny_dir}",
        "--set", "device=cpu",
    ])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "run" / "pal-b" / "popi_latent.json").exists()
    assert "--latent" in result.output
    from popi_sdk.train.latent import load_latent_config

    with pytest.raises(ConfigError, match="field rnak: unknown field"):
        load_latent_config(preset="cpu-small", overrides=["rnak=3"])
    with pytest.raises(ConfigError, match="unknown latent preset 'nope'"):
        load_latent_config(preset="nope")


@pytest.mark.model
def test_raw_aligned_runs_end_to_end_on_a_tiny_model(tiny_dir, data_dir, tmp_path):
    """Raw-Aligned: every raw signal in the context of the trained generator (--generator). With a
    perturbed copy of the tiny model as that generator, its margins are the copy's own, not the
    base model's, and its overhead is Raw-Prompting's."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from popi_sdk.data import read_users
    from popi_sdk.eval.runner import evaluate
    from popi_sdk.scoring import SequenceScorer
    from popi_sdk.templates import raw_signals_messages

    trained = tmp_path / "generator"
    model = AutoModelForCausalLM.from_pretrained(tiny_dir)
    with torch.no_grad():
        torch.manual_seed(1)
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    model.save_pretrained(trained)
    AutoTokenizer.from_pretrained(tiny_dir).save_pretrained(trained)

    users = read_users(data_dir / "test.jsonl")
    results, records = evaluate(
        users, parse_methods("raw,raw-aligned", generator=str(trained)), OracleJudge(),
        base=str(tiny_dir), generator=str(trained), max_new_tokens=3, progress=False,
    )
    got = results["methods"]
    assert got["raw-aligned"]["title"] == "Raw-Aligned"
    assert got["raw-aligned"]["context_overhead"] == got["raw"]["context_overhead"] > 0
    scorer = SequenceScorer(model.eval(), AutoTokenizer.from_pretrained(trained))
    want = []
    for u in users:
        for p in u.examples:
            lp = scorer.logprobs([raw_signals_messages(p.prompt, u.signals)] * 2, [p.chosen, p.rejected])
            want.append(float(lp[0] - lp[1]))
    mine = [r["margin"] for r in records if r["method"] == "raw-aligned" and r["kind"] == "example"]
    assert mine == pytest.approx(want, abs=1e-3)
    assert got["raw-aligned"]["mean_margin"] != pytest.approx(got["raw"]["mean_margin"], abs=1e-3)
    assert got["raw-aligned"]["n_judged"] == got["raw"]["n_judged"] > 0


def test_train_latent_bad_paths_fail_before_any_model_loads(data_dir, tmp_path):
    from popi_sdk.cli import app

    afile = tmp_path / "file.txt"
    afile.write_text("keep me")
    cases = [
        (["--data", str(data_dir), "--out", str(afile)], "is a file; the run folder must be a folder"),
        (["--data", str(tmp_path / "nope"), "--out", str(tmp_path / "run")], "does not exist"),
        (["--data", str(data_dir), "--out", str(tmp_path / "run"), "--set", "beta=-1"],
         "field beta: Input should be greater than 0"),
    ]
    for argv, message in cases:
        result = CliRunner().invoke(app, ["train", "latent", "--method", "lore", *argv,
                                          "--set", "model=no/such/model"])
        assert isinstance(result.exception, ConfigError), result.output
        assert message in str(result.exception)
    assert afile.read_text() == "keep me" and not (tmp_path / "run").exists()


def test_a_base_model_other_than_the_runs_start_is_warned(latent_run, tiny_dir, caplog):
    from types import SimpleNamespace

    from popi_sdk.eval.latent import load_latent_runs

    folders = {"lore": latent_run / "lore"}
    for path, warned in ((str(tiny_dir), False), ("/elsewhere/model", True)):
        caplog.clear()
        base = SimpleNamespace(ref=None, backend=SimpleNamespace(path=path))
        with caplog.at_level("WARNING"):
            runs = load_latent_runs(folders, base, batch_size=2, progress=False)
        assert runs["lore"].meta["method"] == "lore"
        assert (f"pass --base {tiny_dir}" in caplog.text) is warned
