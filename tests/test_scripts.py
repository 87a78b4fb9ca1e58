"""make_table / compare / replicate on synthetic run folders, and gradient_flow.py on a tiny real pMNIST run."""
from __future__ import annotations

import csv
import io
import json
import math
import shutil
import statistics
import sys
from pathlib import Path

import pytest
import torch
import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))
import compare  # noqa: E402
import gradient_flow  # noqa: E402
import make_table  # noqa: E402
import replicate  # noqa: E402

ZONEOUT_VALID, ZONEOUT_TEST, ZONEOUT_EPOCHS = [1.50, 1.52, 1.55], [1.40, 1.43, 1.41], [3, 3, 3]
ZONEOUT_WALL = [600.0, 1260.0, 3000.0]  # seconds; seed 2 resumed (its summary counts only its last process)


def write_run(root: Path, name: str, seed: int, valid: float, test: float, epochs: int = 3,
              scale: str = "quick", status: str = "finished", metric: str = "bpc", best_epoch: int | None = None,
              wall_seconds: float | None = None, resumed_from_epoch: int | None = None) -> Path:
    """A run folder as zoneout/train.py leaves it (quick's cap is 3 epochs: the default ran to it), its
    config.yaml the experiment as composed at that scale (none for a made-up experiment or scale)."""
    run_dir = root / scale / name / f"seed{seed}"
    run_dir.mkdir(parents=True)
    if scale in make_table.scales() and (make_table.CONFIGS / "experiment" / f"{name}.yaml").exists():
        config = {**make_table.composed_config(name, scale), "seed": seed}
        (run_dir / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    curve = [valid + 0.1 * (epochs - e) for e in range(1, epochs + 1)]  # ends at the best value
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps({"epoch": e, f"valid_{metric}": v}) + "\n"
                                                   for e, v in enumerate(curve, start=1)))
    summary = {"name": name, "dataset": name.split("/")[0], "metric": metric, "scale": scale, "seed": seed,
               "status": status, "best_valid": valid, "test": test, "epochs_run": epochs, "device": "cpu (test)",
               "best_epoch": best_epoch or epochs,
               "commit": "abc1234"}
    if wall_seconds is not None:
        summary["wall_seconds"] = wall_seconds
    if resumed_from_epoch is not None:
        summary["resumed_from_epoch"] = resumed_from_epoch
    (run_dir / "summary.json").write_text(json.dumps(summary))
    return run_dir


@pytest.fixture(autouse=True)
def own_results(tmp_path, monkeypatch):
    """Tables and their kept runs go to, and are found in, a results/ of the test's own: the committed
    results/<scale>/runs/ would otherwise count as finished runs (replicate skips them, make_table uses them)."""
    monkeypatch.setenv("ZONEOUT_RESULTS_DIR", str(tmp_path / "results"))


@pytest.fixture
def runs(tmp_path, monkeypatch):
    root = tmp_path / "runs"
    monkeypatch.setenv("ZONEOUT_RUNS_DIR", str(root))
    dirs = [write_run(root, "ptb_char/zoneout", seed, v, t, e, wall_seconds=w, resumed_from_epoch=r)
            for seed, v, t, e, w, r in zip(range(3), ZONEOUT_VALID, ZONEOUT_TEST, ZONEOUT_EPOCHS, ZONEOUT_WALL, (None, None, 2))]
    dirs.append(write_run(root, "ptb_char/recurrent_batchnorm", 0, 1.45, 1.38))       # a cited row we ran
    dirs.append(write_run(root, "ptb_char/unregularized", 0, 1.6, 1.5, status="running"))  # unfinished: "not run"
    dirs.append(write_run(root, "ptb_char/zoneout", 7, 9.0, 9.0, scale="paper"))      # another scale: ignored
    return root, dirs


def set_setting(run_dir: Path, dotted: str, value) -> None:
    """One setting of a run folder's config.yaml changed, as a command-line override would have."""
    config = yaml.safe_load((run_dir / "config.yaml").read_text())
    *groups, key = dotted.split(".")
    node = config
    for group in groups:
        node = node[group]
    node[key] = value
    (run_dir / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))


def table_line(markdown: str, label: str) -> list[str]:
    line = next(l for l in markdown.splitlines() if l.startswith(f"| {label} |"))
    return [cell.strip() for cell in line.strip("|").split("|")]


