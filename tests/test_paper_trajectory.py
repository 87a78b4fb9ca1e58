"""scripts/paper_trajectory.py on run folders it makes, and the authors' log it compares against."""
from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))
import paper_trajectory  # noqa: E402


def test_the_authors_log_is_the_one_the_spec_quotes():
    log = paper_trajectory.authors_log(paper_trajectory.yaml.safe_load(paper_trajectory.SPEC.read_text()))
    assert sorted(log) == list(range(1, 111))  # 110 epoch records, the run was interrupted there
    quoted = {1: 1.7333, 2: 1.6021, 3: 1.5444, 5: 1.4879, 10: 1.4376, 20: 1.4023, 107: 1.3644}  # docs/replication.md §4
    for epoch, value in quoted.items():
        assert float(log[epoch]["dev_bpr"]) == pytest.approx(value, abs=5e-5)
    assert min(log, key=lambda e: float(log[e]["dev_bpr"])) == 107


def write_run(folder: Path, curve: list[float], extra: dict | None = None) -> None:
    folder.mkdir(parents=True)
    lines = [json.dumps({"epoch": i + 1, "valid_bpc": v, "train_bpc": v + 0.4, "train_seconds": 1600.0,
                         "update_norm": 0.8, "clip_fraction": 0.0, "commit": "abc1234", "device": "cpu (AMD EPYC, 1 threads)",
                         **(extra or {})}) for i, v in enumerate(curve)]
    (folder / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    (folder / "config.yaml").write_text("name: x\n")
    (folder / "last.pt").write_bytes(b"checkpoint")


@pytest.fixture
def folders(tmp_path, monkeypatch):
    monkeypatch.setenv("ZONEOUT_RUNS_DIR", str(tmp_path / "runs"))
    monkeypatch.setenv("ZONEOUT_RESULTS_DIR", str(tmp_path / "results"))
    return tmp_path


def test_csv_md_png_beside_the_authors_log_and_kept_copies(folders, capsys):
    write_run(folders / "runs/paper/ptb_char/zoneout_clip-update/seed0", [1.75, 1.61])
    write_run(folders / "runs/paper/ptb_char/unregularized_clip-update/seed0", [1.80])
    assert paper_trajectory.main(["--keep"]) == 0
    out = folders / "results/paper"
    with open(out / "ptb_char_trajectory.csv", newline="") as handle:
        rows = list(csv.reader(handle))
    assert rows[0] == ["row", "clip", "seed", "epoch", "valid_bpc", "authors_valid_bpc"]
    assert rows[1:] == [["unregularized", "update", "0", "1", "1.8000", ""],  # the authors logged only zoneout
                        ["zoneout", "update", "0", "1", "1.7500", "1.7333"],
                        ["zoneout", "update", "0", "2", "1.6100", "1.6021"]]
    markdown = (out / "ptb_char_trajectory.md").read_text()
    assert "| 1 | 1.7500 | 1.7333 | +0.0167 |" in markdown and "abc1234" in markdown
    assert (out / "ptb_char_trajectory.png").stat().st_size > 0
    kept = out / "runs/ptb_char/zoneout_clip-update/seed0"
    assert sorted(p.name for p in kept.iterdir()) == ["config.yaml", "metrics.jsonl"]  # never a checkpoint
    # Without the live folders (another checkout), the kept copies give the same table.
    import shutil
    shutil.rmtree(folders / "runs")
    assert paper_trajectory.main([]) == 0
    assert (out / "ptb_char_trajectory.md").read_text() == markdown


def test_a_corrupt_metrics_file_is_one_line_naming_it(folders, capsys):
    folder = folders / "runs/paper/ptb_char/zoneout_clip-grad/seed0"
    write_run(folder, [1.9])
    with open(folder / "metrics.jsonl", "a") as handle:
        handle.write('{"epoch": 2, "valid_')
    assert paper_trajectory.main([]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(folder / "metrics.jsonl") in err[0]


def test_a_variant_is_reported_beside_its_row_and_never_in_the_csv(folders, capsys):
    row = folders / "runs/paper/ptb_char/zoneout_clip-grad/seed0"
    variant = folders / "runs/paper/ptb_char/zoneout_clip-grad_learned-start/seed0"
    write_run(row, [1.7308, 1.6080, 1.5533])
    write_run(variant, [1.7250, 1.6000])
    (row / "config.yaml").write_text("model: {cell: lstm}\ntrainer: {clip: grad, threads: 1}\n")  # saved before the options
    (variant / "config.yaml").write_text("model: {cell: lstm, initial_state: learned, recurrent_bias: true}\n"
                                         "trainer: {clip: grad, threads: 2}\n")
    write_run(folders / "runs/paper/ptb_char/zoneout_clip-grad_Not_A_Variant/seed0", [9.0])  # not a launcher name
    assert paper_trajectory.main(["--keep"]) == 0
    out = folders / "results/paper"
    with open(out / "ptb_char_trajectory.csv", newline="") as handle:
        assert [line[:5] for line in csv.reader(handle)][1:] == [["zoneout", "grad", "0", str(e), v] for e, v in
                                                                 ((1, "1.7308"), (2, "1.6080"), (3, "1.5533"))]
    markdown = (out / "ptb_char_trajectory.md").read_text()
    section = markdown.split("## Variants")[1]
    assert "variant `learned-start`, seed 0" in section and "9.0000" not in markdown
    assert "Changed from the row's run: model.initial_state: zeros -> learned." in section  # threads do not count
    assert "| 1 | 1.7250 | 1.7308 | -0.0058 | 1.7333 | -0.0083 |" in section
    assert "| 2 | 1.6000 | 1.6080 | -0.0080 | 1.6021 | -0.0021 |" in section
    kept = out / "runs/ptb_char/zoneout_clip-grad_learned-start/seed0"
    assert sorted(p.name for p in kept.iterdir()) == ["config.yaml", "metrics.jsonl"]


def fake_checkout(tmp_path: Path) -> Path:
    """The launcher in a checkout whose `make data` does nothing and whose python prints its arguments."""
    checkout = tmp_path / "checkout"
    (checkout / "scripts").mkdir(parents=True)
    (checkout / "scripts" / "paper_scale_run.sh").write_text((ROOT / "scripts" / "paper_scale_run.sh").read_text())
    (checkout / "Makefile").write_text("data:\n\t@true\n")
    python = checkout / ".venv" / "bin" / "python"
    python.parent.mkdir(parents=True)
    python.write_text('#!/bin/sh\necho "$@"\n')
    python.chmod(0o755)
    return checkout


@pytest.mark.parametrize("args, env, message", [
    (["dropout", "grad"], {}, "ROW must be zoneout or unregularized, got 'dropout'"),
    (["zoneout", "adam"], {}, "CLIP must be grad or update, got 'adam'"),
    (["zoneout", "grad"], {"VARIANT": "../up"}, "VARIANT must be lower-case letters, digits and '-', got '../up'"),
])
def test_the_launcher_refuses_bad_arguments_in_one_line(tmp_path, args, env, message):
    checkout = fake_checkout(tmp_path)
    result = subprocess.run(["bash", str(checkout / "scripts" / "paper_scale_run.sh"), *args], capture_output=True, text=True,
                            env={**os.environ, "ZONEOUT_RUNS_DIR": str(tmp_path / "runs"), **env})
    assert result.returncode == 2 and result.stderr.strip() == f"error: {message}"
    assert not (tmp_path / "runs").exists()


def test_a_variant_runs_in_a_folder_the_trajectory_leaves_out(tmp_path):
    checkout = fake_checkout(tmp_path)
    env = {**os.environ, "ZONEOUT_RUNS_DIR": str(tmp_path / "runs"), "VARIANT": "learned-start"}
    subprocess.run(["bash", str(checkout / "scripts" / "paper_scale_run.sh"), "zoneout", "grad", "model.initial_state=learned"],
                   check=True, env=env)
    log = (tmp_path / "runs" / "paper" / "ptb_char" / "zoneout_clip-grad_learned-start" / "seed0.log").read_text()
    assert "name=ptb_char/zoneout_clip-grad_learned-start" in log and log.rstrip().endswith("model.initial_state=learned")
    assert "model.init=orthogonal_square_blocks trainer.threads=1 trainer.resume=true" in log


@pytest.mark.parametrize("zoneout, unregularized, verdict", [
    ([1.73, 1.61, 1.55], [1.70, 1.58], "open: unregularized is 0 of 3 epochs past its best"),
    ([1.73, 1.61, 1.55, 1.52, 1.50], [1.70, 1.58, 1.53, 1.54, 1.56], "open: unregularized is 2 of 3 epochs past its best"),
    ([1.73, 1.61, 1.55, 1.52, 1.50], [1.70, 1.58, 1.53, 1.54, 1.56, 1.57], "decided: zoneout is better by 0.0300"),
    # the baseline is past its best but zoneout, above it, may still get below it
    ([1.73, 1.61, 1.58, 1.56, 1.55, 1.54], [1.70, 1.50, 1.51, 1.52, 1.53], "open: zoneout is still above unregularized's best and still improving"),
    ([1.73, 1.60, 1.61, 1.62, 1.63], [1.70, 1.50, 1.51, 1.52, 1.53], "decided: unregularized is better by 0.1000"),
])
def test_the_claim_is_decided_only_once_the_baseline_has_turned_up(folders, zoneout, unregularized, verdict):
    write_run(folders / "runs/paper/ptb_char/zoneout_clip-grad/seed0", zoneout)
    write_run(folders / "runs/paper/ptb_char/unregularized_clip-grad/seed0", unregularized)
    write_run(folders / "runs/paper/ptb_char/zoneout_clip-update/seed0", [1.75])  # no unregularized partner: no line
    assert paper_trajectory.main([]) == 0
    section = (folders / "results/paper/ptb_char_trajectory.md").read_text().split("## The paper's claim")[1]
    lines = [line for line in section.splitlines() if line.startswith("| grad") or line.startswith("| update")]
    assert len(lines) == 1 and lines[0].startswith("| grad | 0 |") and lines[0].endswith(f"| {verdict} |")
    equal = ", ".join(f"{e}: {z - u:+.4f}" for e, (z, u) in enumerate(zip(zoneout, unregularized), start=1))
    assert f"| {equal} |" in lines[0]


def test_the_claim_says_open_before_both_rows_have_an_epoch(folders):
    write_run(folders / "runs/paper/ptb_char/zoneout_clip-grad/seed0", [1.73])
    assert paper_trajectory.main([]) == 0
    assert "open: no seed has both rows yet" in (folders / "results/paper/ptb_char_trajectory.md").read_text()


def test_a_changed_setting_reads_as_its_override(tmp_path):
    row, variant = tmp_path / "row", tmp_path / "variant"
    for folder, text in ((row, "model: {cell: lstm}\n"), (variant, "model: {cell: lstm, recurrent_bias: false}\n")):
        folder.mkdir()
        (folder / "config.yaml").write_text(text)
    assert paper_trajectory.settings_changed(variant, row) == "model.recurrent_bias: true -> false"


def test_two_seeds_of_a_row_show_their_spread_beside_the_gap_to_the_authors(folders):
    write_run(folders / "runs/paper/ptb_char/zoneout_clip-grad/seed0", [1.7308, 1.6080, 1.5533])
    write_run(folders / "runs/paper/ptb_char/zoneout_clip-grad/seed1", [1.7350, 1.6020])  # one epoch behind
    write_run(folders / "runs/paper/ptb_char/unregularized_clip-grad/seed0", [1.6977])  # one seed: no section
    assert paper_trajectory.main([]) == 0
    markdown = (folders / "results/paper/ptb_char_trajectory.md").read_text()
    section = markdown.split("## Seeds of one row")[1]
    assert "### zoneout, trainer.clip=grad, seeds 0, 1" in section and "unregularized" not in section
    assert "| 1 | 1.7308 | 1.7350 | 0.0042 | 1.7333 | -0.0025 | +0.0017 |" in section
    assert "| 2 | 1.6080 | 1.6020 | 0.0060 | 1.6021 | +0.0059 | -0.0001 |" in section
    assert "| 3 |" not in section  # a spread needs two seeds at that epoch (seed 0's own table has it)
    # The csv keeps one line per run and epoch, seeds apart.
    assert (folders / "results/paper/ptb_char_trajectory.csv").read_text().count("zoneout,grad,1,") == 2


def test_one_seed_per_row_has_no_spread_section(folders):
    write_run(folders / "runs/paper/ptb_char/zoneout_clip-grad/seed0", [1.7308])
    assert paper_trajectory.main([]) == 0
    assert "## Seeds of one row" not in (folders / "results/paper/ptb_char_trajectory.md").read_text()
