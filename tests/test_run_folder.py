"""One run folder, one run, one process (zoneout/run_folder.py) and files that are never trusted when
damaged: every way a run folder could end up lying, reproduced on tiny char-PTB runs."""
from __future__ import annotations

import json

import pytest
import torch
from test_train import read_metrics, tiny_cfg

from zoneout import checkpoint
from zoneout.config_check import ConfigError
from zoneout.run_folder import RunFolderError, RunFolderLock
from zoneout.train import train


def test_a_finished_run_is_never_overwritten_by_a_rerun(data_dir, tmp_path):
    first = train(tiny_cfg(data_dir), tmp_path / "run")
    before = {p.name: p.read_bytes() for p in (tmp_path / "run").iterdir() if p.is_file()}
    with pytest.raises(RunFolderError, match="already holds a finished run; continue it with trainer.resume=true"):
        train(tiny_cfg(data_dir, "optim.lr=0.01"), tmp_path / "run")
    assert {p.name: p.read_bytes() for p in (tmp_path / "run").iterdir() if p.is_file()} == before
    # trainer.overwrite=true starts afresh, with the old run moved whole to a sibling folder
    second = train(tiny_cfg(data_dir, "optim.lr=0.01", "trainer.overwrite=true"), tmp_path / "run")
    moved = [p for p in tmp_path.iterdir() if p.name.startswith("run.replaced-")]
    assert len(moved) == 1 and json.loads((moved[0] / "summary.json").read_text())["test"] == first["test"]
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["test"] == second["test"] != first["test"]
    assert len(read_metrics(tmp_path / "run")) == 2 and "lr: 0.01" in (tmp_path / "run" / "config.yaml").read_text()


def test_a_kill_during_the_final_test_after_early_stopping_resumes_to_the_same_result(data_dir, tmp_path, monkeypatch):
    from zoneout import train as train_module

    stop_early = ["trainer.max_epochs=6", "trainer.patience=1", "optim.lr=1e-12"]  # epoch 1 stays best: stop at 2
    whole = train(tiny_cfg(data_dir, *stop_early), tmp_path / "whole")
    original = train_module.evaluate

    def killed_at_test(model, task, split, *args, **kwargs):
        if split == "test":
            raise KeyboardInterrupt  # what a kill between the last checkpoint and the summary leaves behind
        return original(model, task, split, *args, **kwargs)

    monkeypatch.setattr(train_module, "evaluate", killed_at_test)
    with pytest.raises(KeyboardInterrupt):
        train(tiny_cfg(data_dir, *stop_early), tmp_path / "split")
    monkeypatch.undo()
    resumed = train(tiny_cfg(data_dir, *stop_early, "trainer.resume=true"), tmp_path / "split")
    assert (resumed["epochs_run"], resumed["best_epoch"]) == (whole["epochs_run"], whole["best_epoch"]) == (2, 1)
    assert resumed["test"] == whole["test"]


def test_a_second_process_on_a_run_folder_is_refused_naming_the_holder(data_dir, tmp_path):
    (tmp_path / "run").mkdir()
    with RunFolderLock(tmp_path / "run"), pytest.raises(RunFolderError, match=r"in use by another process \(pid \d+\)"):
        train(tiny_cfg(data_dir), tmp_path / "run")
    assert train(tiny_cfg(data_dir), tmp_path / "run")["status"] == "finished"  # released: usable again


@pytest.mark.parametrize("override", ["trainer.max_steps_per_epoch=3", "trainer.loss_sum_over_time=true",
                                      "trainer.eval_max_batches=1", "trainer.clip_grad_norm=0.5", "trainer.clip=update"])
def test_resume_refuses_a_setting_that_changes_what_is_trained(data_dir, tmp_path, override):
    train(tiny_cfg(data_dir, "trainer.max_epochs=1"), tmp_path)
    with pytest.raises(ConfigError, match=rf"written with other settings \(trainer.{override.split('=')[0][8:]}: "):
        train(tiny_cfg(data_dir, "trainer.max_epochs=2", "trainer.resume=true", override), tmp_path)


def test_resume_keeps_the_config_the_run_began_with(data_dir, tmp_path):
    train(tiny_cfg(data_dir, "trainer.max_epochs=1"), tmp_path)
    written = (tmp_path / "config.yaml").read_text()
    train(tiny_cfg(data_dir, "trainer.max_epochs=2", "trainer.resume=true", "trainer.threads=1"), tmp_path)
    assert (tmp_path / "config.yaml").read_text() == written and len(read_metrics(tmp_path)) == 2


@pytest.mark.parametrize("damage", ["flip", "truncate"])
def test_a_damaged_checkpoint_is_one_line_naming_it_never_a_misdiagnosis(data_dir, tmp_path, damage):
    train(tiny_cfg(data_dir, "trainer.max_epochs=1"), tmp_path)
    path = tmp_path / "last.pt"
    data = bytearray(path.read_bytes())
    if damage == "flip":
        data[len(data) // 2] ^= 0xFF
    else:
        del data[len(data) // 3:]
    path.write_bytes(bytes(data))
    with pytest.raises(checkpoint.CheckpointError, match=rf"^{path}: (corrupt|not a readable checkpoint)"):
        train(tiny_cfg(data_dir, "trainer.max_epochs=2", "trainer.resume=true"), tmp_path)


def test_checkpoints_written_before_the_checksum_still_load(tmp_path):
    torch.save({"epoch": 3}, tmp_path / "old.pt")
    assert checkpoint.load(tmp_path / "old.pt") == {"epoch": 3}


def test_a_truncated_summary_is_one_line_naming_it(data_dir, tmp_path):
    train(tiny_cfg(data_dir), tmp_path)
    (tmp_path / "summary.json").write_text('{"status": "fini')
    with pytest.raises(RunFolderError, match=rf"^{tmp_path / 'summary.json'}: unreadable"):
        train(tiny_cfg(data_dir, "trainer.resume=true"), tmp_path)


def test_stale_temp_files_of_killed_writes_are_removed_on_the_next_start(data_dir, tmp_path, capsys):
    tmp_path.mkdir(exist_ok=True)
    (tmp_path / ".last.pt.abc123.tmp").write_bytes(b"half a checkpoint")
    train(tiny_cfg(data_dir, "trainer.max_epochs=1"), tmp_path)
    assert not list(tmp_path.glob(".*.tmp"))
    assert "removed .last.pt.abc123.tmp" in capsys.readouterr().err


def test_an_overwritten_corpus_cache_is_rebuilt_not_trained_on(data_dir, capsys):
    from zoneout.data.text import load_corpus

    good = load_corpus("ptb_char", data_dir)
    cache = next((data_dir / "ptb_char").glob("ptb_char.corpus-*.pt"))
    state = torch.load(cache, weights_only=True)
    state["train"] = state["train"].flip(0)  # same key, other tokens
    torch.save(state, cache)
    again = load_corpus("ptb_char", data_dir)
    assert torch.equal(again.train, good.train) and "do not match" in capsys.readouterr().err