def test_make_table_means_paper_delta_and_row_kinds(runs, tmp_path):
    spec = make_table.load_table_spec("table1_ptb_char")
    rows = make_table.build_table(spec, "quick", out_dir=tmp_path / "out")
    markdown = (tmp_path / "out" / "table1_ptb_char.md").read_text()
    assert "QUICK SCALE" in markdown and spec["quick_scale"] in markdown
    cells = table_line(markdown, "Zoneout (z_c = 0.5, z_h = 0.05)")
    valid_mean, valid_std = statistics.mean(ZONEOUT_VALID), statistics.stdev(ZONEOUT_VALID)
    test_mean, test_std = statistics.mean(ZONEOUT_TEST), statistics.stdev(ZONEOUT_TEST)
    assert cells[1:6] == [f"{valid_mean:.3f} ± {valid_std:.3f}", f"{test_mean:.3f} ± {test_std:.3f}", "1.362", "1.27",
                          f"{test_mean - 1.27:+.3f}"]
    assert cells[6:10] == ["3*/3*/3*", "10/21/50+", "0 1 2", "cpu (test)"]  # quick runs stop at its 3-epoch cap
    # the resumed run is marked; the cited row's run has no wall time ("–"): left out of the total, and said so
    assert table_line(markdown, "Recurrent batchnorm (Cooijmans et al.; ours at batch 32) (cited)")[7] == "–"
    assert "Wall time: 3 runs, 1 h 21 min of training in all" in markdown and "+ marks a resumed run" in markdown
    assert "; 1 run(s) without a recorded wall time (–) are not in it)." in markdown
    assert table_line(markdown, "Unregularized LSTM")[1:5] == ["not run", "not run", "1.466", "1.356"]
    cited_run = table_line(markdown, "Recurrent batchnorm (Cooijmans et al.; ours at batch 32) (cited)")
    assert cited_run[1:6] == ["1.450", "1.380", "–", "1.32", "+0.060"]  # cited but run: our numbers are shown
    assert table_line(markdown, "HyperLSTM + LayerNorm (Ha et al., 2016) (cited)")[1:5] == ["–", "–", "1.281", "1.25"]
    parsed = list(csv.DictReader(io.StringIO((tmp_path / "out" / "table1_ptb_char.csv").read_text())))
    assert len(parsed) == len(spec["rows"]) == len(rows)
    zoneout = next(r for r in parsed if r["experiment"] == "ptb_char/zoneout")
    assert float(zoneout["valid_mean"]) == pytest.approx(valid_mean) and float(zoneout["test_std"]) == pytest.approx(test_std)
    assert zoneout["n_seeds"] == "3" and float(zoneout["paper_test"]) == 1.27
    assert (tmp_path / "out" / "table1_ptb_char.png").stat().st_size > 0


def entry(name, mean=None, std=0.0, seeds=0, paper=None):
    return {"row": name, "n_seeds": seeds, "test_mean": mean, "test_std": std, "paper_test": paper, "paper_valid": None}


@pytest.mark.parametrize("better, than, verdict, delta, stderr", [
    (entry("a", 1.0, 0.01, 3, 1.2), entry("b", 1.1, 0.01, 3, 1.3), "holds", -0.1, math.sqrt(2 * 0.01 ** 2 / 3)),
    (entry("a", 1.2, 0.01, 3, 1.2), entry("b", 1.1, 0.01, 3, 1.3), "does not hold", 0.1, math.sqrt(2 * 0.01 ** 2 / 3)),
    (entry("a", 1.00, 0.1, 3, 1.2), entry("b", 1.01, 0.1, 2, 1.3), "holds (within seed noise)", -0.01,
     math.sqrt(0.1 ** 2 / 3 + 0.1 ** 2 / 2)),
    (entry("a", 1.0, 0.0, 1, 1.2), entry("b", 1.1, 0.01, 3, 1.3), "holds (1 seed: noise unknown)", -0.1, None),
    (entry("a", 1.0, 0.0, 1, 1.2), entry("b", seeds=0, paper=1.3), "not run", None, None),
])
def test_claims_verdicts(better, than, verdict, delta, stderr):
    spec = {"claims_split": "test", "claims": [{"better": "a", "than": "b"}]}
    [claim] = make_table.check_claims(spec, {"a": better, "b": than})
    assert claim["verdict"] == verdict and (claim["paper_better"], claim["paper_than"]) == (1.2, 1.3)
    assert claim["delta"] == (None if delta is None else pytest.approx(delta))
    assert claim["stderr"] == (None if stderr is None else pytest.approx(stderr))


def test_table_checks_the_papers_orderings(runs, tmp_path):
    root, _ = runs
    write_run(root, "ptb_char/unregularized", 1, 1.6, 1.5)  # one finished seed of the baseline
    make_table.build_table(make_table.load_table_spec("table1_ptb_char"), "quick", out_dir=tmp_path / "out")
    markdown = (tmp_path / "out" / "table1_ptb_char.md").read_text()
    assert "## The paper's orderings, checked on our runs (test, lower is better)" in markdown
    assert "1 of 10 hold (8 not checked: a row not run yet)." in markdown  # zoneout beats unregularized, not our BN row; 8 claims have rows not run
    zoneout = statistics.mean(ZONEOUT_TEST)
    cells = table_line(markdown, "Zoneout (z_c = 0.5, z_h = 0.05) < Unregularized LSTM")
    assert cells[1:] == ["1.27 < 1.356", f"{zoneout:.3f} vs 1.500", f"{zoneout - 1.5:+.3f}", "holds (1 seed: noise unknown)"]
    bn = table_line(markdown, "Zoneout (z_c = 0.5, z_h = 0.05) < Recurrent batchnorm (Cooijmans et al.; ours at batch 32)")
    assert bn[1:] == ["1.27 < 1.32", f"{zoneout:.3f} vs 1.380", f"{zoneout - 1.38:+.3f}", "does not hold (1 seed: noise unknown)"]
    assert table_line(markdown, "Zoneout (z_c = 0.5, z_h = 0.05) < Weight noise (σ = 0.075)")[4] == "not run"


