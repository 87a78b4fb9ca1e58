"""The original repository's two toys (zoneout/toys/): settings against docs/replication.md §2.6, the semantic-consistency
metric, the addition generator, and a shrunk end-to-end run of each."""
from __future__ import annotations

import json

import pytest
import torch
import yaml

from zoneout.toys import semantic_consistency as sc
from zoneout.toys.common import ROOT


def spec(toy: str) -> dict:
    return yaml.safe_load((ROOT / "experiments" / f"{toy}.yaml").read_text())


# ------------------------------------------------------------------------------- settings (§2.6)
def test_semantic_consistency_settings_are_the_originals():
    toy = spec("toy_semantic_consistency")
    paper = toy["scales"]["paper"]
    assert (paper["dim"], paper["seq_len"], paper["steps"], paper["batch"]) == (2, 10, 100_000, 32)
    assert (paper["lr"], paper["init_noise"]) == (1e-4, 0.01)
    assert {v["name"]: v["zoneout"] for v in toy["variants"]} == {"zoneout": 0.1, "none": 0.0}
    assert toy["mask"] == "batch_shared"
    quick = toy["scales"]["quick"]
    assert quick["steps"] < paper["steps"] and {k: v for k, v in quick.items() if k not in (
        "steps", "log_every", "eval_examples", "noisy_eval_draws")} == {k: v for k, v in paper.items() if k not in (
            "steps", "log_every", "eval_examples", "noisy_eval_draws")}


# ------------------------------------------------------------------------------- semantic consistency
def test_keep_masks_shapes_and_rate():
    generator = torch.Generator().manual_seed(0)
    assert sc.keep_masks(0.0, 10, 32, 2, "batch_shared", generator) is None
    shared = sc.keep_masks(0.1, 10, 32, 2, "batch_shared", generator)
    assert shared.shape == (10, 1, 2) and shared.dtype == torch.bool  # the original's (seq_len, dim) mask
    per_example = sc.keep_masks(0.1, 1000, 32, 2, "per_example", generator)
    assert per_example.shape == (1000, 32, 2)
    assert abs(per_example.double().mean().item() - 0.1) < 0.01  # p = chance to KEEP


def test_unroll_keeps_where_the_mask_says():
    x = torch.randn(5, 2, dtype=torch.float64)
    minus_identity = -torch.eye(2, dtype=torch.float64)
    states = sc.unroll(minus_identity, x, 10)
    assert len(states) == 11 and torch.equal(states[1], -x) and torch.equal(states[10], x)
    keep = torch.zeros(10, 1, 2, dtype=torch.bool)
    keep[3, 0, 0] = True  # unit 0 skips one update: 9 sign flips, so it ends at -x_0
    end = sc.unroll(minus_identity, x, 10, keep)[-1]
    assert torch.equal(end[:, 0], -x[:, 0]) and torch.equal(end[:, 1], x[:, 1])


