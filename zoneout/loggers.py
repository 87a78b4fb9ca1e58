"""Run logging. Every run writes its own metrics to its run folder (metrics.jsonl, metrics.csv,
summary.json): the local source of truth for tables. W&B mirrors them when chosen; `wandb` is
imported only then, offline by default, and a W&B failure never stops training."""
from __future__ import annotations

import csv
import io
import json
import sys
from pathlib import Path

from zoneout.atomic import atomic_write_text


class RunFolderLogger:
    def __init__(self, run_dir: Path, history: list[dict] | None = None):
        self.run_dir = Path(run_dir)
        self.history = list(history or [])
        self._rewrite()  # on resume, drop lines of epochs the checkpoint does not have

    def log_epoch(self, record: dict) -> None:
        self.history.append(record)
        self._rewrite()

    def _rewrite(self) -> None:
        atomic_write_text(self.run_dir / "metrics.jsonl", "".join(json.dumps(r) + "\n" for r in self.history))
        if self.history:
            fields = list(dict.fromkeys(k for r in self.history for k in r))
            buffer = io.StringIO()
            writer = csv.DictWriter(buffer, fieldnames=fields)
            writer.writeheader()
            writer.writerows(self.history)
            atomic_write_text(self.run_dir / "metrics.csv", buffer.getvalue())

    def log_summary(self, summary: dict) -> None:
        atomic_write_text(self.run_dir / "summary.json", json.dumps(summary, indent=2) + "\n")

    def finish(self) -> None:
        pass


class WandbLogger(RunFolderLogger):
    def __init__(self, run_dir: Path, history, logger_cfg, run_name: str, group: str, tags: list, config: dict):
        super().__init__(run_dir, history)
        self.run = None

        def start():
            import wandb  # only when this logger is chosen

            self.run = wandb.init(project=logger_cfg.project, entity=logger_cfg.entity, mode=logger_cfg.mode,
                                  dir=str(logger_cfg.dir or run_dir), group=group, name=run_name, tags=tags,
                                  config=config, reinit="finish_previous")
            for record in self.history:  # a resumed run re-logs what it already had
                self.run.log(record, step=record["epoch"])

        self._call_wandb(start)

    def _call_wandb(self, action) -> None:
        """Run one W&B call; any failure (import, init, a full disk, a dead service) switches W&B off for
        the rest of the run with one warning. W&B never blocks a run: the run folder has every metric."""
        try:
            action()
        except Exception as error:
            print(f"warning: W&B disabled for this run ({type(error).__name__}: {error})", file=sys.stderr)
            self.run = None

    def log_epoch(self, record: dict) -> None:
        super().log_epoch(record)
        if self.run is not None:
            self._call_wandb(lambda: self.run.log(record, step=record["epoch"]))

    def log_summary(self, summary: dict) -> None:
        super().log_summary(summary)
        if self.run is not None:
            self._call_wandb(lambda: self.run.summary.update(
                {k: v for k, v in summary.items() if not isinstance(v, (dict, list))}))

    def finish(self) -> None:
        if self.run is not None:
            self._call_wandb(self.run.finish)
            self.run = None


def build_logger(cfg, run_dir: Path, history, config_dict: dict) -> RunFolderLogger:
    if cfg.logger.name == "wandb":
        tags = [cfg.dataset.name, cfg.model.cell, cfg.regularizer.name]
        return WandbLogger(run_dir, history, cfg.logger, f"{cfg.name}/seed{cfg.seed}", cfg.name, tags, config_dict)
    return RunFolderLogger(run_dir, history)