def test_a_table_keeps_its_runs_and_rebuilds_from_them_in_a_fresh_clone(runs, tmp_path, monkeypatch, capsys):
    spec = make_table.load_table_spec("table1_ptb_char")
    out = tmp_path / "out"
    make_table.build_table(spec, "quick", out_dir=out)
    kept = out / "runs" / "ptb_char" / "zoneout"
    assert sorted(p.name for p in kept.iterdir()) == ["seed0", "seed1", "seed2"]
    assert sorted(p.name for p in (kept / "seed0").iterdir()) == ["config.yaml", "metrics.jsonl", "summary.json"]  # no checkpoints
    assert not (out / "runs" / "ptb_char" / "unregularized").exists()  # unfinished runs are not kept
    tables = lambda: {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}  # noqa: E731
    before = tables()
    monkeypatch.setenv("ZONEOUT_RUNS_DIR", str(tmp_path / "elsewhere"))  # e.g. a fresh clone: no runs/
    make_table.build_table(spec, "quick", out_dir=out)
    assert tables() == before and "also in" not in capsys.readouterr().err
    # A table whose runs are gone from both places is left as it is, unless asked.
    shutil.rmtree(out / "runs")
    with pytest.raises(ValueError, match=r"results for 2 row\(s\) with no finished run .* left as it is"):
        make_table.build_table(spec, "quick", out_dir=out)
    assert tables() == before
    make_table.build_table(spec, "quick", out_dir=out, force=True)  # asked for: rewritten, rows now "not run"
    assert table_line((out / "table1_ptb_char.md").read_text(), "Zoneout (z_c = 0.5, z_h = 0.05)")[1] == "not run"