def test_metric_identity_is_consistent_minus_identity_is_not():
    x = torch.randn(4096, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    identity, minus = torch.eye(2, dtype=torch.float64), -torch.eye(2, dtype=torch.float64)
    kept = sc.map_state(identity, x, 10)
    assert kept["consistency"] == pytest.approx(1.0) and kept["dist_to_identity"] == 0.0
    assert kept["loss_noiseless"] == 0.0 and sc.noisy_loss(identity, x, 10, 0.1, 4, 0) == 0.0
    flipped = sc.map_state(minus, x, 10)
    assert flipped["consistency"] == pytest.approx(0.0, abs=1e-12)  # -1, +1, ... over t = 1..10
    assert flipped["similarity"][:4] == pytest.approx([1.0, -1.0, 1.0, -1.0])
    assert flipped["loss_noiseless"] == 0.0 and flipped["dist_to_minus_identity"] == 0.0
    assert [round(abs(a)) for a in flipped["eigen_angle_deg"]] == [180, 180]
    # Under noise p = 0.1 a unit ends flipped when it skipped an odd number of updates: loss 4 x_i^2 then.
    # P(odd) = (1 - (1 - 2p)^10) / 2, so the expected loss is 2 units * 4 * P(odd).
    expected = 2 * 4 * (1 - 0.8 ** 10) / 2
    assert sc.noisy_loss(minus, x, 10, 0.1, 64, 0) == pytest.approx(expected, rel=0.05)


def test_noiseless_loss_is_the_expected_loss_over_inputs():
    W = torch.tensor([[0.9, 0.2], [-0.1, 1.05]], dtype=torch.float64)
    x = torch.randn(200_000, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    monte_carlo = (sc.unroll(W, x, 10)[-1] - x).pow(2).sum(-1).mean().item()
    assert sc.map_state(W, x[:10], 10)["loss_noiseless"] == pytest.approx(monte_carlo, rel=0.02)


@pytest.fixture(scope="module")
def semantic_report(tmp_path_factory):
    out_dir = tmp_path_factory.mktemp("semantic")
    assert sc.main(["--scale", "quick", "--seeds", "0", "1", "--steps", "200", "--out-dir", str(out_dir)]) == 0
    return json.loads((out_dir / "toy_semantic_consistency.json").read_text()), out_dir


def test_semantic_consistency_end_to_end(semantic_report):
    report, out_dir = semantic_report
    assert report["scale"] == "quick" and report["seeds"] == [0, 1] and report["mask"] == "batch_shared"
    assert report["device"].startswith("cpu") and report["commit"] and report["wall_seconds"] > 0
    assert set(report["variants"]) == {"zoneout", "none"}
    for variant in report["variants"].values():
        assert [run["seed"] for run in variant["runs"]] == [0, 1]
        for run in variant["runs"]:
            assert len(run["similarity"]) == 11 and run["similarity"][0] == pytest.approx(1.0)
            assert run["curve"][-1]["step"] == 200 and len(run["curve"]) == 4  # quick logs every 50 steps
    # Without zoneout W0 = -I + noise is already a solution: it stays there.
    for run in report["variants"]["none"]["runs"]:
        assert run["dist_to_minus_identity"] < 0.1 and run["loss_noiseless"] < 1e-3
    markdown = (out_dir / "toy_semantic_consistency.md").read_text()
    assert "QUICK SCALE" in markdown and "Verdict:" in markdown and report["commit"] in markdown
    assert (out_dir / "toy_semantic_consistency.png").stat().st_size > 0


def test_semantic_consistency_variants_share_inputs_and_initial_map():
    settings = dict(spec("toy_semantic_consistency")["scales"]["quick"], steps=1, log_every=1)
    x = torch.randn(8, 2, dtype=torch.float64)
    # With p = 0 for both, two trainings of a seed are identical; with another seed they differ.
    first, again = sc.train(settings, 0.0, "batch_shared", 3, x), sc.train(settings, 0.0, "batch_shared", 3, x)
    assert torch.equal(first["W"], again["W"])
    assert not torch.equal(first["W"], sc.train(settings, 0.0, "batch_shared", 4, x)["W"])


@pytest.mark.parametrize("args, message", [
    (["--scale", "huge"], "--scale=huge: unknown; allowed: paper, quick"),
    (["--mask", "rows"], "--mask=rows: allowed: batch_shared, per_example"),
    (["--steps", "0"], "--steps=0: must be a positive integer"),
    (["--seeds", "1", "1"], "--seeds=1 1: each seed once"),
    (["--variants", "dropout"], "--variants: unknown dropout; allowed: zoneout, none")])
def test_semantic_consistency_bad_arguments_fail_in_one_line(capsys, tmp_path, args, message):
    assert sc.main(args + ["--out-dir", str(tmp_path)]) == 2
    assert capsys.readouterr().err == f"error: {message}\n"
    assert not list(tmp_path.iterdir())


# ------------------------------------------------------------------------------- seq2seq addition
from zoneout.toys import seq2seq_addition as s2s  # noqa: E402


def test_seq2seq_settings_are_the_originals():
    toy = spec("toy_seq2seq_addition")
    paper = toy["scales"]["paper"]
    assert (paper["hidden"], paper["layers"], paper["batch"], paper["lr"]) == (128, 2, 32, 0.01)
    assert (paper["epochs"], paper["batches_per_epoch"], paper["lr_decay"]) == (40, 20, 0.95)
    assert (paper["advance_below"], paper["val_batches"], paper["init_range"]) == (0.10, 128, 0.08)
    assert {v["name"]: (v["zoneout_cell"], v["zoneout_hidden"]) for v in toy["variants"]} == {
        "zoneout": (0.05, 0.0), "none": (0.0, 0.0)}
    assert "the original's is missing" in toy["generator"]  # says the generator is ours
    long = toy["scales"]["long"]  # only trained longer
    assert long["epochs"] == 2 * paper["epochs"] and {**long, "epochs": 40} == paper


def test_generator_answers_are_exact_and_levels_have_their_digits():
    generator = s2s.AdditionGenerator(max_difficulty=3, seed=0)
    assert (generator.input_len, generator.output_len) == (7, 4)
    for difficulty in (1, 2, 3):
        a, b = generator.operands(difficulty, 500)
        low = 0 if difficulty == 1 else 10 ** (difficulty - 1)
        assert all(low <= n < 10 ** difficulty for n in a + b)
        assert len({len(str(n)) for n in a + b}) == 1  # exactly `difficulty` digits each
        inputs, targets = generator.encode(a, b)
        assert inputs.shape == (500, 7) and targets.shape == (500, 4)
        for text, answer, x, y in zip(s2s.decode(inputs), s2s.decode(targets), a, b):
            left, right = text.split("+")
            assert (int(left), int(right)) == (x, y) and int(answer) == x + y
    inputs, targets = generator.encode([7, 99], [5, 1])
    assert ["".join(s2s.SYMBOLS[i] for i in row) for row in inputs.tolist()] == ["____7+5", "___99+1"]
    assert ["".join(s2s.SYMBOLS[i] for i in row) for row in targets.tolist()] == ["12__", "100_"]


def test_generator_is_seeded_and_checks_difficulty():
    first, second = s2s.AdditionGenerator(3, 5).batch(2, 64), s2s.AdditionGenerator(3, 5).batch(2, 64)
    assert all(torch.equal(x, y) for x, y in zip(first, second))
    assert not torch.equal(first[0], s2s.AdditionGenerator(3, 6).batch(2, 64)[0])
    with pytest.raises(ValueError, match="difficulty=4: must be between 1 and 3"):
        s2s.AdditionGenerator(3, 0).operands(4, 1)


def test_sequence_accuracy_is_exact_match_and_greedy_feeds_back_its_argmax():
    torch.manual_seed(0)
    model = s2s.Seq2SeqAdder(hidden=8, layers=2, zoneout_cell=0.05, zoneout_hidden=0.0, init_range=0.08)
    assert isinstance(model.decoder[0], s2s.ZoneoutLSTMCell) and model.decoder[0].zoneout_cell == 0.05
    inputs, targets = s2s.AdditionGenerator(2, 0).batch(2, 16)
    model.eval()
    predicted = model.greedy(inputs, targets.shape[1])
    # Greedy = teacher forcing on its own outputs (eval: zoneout's expectation, no noise, so deterministic).
    assert torch.equal(model(inputs, predicted).argmax(-1), predicted)
    assert s2s.sequence_accuracy(model, inputs, predicted) == 1.0
    wrong = predicted.clone()
    wrong[0, -1] = (wrong[0, -1] + 1) % len(s2s.SYMBOLS)  # one symbol off, padding included: that example fails
    assert s2s.sequence_accuracy(model, inputs, wrong) == pytest.approx(15 / 16)


@pytest.fixture(scope="module")
def seq2seq_report(tmp_path_factory):
    out_dir = tmp_path_factory.mktemp("seq2seq")
    assert s2s.main(["--scale", "quick", "--seeds", "0", "1", "--epochs", "2", "--out-dir", str(out_dir)]) == 0
    return json.loads((out_dir / "toy_seq2seq_addition.json").read_text()), out_dir


def test_seq2seq_end_to_end(seq2seq_report):
    report, out_dir = seq2seq_report
    assert report["scale"] == "quick" and report["seeds"] == [0, 1] and report["settings"]["epochs"] == 2
    assert report["device"].startswith("cpu") and report["commit"] and "ours" in report["generator"].lower()
    for variant in report["variants"].values():
        assert [run["seed"] for run in variant["runs"]] == [0, 1]
        for run in variant["runs"]:
            assert [h["epoch"] for h in run["history"]] == [1, 2] and run["history"][0]["difficulty"] == 1
            assert 0.0 <= run["test_accuracy"] <= 1.0 and set(run["test_accuracy_by_difficulty"]) == {"1", "2"}
    markdown = (out_dir / "toy_seq2seq_addition.md").read_text()
    assert "QUICK SCALE" in markdown and "Verdict:" in markdown and "Generator:" in markdown
    assert (out_dir / "toy_seq2seq_addition.png").stat().st_size > 0


def test_curriculum_advances_and_decays_the_learning_rate(monkeypatch):
    """With the validation error scripted: below 0.10 moves up a level; at the top, a rise multiplies lr by 0.95."""
    errors = iter([0.5, 0.05, 0.3, 0.2, 0.4, 0.1])
    monkeypatch.setattr(s2s, "sequence_accuracy", lambda *args: 1.0 - next(errors))
    settings = dict(spec("toy_seq2seq_addition")["scales"]["quick"], hidden=4, epochs=6, batches_per_epoch=1)
    history = s2s.train(settings, {"name": "none", "zoneout_cell": 0.0, "zoneout_hidden": 0.0}, 0)["history"]
    assert [h["difficulty"] for h in history] == [1, 1, 2, 2, 2, 2]
    # epoch 4 (0.2 < 0.3) keeps lr; epoch 5 (0.4 > 0.2) decays it, seen from epoch 6; epoch 6 falls again.
    assert [h["lr"] for h in history] == pytest.approx([0.01] * 5 + [0.0095])


@pytest.mark.parametrize("args, message", [
    (["--scale", "paperr"], "--scale=paperr: unknown; allowed: paper, long, quick"),
    (["--epochs", "0"], "--epochs=0: must be a positive integer"),
    (["--max-difficulty", "-1"], "--max-difficulty=-1: must be a positive integer"),
    (["--seeds", "2", "2"], "--seeds=2 2: each seed once")])
def test_seq2seq_bad_arguments_fail_in_one_line(capsys, tmp_path, args, message):
    assert s2s.main(args + ["--out-dir", str(tmp_path)]) == 2
    assert capsys.readouterr().err == f"error: {message}\n"
    assert not list(tmp_path.iterdir())