def test_make_table_refusal_is_one_line_and_exit_2(runs, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(make_table, "ROOT", tmp_path)  # results/ under tmp_path; experiments/ copied there
    (tmp_path / "experiments").mkdir()
    (tmp_path / "experiments" / "table1_ptb_char.yaml").write_text((ROOT / "experiments" / "table1_ptb_char.yaml").read_text())
    monkeypatch.setattr(sys, "argv", ["make_table.py", "table1_ptb_char", "--scale", "quick"])
    assert make_table.main() == 0
    capsys.readouterr()
    monkeypatch.setenv("ZONEOUT_RUNS_DIR", str(tmp_path / "elsewhere"))
    shutil.rmtree(tmp_path / "results" / "quick" / "runs")  # the runs gone, and the table's kept copies too
    assert make_table.main() == 2
    error = capsys.readouterr().err
    assert error.startswith("error: ") and error.count("\n") == 1 and "left as it is" in error


@pytest.mark.parametrize("table, maker", [("fig6_gradient_flow", "scripts/gradient_flow.py"),
                                          ("toy_seq2seq_addition", "the command in experiments/toy_seq2seq_addition.yaml")])
def test_make_table_refuses_a_spec_another_script_makes(table, maker, monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", ["make_table.py", table, "--scale", "quick"])
    assert make_table.main() == 2
    assert capsys.readouterr().err == f"error: {table} is not built from run folders: it is made by {maker}\n"


def test_paper_scale_label(runs, tmp_path):
    make_table.build_table(make_table.load_table_spec("table1_ptb_char"), "paper", out_dir=tmp_path / "paper")
    markdown = (tmp_path / "paper" / "table1_ptb_char.md").read_text()
    assert "Paper scale." in markdown and "QUICK SCALE" not in markdown
    assert table_line(markdown, "Zoneout (z_c = 0.5, z_h = 0.05)")[1:3] == ["9.000", "9.000"]  # one seed: no ±


def test_replicate_runs_rows_with_an_experiment_only(runs, monkeypatch):
    commands = []
    monkeypatch.setattr(replicate.subprocess, "run", lambda command, cwd: commands.append(command) or
                        type("Done", (), {"returncode": 0})())
    monkeypatch.setattr(replicate, "build_table", lambda *args, **kwargs: [])
    monkeypatch.setattr(sys, "argv", ["replicate.py", "table1_ptb_char", "--scale", "quick", "--seeds", "0", "1"])
    assert replicate.main() == 0
    launched = [(c[3], c[4]) for c in commands]
    spec = make_table.load_table_spec("table1_ptb_char")
    expected = [(f"experiment={r['experiment']}", f"seed={s}") for r in spec["rows"] if r["experiment"] for s in (0, 1)]
    for finished in [("ptb_char/zoneout", 0), ("ptb_char/zoneout", 1), ("ptb_char/recurrent_batchnorm", 0)]:
        expected.remove((f"experiment={finished[0]}", f"seed={finished[1]}"))  # finished already: skipped
    # Cited rows that have an experiment run too; rows without one (HyperLSTM, HM-LSTM) do not.
    assert launched == expected and ("experiment=ptb_char/recurrent_batchnorm", "seed=1") in launched


def test_replicate_rows_subset_resumes_and_builds_the_whole_table(runs, monkeypatch, capsys):
    commands, built = [], []
    monkeypatch.setattr(replicate.subprocess, "run", lambda command, cwd: commands.append(command) or
                        type("Done", (), {"returncode": 0})())
    monkeypatch.setattr(replicate, "build_table", lambda spec, *args, **kwargs: built.append(spec) or [])
    monkeypatch.setattr(sys, "argv", ["replicate.py", "table1_ptb_char", "trainer.threads=1", "--scale", "quick",  # as make does
                                      "--seeds", "0", "1", "2", "3", "--rows", "unregularized", "zoneout"])
    assert replicate.main() == 0
    launched = [(c[3], c[4]) for c in commands]
    # zoneout seeds 0-2 finished already (skipped); the unfinished unregularized seed 0 runs again, resuming.
    assert launched == [("experiment=ptb_char/unregularized", f"seed={s}") for s in range(4)] + [
        ("experiment=ptb_char/zoneout", "seed=3")]
    assert all("trainer.resume=true" in c and c[-1] == "trainer.threads=1" and "scale=small" not in c for c in commands)
    assert len(built[0]["rows"]) == len(make_table.load_table_spec("table1_ptb_char")["rows"])  # the whole table
    monkeypatch.setattr(sys, "argv", ["replicate.py", "table1_ptb_char", "--scale", "quick", "--rows", "zonout"])
    assert replicate.main() == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and error.startswith("error: --rows 'zonout' is not a row of table1_ptb_char; allowed: ")


def test_small_scale_table_is_labelled_as_evidence_scale(runs, tmp_path):
    root, _ = runs
    write_run(root, "ptb_char/zoneout", 0, 2.2, 2.1, scale="small")
    make_table.build_table(make_table.load_table_spec("table1_ptb_char"), "small", out_dir=tmp_path / "small")
    markdown = (tmp_path / "small" / "table1_ptb_char.md").read_text()
    spec = make_table.load_table_spec("table1_ptb_char")
    assert "SMALL SCALE" in markdown and spec["small_scale"] in markdown and "QUICK" not in markdown
    assert table_line(markdown, "Zoneout (z_c = 0.5, z_h = 0.05)")[1:3] == ["2.200", "2.100"]  # quick runs ignored


def test_replicate_reports_a_refused_table(runs, monkeypatch, capsys):
    monkeypatch.setattr(replicate.subprocess, "run", lambda command, cwd: type("Done", (), {"returncode": 0})())
    def refuse(*args, **kwargs):
        raise ValueError("results/quick/table1_ptb_char.md has results for 1 row(s) ...; left as it is")
    monkeypatch.setattr(replicate, "build_table", refuse)
    monkeypatch.setattr(sys, "argv", ["replicate.py", "table1_ptb_char", "--scale", "quick"])
    assert replicate.main() == 1
    assert capsys.readouterr().err.startswith("error: results/quick/table1_ptb_char.md has results")


def test_compare_groups_seeds_and_finds_paper_rows(runs, tmp_path, capsys):
    _, dirs = runs
    assert compare.main([str(d) for d in dirs[:4]] + ["--out", str(tmp_path / "cmp" / "zoneout_vs_bn.md")]) == 0
    markdown = capsys.readouterr().out
    assert "QUICK SCALE" in markdown and "1x128 LSTM" in markdown
    cells = table_line(markdown, "Zoneout (z_c = 0.5, z_h = 0.05)")
    assert cells[1] == f"{statistics.mean(ZONEOUT_VALID):.3f} ± {statistics.stdev(ZONEOUT_VALID):.3f}"
    assert cells[3:5] == ["1.362", "1.27"] and cells[7:9] == ["10/21/50+", "0 1 2"]
    assert table_line(markdown, "Recurrent batchnorm (Cooijmans et al.; ours at batch 32) (cited)")[1:3] == ["1.450", "1.380"]
    assert (tmp_path / "cmp" / "zoneout_vs_bn.md").read_text() + "\n" == markdown
    parsed = list(csv.DictReader(io.StringIO((tmp_path / "cmp" / "zoneout_vs_bn.csv").read_text())))
    assert [r["experiment"] for r in parsed] == ["ptb_char/zoneout", "ptb_char/recurrent_batchnorm"]
    assert (tmp_path / "cmp" / "zoneout_vs_bn.png").is_file()


def test_compare_unknown_row_keeps_its_name(tmp_path, capsys):
    run = write_run(tmp_path, "smoke/ptb_char_zoneout", 0, 2.0, 2.1, scale="paper")
    assert compare.main([str(run)]) == 0
    assert table_line(capsys.readouterr().out, "smoke/ptb_char_zoneout")[1:5] == ["2.000", "2.100", "–", "–"]


@pytest.mark.parametrize("case", ["missing", "unfinished", "no_metrics", "mixed_scale"])
def test_compare_bad_folders_fail_in_one_line(runs, tmp_path, capsys, case):
    root, dirs = runs
    if case == "missing":
        args = [str(dirs[0]), str(tmp_path / "nope")]
    elif case == "unfinished":
        args = [str(dirs[4])]
    elif case == "no_metrics":
        (dirs[1] / "metrics.jsonl").unlink()
        args = [str(dirs[1])]
    else:
        args = [str(dirs[0]), str(dirs[5])]
    assert compare.main(args) == 2
    error = capsys.readouterr().err
    assert error.startswith("error: ") and error.count("\n") == 1


# ----------------------------------------------------------------------------------- gradient flow
PIXELS, STEPS = 40, 3


@pytest.fixture(scope="module")
def gradient_flow_report(shared_data, tmp_path_factory):
    out_dir = tmp_path_factory.mktemp("gradient_flow")
    data_dir = tmp_path_factory.mktemp("mnist_data")
    status = gradient_flow.main(["--scale", "quick", "--hidden", "8", "--steps", str(STEPS), "--pixels", str(PIXELS),
                                 "--valid-batch", "32", "--device", "cpu", "--data-dir", str(data_dir), "--seeds", "0", "1",
                                 "--early", "10", "--mirror", str(shared_data), "--out-dir", str(out_dir)])
    assert status == 0
    return json.loads((out_dir / "gradient_flow.json").read_text()), out_dir


def test_gradient_flow_normalised_per_model_and_seed(gradient_flow_report):
    report, out_dir = gradient_flow_report
    assert set(report["models"]) == {"unregularized", "zoneout", "cell_dropout"}
    assert report["scale"] == "quick" and report["hidden_size"] == 8 and report["pixels"] == PIXELS
    assert report["steps"] == {name: STEPS for name in report["models"]} and report["seeds"] == [0, 1]
    assert report["device"].startswith("cpu") and report["commit"] and report["early_steps"] == 10
    for model in report["models"].values():
        assert [run["seed"] for run in model["runs"]] == [0, 1]
        for run in model["runs"]:
            raw, normalized = torch.tensor(run["grad_norm"]), torch.tensor(run["normalized_grad_norm"])
            assert len(normalized) == PIXELS and (normalized >= 0).all() and run["steps"] == STEPS
            assert normalized.sum().item() == pytest.approx(1.0, abs=1e-6)
            assert torch.allclose(normalized, raw / raw.sum(), atol=1e-9)
            assert run["early_log10"] == pytest.approx(normalized[:10].double().log10().mean().item())
        # Another seed: other initial weights, data order and noise, so another gradient.
        assert model["runs"][0]["grad_norm"] != model["runs"][1]["grad_norm"]
    assert report["models"]["zoneout"]["zoneout_cell"] == 0.5 and report["models"]["cell_dropout"]["cell_dropout"] == 0.5
    # The paper's point (Figure 6): through zoneout the gradient reaches the first steps; through a dropped cell it vanishes.
    for seed in (0, 1):
        first = {name: model["runs"][seed]["normalized_grad_norm"][0] for name, model in report["models"].items()}
        assert first["zoneout"] > 100 * first["cell_dropout"]
    assert (out_dir / "gradient_flow.png").stat().st_size > 0


def test_gradient_flow_checks_the_papers_orderings_over_seeds(gradient_flow_report):
    report, out_dir = gradient_flow_report
    early = {name: [run["early_log10"] for run in model["runs"]] for name, model in report["models"].items()}
    claims = {(c["better"], c["than"]): c for c in report["claims"]}
    assert set(claims) == {("zoneout", "cell_dropout"), ("zoneout", "unregularized")}
    for (better, than), claim in claims.items():
        delta = statistics.mean(early[better]) - statistics.mean(early[than])
        stderr = math.sqrt(statistics.variance(early[better]) / 2 + statistics.variance(early[than]) / 2)
        assert claim["delta_log10"] == pytest.approx(delta) and claim["stderr"] == pytest.approx(stderr)
        assert claim["verdict"].startswith("holds" if delta > 0 else "does not hold")
        assert claim["seeds_where_it_holds"] == f"{sum(a > b for a, b in zip(early[better], early[than]))}/2"
    assert claims[("zoneout", "cell_dropout")]["verdict"] == "holds"  # many orders of magnitude, both seeds
    markdown = (out_dir / "gradient_flow.md").read_text()
    assert "QUICK SCALE" in markdown and "Seeds 0 1;" in markdown
    row = table_line(markdown, "Zoneout (z_c = 0.5) > Dropout on the recurrent cell (p = 0.5)")
    assert row[1:] == [f"{claims[('zoneout', 'cell_dropout')]['delta_log10']:+.2f} ± "
                       f"{claims[('zoneout', 'cell_dropout')]['stderr']:.2f}", "2/2", "holds"]


@pytest.mark.parametrize("training", [False, True])
def test_unrolled_loop_is_the_models_forward(training):
    """The per-step loop the gradients are taken in computes what the trained model computes."""
    from omegaconf import OmegaConf

    from zoneout.models.build import build_model

    model_cfg = OmegaConf.create({"cell": "lstm", "hidden_size": 6, "num_layers": 1, "input": "onehot", "embedding_size": None,
                                  "nonlinearity": "tanh", "init": "orthogonal", "init_range": 0.04, "forget_bias": 1.0,
                                  "impl": "auto"})
    reg = OmegaConf.load(ROOT / "configs" / "regularizer" / "none.yaml")
    reg.zoneout_cell, reg.zoneout_hidden = 0.5, 0.2
    torch.manual_seed(0)
    model = build_model(model_cfg, reg, None, 10, 12).train(training)
    pixels = torch.rand(4, 12)
    torch.manual_seed(1)
    expected = model(pixels)[0]
    torch.manual_seed(1)  # the same zoneout masks
    logits, candidates = gradient_flow.unrolled_forward(model, pixels, retain_cells=True)
    assert torch.allclose(logits, expected, atol=1e-5) and len(candidates) == 12


@pytest.mark.parametrize("args, message", [(["--pixels", "0"], "--pixels=0: must be between 1 and 784"),
                                           (["--seeds", "1", "1"], "--seeds=1 1: each seed once"),
                                           (["--early", "0"], "--early=0: must be a positive integer")])
def test_gradient_flow_bad_arguments_fail_in_one_line(capsys, args, message):
    assert gradient_flow.main(args) == 2
    assert capsys.readouterr().err == f"error: {message}\n"


def test_make_table_takes_the_newest_run_of_a_seed_found_twice(tmp_path, monkeypatch, capsys):
    """An older copy of the runs (e.g. moved aside, or a multirun) must not win by sorting after the new one."""
    import os

    root = tmp_path / "runs"
    monkeypatch.setenv("ZONEOUT_RUNS_DIR", str(root))
    new = write_run(root, "ptb_char/zoneout", 0, 1.5, 1.4)
    old = write_run(root / "zz_older_copy", "ptb_char/zoneout", 0, 2.5, 2.4)
    os.utime(old / "summary.json", (1_000_000, 1_000_000))
    [(summary, folder)] = make_table.find_runs("quick", "ptb_char/zoneout")
    assert folder == new and summary["test"] == 1.4
    assert "using the newest" in capsys.readouterr().err


def test_replicate_multirun_reports_each_unfinished_row_and_seed(runs, monkeypatch, capsys):
    """A multirun has one exit status for all jobs: each (row, seed) is read from its run folder."""
    root, _ = runs
    import os
    import time

    stale = write_run(root, "ptb_char/weight_noise", 0, 1.6, 1.5, status="running")
    (stale / "error.txt").write_text("an earlier attempt's error\n")
    os.utime(stale / "error.txt", (time.time() - 3600, time.time() - 3600))  # before this attempt: not reported

    def launcher(command):
        failed = root / "quick" / "ptb_char" / "norm_stabilizer" / "seed0"
        failed.mkdir(parents=True)
        (failed / "error.txt").write_text("regularizer.norm_stabilizer=-1: must be a number >= 0\n")
        diverged = write_run(root, "ptb_char/stochastic_depth", 0, 1.6, 1.5, status="diverged")
        summary = json.loads((diverged / "summary.json").read_text())
        (diverged / "summary.json").write_text(json.dumps({**summary, "error": "epoch 2: validation loss nan\nmore"}))
        return 1, ["Traceback (most recent call last):", "JobFailed: regularizer.norm_stabilizer=-1: must be ...",
                   "Set the environment variable HYDRA_FULL_ERROR=1 for a complete stack trace."]

    monkeypatch.setattr(replicate, "run_teeing_stderr", launcher)
    monkeypatch.setattr(replicate, "build_table", lambda *args, **kwargs: [])
    monkeypatch.setattr(sys, "argv", ["replicate.py", "table1_ptb_char", "--scale", "quick", "--launcher", "joblib",
                                      "--rows", "weight_noise", "norm_stabilizer", "stochastic_depth", "zoneout"])
    assert replicate.main() == 1
    error = capsys.readouterr().err
    assert error.splitlines() == [
        "error: 3 of 3 run(s) did not finish:",
        "  row weight_noise (ptb_char/weight_noise) seed 0: stopped while running with no error recorded (killed?); "
        "a rerun resumes from last.pt",
        "  row norm_stabilizer (ptb_char/norm_stabilizer) seed 0: regularizer.norm_stabilizer=-1: must be a number >= 0",
        "  row stochastic_depth (ptb_char/stochastic_depth) seed 0: epoch 2: validation loss nan",
    ]  # zoneout seed 0 had finished (the fixture's run): skipped, not launched
    assert replicate.launcher_error(["a", "JobFailed: x", "Set the environment variable HYDRA_FULL_ERROR=1 ..."]) == "JobFailed: x"


def test_a_run_ended_by_the_epoch_cap_is_marked(runs, tmp_path):
    root, _ = runs
    capped = write_run(root, "ptb_char/weight_noise", 0, 2.0, 1.9, epochs=4, scale="small")
    set_setting(capped, "trainer.max_epochs", 4)  # ran to the cap (another cap is still the same experiment)
    stopped = write_run(root, "ptb_char/weight_noise", 1, 2.1, 2.0, epochs=3, scale="small")
    set_setting(stopped, "trainer.max_epochs", 4)  # early stopping ended it
    make_table.build_table(make_table.load_table_spec("table1_ptb_char"), "small", out_dir=tmp_path / "small")
    markdown = (tmp_path / "small" / "table1_ptb_char.md").read_text()
    assert table_line(markdown, "Weight noise (σ = 0.075)")[6] == "4*/3"
    assert "stopped by the epoch cap" in markdown
    # The kept copy has the config too, so the mark survives a rebuild from results/ alone.
    assert (tmp_path / "small" / "runs" / "ptb_char" / "weight_noise" / "seed0" / "config.yaml").exists()


def test_replicate_skips_runs_a_table_kept_and_launches_only_what_is_missing(runs, tmp_path, monkeypatch, capsys):
    """A table growing over sessions: a fresh clone has no run folders, only the copies in results/."""
    root, _ = runs
    results = tmp_path / "results"
    monkeypatch.setenv("ZONEOUT_RESULTS_DIR", str(results))
    for seed in (0, 1, 2):  # unregularized finished in an earlier session: only its kept copy is here
        write_run(results / "small" / "runs", "ptb_char/unregularized", seed, 2.3, 2.2, scale="x", epochs=64, best_epoch=54)
    write_run(root, "ptb_char/zoneout", 1, 2.2, 2.1, scale="small", epochs=90, best_epoch=80)  # and zoneout seed 1 here
    for folder in (results / "small" / "runs" / "x").iterdir():
        folder.rename(results / "small" / "runs" / folder.name)  # kept copies sit at runs/<experiment>/seed<N>
    commands = []
    monkeypatch.setattr(replicate, "run_teeing_stderr", lambda command: commands.append(command) or (0, []))
    monkeypatch.setattr(replicate, "outcome", lambda *args: None)
    monkeypatch.setattr(replicate, "build_table", lambda *args, **kwargs: [])
    monkeypatch.setattr(sys, "argv", ["replicate.py", "table1_ptb_char", "--scale", "small", "--launcher", "joblib",
                                      "--seeds", "0", "1", "2", "--rows", "unregularized", "zoneout", "weight_noise"])
    assert replicate.main() == 0
    sweeps = sorted((c[4], c[5]) for c in commands)  # one multirun per set of rows missing the same seeds
    assert sweeps == [("experiment=ptb_char/weight_noise", "seed=0,1,2"), ("experiment=ptb_char/zoneout", "seed=0,2")]
    assert capsys.readouterr().out.count("[skip] ptb_char/unregularized") == 3


def test_replicate_continues_runs_the_epoch_cap_stopped_once_the_cap_is_raised(runs, tmp_path, monkeypatch, capsys):
    """small's char-PTB cap went from 100 to 200 epochs: a run that stopped at the old cap has work left
    (it continues from last.pt, or reruns where only the kept copy is left); early-stopped ones do not."""
    root, _ = runs
    results = tmp_path / "results"
    monkeypatch.setenv("ZONEOUT_RESULTS_DIR", str(results))
    write_run(root, "ptb_char/zoneout", 0, 2.2, 2.1, scale="small", epochs=100, best_epoch=100)  # the old cap
    write_run(root, "ptb_char/zoneout", 1, 2.2, 2.1, scale="small", epochs=200, best_epoch=199)  # today's cap
    write_run(root, "ptb_char/zoneout", 2, 2.2, 2.1, scale="small", epochs=130, best_epoch=120)  # early-stopped
    commands = []
    monkeypatch.setattr(replicate, "run_teeing_stderr", lambda command: commands.append(command) or (0, []))
    monkeypatch.setattr(replicate, "outcome", lambda *args: None)
    monkeypatch.setattr(replicate, "build_table", lambda *args, **kwargs: [])
    argv = ["replicate.py", "table1_ptb_char", "--scale", "small", "--launcher", "joblib", "--seeds", "0", "1", "2"]
    argv = [*argv, "--rows", "zoneout"]
    monkeypatch.setattr(sys, "argv", argv)
    assert replicate.main() == 0
    assert [(c[4], c[5]) for c in commands] == [("experiment=ptb_char/zoneout", "seed=0")]
    assert "trainer.resume=true" in commands[0]
    assert capsys.readouterr().out.count("[skip] ptb_char/zoneout") == 2
    commands.clear()  # under the old cap, passed as an override, nothing is left to do
    monkeypatch.setattr(sys, "argv", [*argv[:2], "trainer.max_epochs=100", *argv[2:]])  # as make passes it
    assert replicate.main() == 0 and commands == []
    monkeypatch.setattr(sys, "argv", [argv[0], "--force", *argv[1:]])  # the main job trains whatever is kept
    assert replicate.main() == 0 and [(c[4], c[5]) for c in commands] == [("experiment=ptb_char/zoneout", "seed=0,1,2")]


def build_from_the_command_line(monkeypatch, *args: str) -> int:
    monkeypatch.setattr(sys, "argv", ["make_table.py", "table1_ptb_char", "--scale", "quick", *args])
    return make_table.main()


@pytest.mark.parametrize("where", ["row_folder", "multirun"])
def test_a_run_of_another_config_is_refused_and_the_kept_copy_is_unchanged(runs, tmp_path, monkeypatch, capsys, where):
    """A run named as a row but run with other overrides (in the row's own folder, or a sweep member)
    must not become the row, nor replace the committed copy of the row's run."""
    root, dirs = runs
    for dotted, value in [("trainer.threads", 1), ("trainer.progress", False), ("logger.name", "csv"),
                          ("trainer.max_epochs", 5), ("dataset.data_dir", "/elsewhere"), ("dataset.mirror", None)]:
        set_setting(dirs[2], dotted, value)  # settings that cannot change the result: still the row's run
    assert build_from_the_command_line(monkeypatch) == 0
    results = tmp_path / "results"
    kept_config = results / "quick" / "runs" / "ptb_char" / "zoneout" / "seed0" / "config.yaml"
    before = {path: path.read_bytes() for path in results.rglob("*") if path.is_file()}
    assert kept_config in before
    capsys.readouterr()
    if where == "row_folder":  # `regularizer.zoneout_cell=0.05` rerun into runs/quick/ptb_char/zoneout/seed0
        shutil.rmtree(dirs[0])
        other = write_run(root, "ptb_char/zoneout", 0, 1.0, 1.0)
    else:  # one job of `-m regularizer.zoneout_cell=0.05,0.9`, in Hydra's default sweep folder
        job = write_run(tmp_path / "sweep", "ptb_char/zoneout", 0, 1.0, 1.0)
        other = root / "multirun" / "2025-01-01_00-00-00" / "0-regularizer.zoneout_cell=0.05"
        other.parent.mkdir(parents=True)
        job.rename(other)
    set_setting(other, "regularizer.zoneout_cell", 0.05)
    assert build_from_the_command_line(monkeypatch) == 2
    error = capsys.readouterr().err
    assert error.startswith("error: ") and error.count("\n") == 1
    assert f"{other} is named ptb_char/zoneout" in error and "(regularizer.zoneout_cell: 0.05, now 0.5)" in error
    assert {path: path.read_bytes() for path in results.rglob("*") if path.is_file()} == before  # nothing written
    assert kept_config.read_bytes() == before[kept_config]


def test_runs_made_with_overrides_build_their_own_table_beside_the_rows(runs, tmp_path, monkeypatch, capsys):
    """`replicate.py ... model.hidden_size=25` ran every row smaller: the table of those runs is built when
    the same overrides are given, into results/<scale>/overrides-<hash>/ with the overrides written at its
    top; the rows as configured (results/<scale>/) refuse them, and an override that cannot change a run
    (trainer.threads) builds the rows' own table."""
    root, dirs = runs
    for run_dir in dirs[:4]:
        set_setting(run_dir, "model.hidden_size", 25)
    results = tmp_path / "results" / "quick"
    assert build_from_the_command_line(monkeypatch) == 2
    assert "(model.hidden_size: 25, now 128)" in capsys.readouterr().err
    assert not results.exists()
    assert build_from_the_command_line(monkeypatch, "model.hidden_size=25", "trainer.threads=1") == 0
    tables = list(results.glob("overrides-*/table1_ptb_char.md"))
    assert len(tables) == 1 and not (results / "table1_ptb_char.md").exists()
    markdown = tables[0].read_text()
    assert "extra overrides `model.hidden_size=25 trainer.threads=1`" in markdown
    assert "not the rows as configured" in markdown
    assert table_line(markdown, "Zoneout (z_c = 0.5, z_h = 0.05)")[1].startswith("1.52")
    assert (tables[0].parent / "runs" / "ptb_char" / "zoneout" / "seed0" / "config.yaml").exists()
    for run_dir in dirs[:4]:
        set_setting(run_dir, "model.hidden_size", make_table.composed_config("ptb_char/zoneout", "quick")["model"]["hidden_size"])
    assert build_from_the_command_line(monkeypatch, "trainer.threads=1") == 0
    assert "extra overrides" not in (results / "table1_ptb_char.md").read_text()


def test_a_row_missing_a_seed_says_which(runs, tmp_path, monkeypatch, capsys):
    root, dirs = runs
    (dirs[1] / "summary.json").unlink()  # zoneout seed 1: its summary lost
    for seed in range(3):
        write_run(root, "ptb_char/weight_noise", seed, 1.6, 1.5)
    assert build_from_the_command_line(monkeypatch) == 0
    out = tmp_path / "results" / "quick"
    markdown = (out / "table1_ptb_char.md").read_text()
    zoneout = table_line(markdown, "Zoneout (z_c = 0.5, z_h = 0.05)")
    mean = statistics.mean([ZONEOUT_TEST[0], ZONEOUT_TEST[2]])
    assert zoneout[2].startswith(f"{mean:.3f} ± ") and zoneout[8] == "0 2 of 0 1 2 (missing 1)"
    assert table_line(markdown, "Weight noise (σ = 0.075)")[8] == "0 1 2"
    assert table_line(markdown, "Recurrent batchnorm (Cooijmans et al.; ours at batch 32) (cited)")[8] == \
        "0 of 0 1 2 (missing 1 2)"
    assert "lacks some of the table's seeds" in markdown
    parsed = {r["row"]: r for r in csv.DictReader(io.StringIO((out / "table1_ptb_char.csv").read_text()))}
    assert (parsed["Zoneout (z_c = 0.5, z_h = 0.05)"]["n_seeds"], parsed["Zoneout (z_c = 0.5, z_h = 0.05)"]["missing_seeds"]) == ("2", "1")
    assert parsed["Weight noise (σ = 0.075)"]["missing_seeds"] == "" and parsed["Unregularized LSTM"]["missing_seeds"] == "0 1 2"
    assert parsed["HyperLSTM + LayerNorm (Ha et al., 2016)"]["missing_seeds"] == ""  # nothing of ours to run
    assert "note: ptb_char/zoneout (quick) has 0 2 of 0 1 2 (missing 1): its mean is over 2 seed(s)" in capsys.readouterr().err
    # Seeds asked for that no row has yet (make replicate SEEDS=...) are missing too.
    assert build_from_the_command_line(monkeypatch, "--seeds", "0", "1", "2", "3") == 0
    markdown = (out / "table1_ptb_char.md").read_text()
    assert table_line(markdown, "Weight noise (σ = 0.075)")[8] == "0 1 2 of 0 1 2 3 (missing 3)"
    assert table_line(markdown, "Zoneout (z_c = 0.5, z_h = 0.05)")[8] == "0 2 of 0 1 2 3 (missing 1 3)"


def truncated(path: Path) -> None:
    """Cut short as a killed copy or a full disk leaves it: inside the last JSON object, or a YAML key."""
    text = path.read_text()
    path.write_text(text[:text.index("zoneout_cell") + 7] if path.suffix == ".yaml" else text[:text.rindex("}")])


@pytest.mark.parametrize("name, damage, why", [
    ("summary.json", truncated, "not valid JSON"),
    ("metrics.jsonl", truncated, "line 3 is not valid JSON"),
    ("config.yaml", truncated, "not valid YAML"),
    ("config.yaml", lambda path: path.write_text("dataset:\n  name: ptb_char\n"), "incomplete (no model settings)"),
    ("config.yaml", Path.unlink, "missing, so which experiment the run was cannot be checked"),
])
def test_an_unreadable_run_file_is_one_line_naming_it(runs, tmp_path, monkeypatch, capsys, name, damage, why):
    _, dirs = runs
    path = dirs[1] / name  # zoneout seed 1
    damage(path)
    assert build_from_the_command_line(monkeypatch) == 2
    error = capsys.readouterr().err
    assert error.startswith(f"error: {path}: {why}") and error.count("\n") == 1
    assert error.rstrip().endswith(make_table.FIX_A_FILE)
    assert not (tmp_path / "results").exists()  # nothing written


@pytest.mark.parametrize("scale", ["quick", "small"])
def test_the_committed_runs_are_their_rows_experiments(scale):
    """Every run a committed table keeps is its row's experiment as the configs compose it now (runs saved
    before a trainer setting existed ran with its default): the tables rebuild from them."""
    summaries = sorted((ROOT / "results" / scale / "runs").rglob("summary.json"))
    assert summaries
    for path in summaries:
        summary = make_table.read_summary(path)
        make_table.check_same_experiment(path.parent, summary, summary["name"], scale)
