"""Train one row of a paper table: `python -m zoneout.train experiment=ptb_char/zoneout [overrides]`.

Top to bottom: check the config, build data, model and optimizer, (resume,) then per epoch train
with gradient clipping, evaluate on valid, checkpoint, stop early on patience; finally evaluate the
best checkpoint on test. Everything a table needs lands in the run folder: config.yaml,
metrics.jsonl/.csv (one line per epoch), summary.json, best.pt and last.pt.
"""
from __future__ import annotations

import itertools
import json
import math
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import hydra
import torch
from omegaconf import DictConfig, OmegaConf, open_dict
from tqdm import tqdm

from zoneout import checkpoint, resolvers  # noqa: F401 - resolvers: the Slurm launcher config's
from zoneout.atomic import atomic_write_text
from zoneout.config_check import ConfigError, check_command_line, check_config, check_group_overrides, fail
from zoneout.config_dir import config_dir
from zoneout.cpuinfo import cpu_description, cpu_model
from zoneout.data import DataError
from zoneout.loggers import build_logger
from zoneout.models.build import ModelConfigError, build_model
from zoneout.nn.bn_lstm import recalibrate_population
from zoneout.regularizers import WeightNoise, norm_stabilizer_penalty
from zoneout.run_folder import RunFolderError, RunFolderLock, existing_run, move_aside, remove_if_untouched, remove_stale_temp_files
from zoneout.run_identity import first_difference
from zoneout.stopping import stopped_for_good
from zoneout.tasks import build_task, metric_from


class Diverged(RuntimeError):
    pass


def trainable_parameters(model) -> list:
    """What the optimizer, clipping and the parameter count see (model.recurrent_bias=false freezes bias_hh)."""
    return [p for p in model.parameters() if p.requires_grad]


def build_optimizer(cfg, parameters):
    if cfg.name == "adam":
        return torch.optim.Adam(parameters, lr=cfg.lr, betas=tuple(cfg.betas), eps=cfg.eps, weight_decay=cfg.weight_decay)
    if cfg.name == "rmsprop":
        return torch.optim.RMSprop(parameters, lr=cfg.lr, alpha=cfg.alpha, eps=cfg.eps, weight_decay=cfg.weight_decay)
    return torch.optim.SGD(parameters, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)


def learning_rate(cfg, epoch: int) -> float:
    """Constant, or divided by lr_decay after every epoch past decay_start_epoch (Zaremba et al.)."""
    return cfg.lr / cfg.lr_decay ** max(0, epoch - cfg.decay_start_epoch)


@torch.no_grad()
def evaluate(model, task, split: str, stream: bool = False, max_batches=None) -> tuple[float, float]:
    """(metric, mean loss) over the whole split, deterministic: eval mode uses noise expectations."""
    model.eval()
    nll_sum = count = correct = 0
    state = None
    for index, batch in enumerate(task.eval_batches(split, stream)):
        if max_batches is not None and index >= max_batches:
            break
        result = task.step(model, batch, state)
        state = result.state
        nll_sum, count, correct = nll_sum + result.nll_sum, count + result.count, correct + result.correct
    return metric_from(task.metric, nll_sum, count, correct), nll_sum / max(count, 1)


def recalibrate_batchnorm(model, task, batches: int, seed: int) -> int:
    """Re-estimate recurrent-BN population statistics from `batches` training batches with the current
    weights (trainer.bn_recalibration_batches before each evaluation; scripts/bn_population.py). Its own
    data order and RNG, both from `seed`, so the training run itself is unchanged. Returns the batches used."""
    order = task.train_batches(torch.Generator().manual_seed(seed))
    with torch.random.fork_rng(devices=[torch.cuda.current_device()] if next(model.parameters()).is_cuda else []):
        torch.manual_seed(seed)
        return recalibrate_population(model, lambda batch: task.step(model, batch, None),
                                      itertools.islice(order, batches))


def recalibration_seed(cfg, epoch: int) -> int:
    return cfg.seed * 100_003 + epoch


def divergence_threshold(cfg, classes: int) -> float:
    """Mean NLL (nats) above which a run has exploded: trainer.divergence_factor x ln(classes), the loss
    of predicting uniformly. An untrained model starts near ln(classes) and training only lowers it;
    a blown-up one predicts confidently wrong and sails far past it (optim.lr=1e9: valid BPC 1e10)."""
    return cfg.trainer.divergence_factor * math.log(classes) if cfg.trainer.divergence_factor else math.inf


def clipped_step(optimizer, parameters: list, rule: str, threshold) -> tuple[float, float, bool]:
    """One optimizer step under a clipping rule; returns (gradient norm, update norm, whether it clipped).

    grad: the gradient rescaled to L2 norm <= threshold before the step (clip_grad_norm_).
    update: Blocks' CompositeRule([Adam, StepClipping]), what the authors' Adam runs did (docs/replication.md
    §1.5): the whole step, already lr-scaled, rescaled to L2 norm <= threshold; the optimizer's own
    state (Adam's moments) is what it computed from the unclipped gradient, as in Blocks.
    Both norms are measured before any clipping, in either rule, so the two can be compared."""
    limit = threshold or math.inf
    grad_norm = float(torch.nn.utils.clip_grad_norm_(parameters, limit if rule == "grad" else math.inf))
    before = [p.detach().clone() for p in parameters]
    optimizer.step()
    with torch.no_grad():
        steps = [p.detach() - old for p, old in zip(parameters, before)]
        update_norm = float(torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(s) for s in steps])))
        clipped = update_norm > limit if rule == "update" else grad_norm > limit
        if rule == "update" and clipped:
            scale = limit / update_norm
            for p, old, step in zip(parameters, before, steps):
                p.copy_(old.add_(step, alpha=scale))
    return grad_norm, update_norm, clipped


class Interrupted(RuntimeError):
    """SIGINT / SIGTERM arrived: the run saved where it stands and stops (resume continues it)."""

    def __init__(self, signum: int, where: str):
        super().__init__(f"{signal.Signals(signum).name} {where}")
        self.signum = signum


class StopSignals:
    """While active, SIGINT and SIGTERM only set a flag; training checks it between steps, checkpoints
    the exact batch and raises Interrupted. With no step trained since the last checkpoint (e.g. while the
    first forward waits for a kernel build), or on a second signal, it stops at once: nothing is lost and
    the files are atomic."""

    def __init__(self):
        self.received, self.previous, self.unsaved = None, {}, False

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for signum in (signal.SIGINT, signal.SIGTERM):
                self.previous[signum] = signal.signal(signum, self._handle)
        return self

    def _handle(self, signum, frame):
        if self.received is not None or not self.unsaved:
            print(f"interrupted: {signal.Signals(signum).name}; nothing unsaved since the last checkpoint; continue "
                  "with the same command and trainer.resume=true", file=sys.stderr, flush=True)
            raise SystemExit(128 + signum)
        self.received = signum

    def __exit__(self, *exc):
        for signum, handler in self.previous.items():
            signal.signal(signum, handler)


def train_one_epoch(cfg, model, task, optimizer, weight_noise, generator, epoch: int, diverged_above: float,
                    partial: dict | None = None, save_partial=None, stop: StopSignals | None = None) -> dict:
    """One epoch of training. `partial` is a mid-epoch checkpoint of this epoch (its sums, the position
    and the RNG state after its last batch): training continues from the next batch as if never stopped.
    `save_partial(progress)` writes such a checkpoint every trainer.checkpoint_every_min minutes and when
    a stop signal arrives (then Interrupted is raised)."""
    model.train()
    parameters = trainable_parameters(model)
    if partial:  # this epoch's data as it was drawn at its start
        generator.set_state(partial["data_rng_at_start"])
    data_rng_at_start = generator.get_state()
    batches = task.train_batches(generator)  # draws this epoch's offset and order
    total = min(len(batches), cfg.trainer.max_steps_per_epoch or len(batches))
    sums = dict(partial["sums"]) if partial else {"nll": 0.0, "count": 0, "correct": 0, "grad_norm": 0.0,
                                                 "update_norm": 0.0, "clipped": 0, "seconds": 0.0}
    steps, state = (partial["steps"], partial["state"]) if partial else (0, None)
    batch_iter = iter(batches)
    for _ in range(steps):  # the batches trained before the checkpoint
        next(batch_iter)
    if partial:  # the masks' and data's RNG exactly where the uninterrupted run had them
        checkpoint.set_rng_state(partial["rng"], generator)
    bar = tqdm(total=total, initial=steps, desc=f"epoch {epoch}", disable=not cfg.trainer.progress, leave=False,
               file=sys.stderr, mininterval=1.0)
    every = cfg.trainer.checkpoint_every_min
    start = last_save = time.perf_counter()
    seconds_before = sums["seconds"]

    def progress() -> dict:
        sums["seconds"] = seconds_before + time.perf_counter() - start
        return {"epoch": epoch, "steps": steps, "sums": dict(sums), "state": state,
                "data_rng_at_start": data_rng_at_start, "rng": checkpoint.rng_state(generator)}

    for batch in batch_iter:
        if steps >= total:
            break
        # Weight noise runs the model on perturbed copies of its weight matrices (fresh per minibatch).
        forward = (lambda *args: weight_noise.forward(model, *args)) if weight_noise else None
        result = task.step(model, batch, state, forward)
        loss = result.loss
        if cfg.trainer.loss_sum_over_time:  # Zaremba et al.: summed over the BPTT window, mean over batch
            loss = loss * result.hidden.shape[0]
        if cfg.regularizer.norm_stabilizer:
            loss = loss + norm_stabilizer_penalty(result.hidden, cfg.regularizer.norm_stabilizer)
        if not math.isfinite(loss.item()):
            raise Diverged(f"epoch {epoch}, step {steps + 1}: loss is {loss.item()}")
        if result.nll_sum / max(result.count, 1) > diverged_above:
            raise Diverged(f"epoch {epoch}, step {steps + 1}: training loss {result.nll_sum / max(result.count, 1):.4g} nats "
                           f"is above {diverged_above:.4g}, trainer.divergence_factor x the uniform prediction's loss")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm, update_norm, clipped = clipped_step(optimizer, parameters, cfg.trainer.clip, cfg.trainer.clip_grad_norm)
        state = result.state
        for key, value in (("nll", result.nll_sum), ("count", result.count), ("correct", result.correct),
                           ("grad_norm", grad_norm), ("update_norm", update_norm), ("clipped", int(clipped))):
            sums[key] += value
        steps += 1
        if stop is not None:
            stop.unsaved = True
        bar.update()
        if steps % 10 == 0 or steps == total:
            elapsed = time.perf_counter() - start
            bar.set_postfix(loss=f"{sums['nll'] / sums['count']:.3f}",
                            **{task.metric: f"{metric_from(task.metric, sums['nll'], sums['count'], sums['correct']):.3f}"},
                            tok_s=f"{(steps - (partial or {}).get('steps', 0)) * task.tokens_per_step / elapsed:,.0f}")
        if save_partial is not None and steps < total:
            if stop is not None and stop.received is not None:
                save_partial(progress())
                raise Interrupted(stop.received, f"at epoch {epoch}, step {steps} of {total}")
            if every and time.perf_counter() - last_save >= every * 60:
                save_partial(progress())
                last_save = time.perf_counter()
                if stop is not None:
                    stop.unsaved = False
    bar.close()
    seconds = seconds_before + time.perf_counter() - start
    count, done = max(sums["count"], 1), max(steps, 1)
    return {"train_loss": sums["nll"] / count,
            f"train_{task.metric}": metric_from(task.metric, sums["nll"], sums["count"], sums["correct"]),
            "grad_norm": sums["grad_norm"] / done, "update_norm": sums["update_norm"] / done,
            "clip_fraction": sums["clipped"] / done, "tokens_per_s": steps * task.tokens_per_step / seconds,
            "train_seconds": seconds, "steps": steps}


def check_same_run(saved: dict | None, current: dict, path: Path) -> None:
    difference = first_difference(saved, current) if saved is not None else None
    if difference is not None:
        raise ConfigError(f"trainer.resume=true: {path} was written with other settings ({difference}); "
                          "pass the same overrides, or remove that run folder to start afresh")


def finished_run(cfg, run_dir: Path, config_dict: dict) -> dict | None:
    """The summary of a run in run_dir that has nothing left to do under cfg (it ran to max_epochs or early
    stopping ended it; a larger max_epochs continues from last.pt instead), after checking it is this run."""
    summary_path, config_path = run_dir / "summary.json", run_dir / "config.yaml"
    if not summary_path.exists():
        return None
    try:
        done = json.loads(summary_path.read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise RunFolderError(f"{summary_path}: unreadable ({type(error).__name__}); remove it and resume: last.pt "
                             "holds the run, and finishing it rewrites the summary") from None
    if not stopped_for_good(done, cfg.trainer.max_epochs, cfg.trainer.patience):
        return None
    try:
        saved = OmegaConf.to_container(OmegaConf.load(config_path)) if config_path.exists() else None
    except Exception as error:  # OmegaConf/YAML raise many types; any of them is one line naming the file
        raise RunFolderError(f"{config_path}: unreadable ({type(error).__name__}); restore it, or remove the run "
                             "folder to start that run afresh") from None
    check_same_run(saved, config_dict, config_path)
    return done


def describe_device(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    # family/model too: two different CPUs here both call themselves "AMD EPYC"
    return f"cpu ({cpu_description()}, {torch.get_num_threads()} threads)" if cpu_model() else f"cpu ({torch.get_num_threads()} threads)"


def git_commit(root: Path = Path(__file__).resolve().parent.parent) -> str:
    """Short HEAD of the checkout that runs, with -dirty if its tracked code or configs are modified."""
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True, check=True).stdout.strip()
        # results/ is what runs write (make_table after each table), not what they run: ignore it, or
        # every table after the first of a replicate session would be marked dirty.
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", ".", ":(exclude)results"],
                               cwd=root, capture_output=True, text=True).stdout.strip()
        return commit + ("-dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def train(cfg: DictConfig, run_dir: Path) -> dict:
    check_config(cfg)
    run_dir.mkdir(parents=True, exist_ok=True)
    with RunFolderLock(run_dir):  # one process per run folder; released if this one dies
        for stale in remove_stale_temp_files(run_dir):
            print(f"removed {stale.name}, the temp file of a write a kill interrupted", file=sys.stderr)
        if not cfg.trainer.resume:
            claim_run_folder(cfg, run_dir)
        return train_in(cfg, run_dir)


def claim_run_folder(cfg, run_dir: Path) -> None:
    """A fresh run never writes over another: it refuses, or (trainer.overwrite) moves the old run aside."""
    existing = existing_run(run_dir)
    if existing is None:
        return
    if not cfg.trainer.overwrite:
        raise RunFolderError(f"{run_dir} already holds {existing}; continue it with trainer.resume=true, or start "
                             "afresh with trainer.overwrite=true (the old run is moved to a .replaced-<time> folder)")
    print(f"trainer.overwrite=true: the run that was in {run_dir} moved to {move_aside(run_dir)}", file=sys.stderr)


def train_in(cfg: DictConfig, run_dir: Path) -> dict:
    """The run itself, once train() owns the folder."""
    device = torch.device("cuda" if cfg.device == "auto" and torch.cuda.is_available() else
                          "cpu" if cfg.device == "auto" else cfg.device)
    if cfg.trainer.threads:
        torch.set_num_threads(cfg.trainer.threads)
    if device.type == "cpu":  # vanishing gradients (pMNIST) hit slow denormal arithmetic: ~7x backward
        torch.set_flush_denormal(True)
    torch.manual_seed(cfg.seed)
    generator = torch.Generator().manual_seed(cfg.seed)  # data order; masks use the global RNG
    task, input_vocab, outputs, max_length = build_task(cfg, device)
    model = build_model(cfg.model, cfg.regularizer, input_vocab, outputs, max_length).to(device)
    diverged_above = divergence_threshold(cfg, outputs)
    optimizer = build_optimizer(cfg.optim, trainable_parameters(model))
    weight_noise = WeightNoise(cfg.regularizer.weight_noise) if cfg.regularizer.weight_noise else None
    config_dict = OmegaConf.to_container(cfg, resolve=True)
    start_epoch, best, bad_epochs, history, resumed_from = 1, None, 0, [], None
    last_path, best_path, summary_path = run_dir / "last.pt", run_dir / "best.pt", run_dir / "summary.json"
    done = finished_run(cfg, run_dir, config_dict) if cfg.trainer.resume else None
    if done is not None:
        print(f"{cfg.name} seed {cfg.seed}: already finished ({summary_path}); skipped", file=sys.stderr)
        return done
    partial = None  # a checkpoint taken inside an epoch: that epoch continues from its next batch
    if cfg.trainer.resume and last_path.exists():
        state = checkpoint.load(last_path)
        check_same_run(state["config"], config_dict, last_path)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        checkpoint.set_rng_state(state["rng"], generator)
        start_epoch, best, bad_epochs, history = state["epoch"] + 1, state["best"], state["bad_epochs"], state["history"]
        resumed_from, partial = state["epoch"], state.get("partial")
        where = f"epoch {partial['epoch']}, step {partial['steps']}" if partial else f"the end of epoch {state['epoch']}"
        print(f"resuming {cfg.name} from {where} ({last_path})", file=sys.stderr)
        if bad_epochs >= cfg.trainer.patience:  # early stopping had ended it; only its finishing was cut short
            start_epoch = cfg.trainer.max_epochs + 1
    if resumed_from is None or not (run_dir / "config.yaml").exists():  # a resume keeps the settings it began with
        atomic_write_text(run_dir / "config.yaml", OmegaConf.to_yaml(cfg, resolve=True))

    logger = build_logger(cfg, run_dir, history, config_dict)
    summary = {"name": cfg.name, "dataset": cfg.dataset.name, "model": cfg.model.cell, "regularizer": cfg.regularizer.name,
               "metric": task.metric, "scale": cfg.scale_name, "seed": cfg.seed, "device": describe_device(device),
               "commit": git_commit(), "parameters": sum(p.numel() for p in trainable_parameters(model)), "status": "running"}
    if resumed_from is not None:
        summary["resumed_from_epoch"] = resumed_from  # this process continued from last.pt (e.g. a requeued job)
    wall_start = time.perf_counter()

    def last_checkpoint(epoch: int, partial_progress: dict | None = None) -> dict:
        """last.pt: everything to continue after `epoch` (completed), or from inside the next one."""
        saved = {"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                 "rng": checkpoint.rng_state(generator), "epoch": epoch, "best": best,
                 "bad_epochs": bad_epochs, "history": history, "config": config_dict}
        if partial_progress is not None:
            saved["partial"] = partial_progress
        return saved

    stop = StopSignals()
    try:
        stop.__enter__()
        epoch = start_epoch - 1
        for epoch in range(start_epoch, cfg.trainer.max_epochs + 1):
            for group in optimizer.param_groups:
                group["lr"] = learning_rate(cfg.optim, epoch)
            # Where each epoch ran, in its own record: a resumed run's epochs may come from other commits or machines.
            record = {"epoch": epoch, "lr": optimizer.param_groups[0]["lr"], "commit": summary["commit"],
                      "device": summary["device"]}
            save_partial = lambda progress, done=epoch - 1: checkpoint.save(last_path, last_checkpoint(done, progress))
            record.update(train_one_epoch(cfg, model, task, optimizer, weight_noise, generator, epoch, diverged_above,
                                          partial if partial and partial["epoch"] == epoch else None, save_partial, stop))
            partial = None
            eval_start = time.perf_counter()
            if cfg.trainer.bn_recalibration_batches:  # null: the training-time EMA, as the paper's code
                # best.pt keeps the statistics it was validated with
                recalibrate_batchnorm(model, task, cfg.trainer.bn_recalibration_batches, recalibration_seed(cfg, epoch))
            valid_metric, valid_loss = evaluate(model, task, "valid", max_batches=cfg.trainer.eval_max_batches)
            record.update({"valid_loss": valid_loss, f"valid_{task.metric}": valid_metric,
                           "eval_seconds": time.perf_counter() - eval_start})
            if not valid_loss <= diverged_above:  # NaN included; checked before anything of this epoch is saved
                raise Diverged(f"epoch {epoch}: validation loss {valid_loss:.4g} nats is above {diverged_above:.4g}, "
                               "trainer.divergence_factor x the uniform prediction's loss")
            if best is None or valid_metric < best["valid"]:
                best, bad_epochs = {"valid": valid_metric, "valid_loss": valid_loss, "epoch": epoch}, 0
                checkpoint.save(best_path, {"model": model.state_dict(), "epoch": epoch, "config": config_dict})
            else:
                bad_epochs += 1
            history.append(record)
            # The checkpoint (holding the history) is written before the metrics files, so a kill
            # between the two is repaired on resume, which rewrites metrics.jsonl from it.
            checkpoint.save(last_path, last_checkpoint(epoch))
            stop.unsaved = False
            logger.log_epoch(record)
            print(f"epoch {epoch}: train {task.metric} {record[f'train_{task.metric}']:.4f}  valid {task.metric} "
                  f"{valid_metric:.4f}  {record['tokens_per_s']:,.0f} tok/s  {record['train_seconds']:.1f}s", file=sys.stderr)
            if stop.received is not None:
                raise Interrupted(stop.received, f"after epoch {epoch}")
            if bad_epochs >= cfg.trainer.patience:
                print(f"early stopping: no better valid {task.metric} for {bad_epochs} epochs", file=sys.stderr)
                break

        model.load_state_dict(checkpoint.load(best_path)["model"])
        test_metric, test_loss = evaluate(model, task, "test")
        summary.update({"status": "finished", "epochs_run": len(history), "best_epoch": best["epoch"],
                        "best_valid": best["valid"], "best_valid_loss": best["valid_loss"],
                        "test": test_metric, "test_loss": test_loss})
        if cfg.trainer.eval_stream and task.metric != "error":  # state carried over the whole split
            summary["valid_stream"] = evaluate(model, task, "valid", stream=True)[0]
            summary["test_stream"] = evaluate(model, task, "test", stream=True)[0]
        summary["wall_seconds"] = time.perf_counter() - wall_start
        logger.log_summary(summary)
        print(f"{cfg.name} seed {cfg.seed}: best valid {task.metric} {best['valid']:.4f} (epoch {best['epoch']}), "
              f"test {task.metric} {test_metric:.4f} [{cfg.scale_name} scale, {summary['device']}, "
              f"{summary['wall_seconds']:.0f}s] -> {run_dir}")
        return summary
    except Diverged as error:
        summary.update({"status": "diverged", "error": str(error), "epochs_run": len(history)})
        logger.log_summary(summary)
        raise
    finally:
        stop.__exit__()
        logger.finish()


ERROR_FILE = "error.txt"  # a failed run's one-line error, in its run folder (read by scripts/replicate.py)


class JobFailed(RuntimeError):
    """A multirun job's failure, raised (not sys.exit) so the launcher records it and runs the other jobs."""


def slurm_requeued() -> bool:
    """True in a Slurm job that was requeued (preempted, `scontrol requeue`, or submitit's time-limit requeue)."""
    return os.environ.get("SLURM_RESTART_COUNT", "0").strip() not in ("", "0")


def job_failed(run_dir: Path, message: str, status: int, multirun: bool, record: bool = True) -> None:
    """record=False: the folder is not this job's to write (another process holds it)."""
    runs_root = Path(os.environ.get("ZONEOUT_RUNS_DIR", "runs"))
    if record and not (status == 2 and not multirun and remove_if_untouched(run_dir, runs_root)):
        atomic_write_text(run_dir / ERROR_FILE, message + "\n")
    if multirun:
        print(f"error: {message}", file=sys.stderr, flush=True)
        raise JobFailed(message)
    fail(message, status)


@hydra.main(config_path=str(config_dir()), config_name="config", version_base="1.3")
def hydra_entry(cfg: DictConfig) -> None:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    hydra_cfg = HydraConfig.get()
    run_dir = Path(hydra_cfg.runtime.output_dir)
    multirun = hydra_cfg.mode == RunMode.MULTIRUN
    if slurm_requeued() and not cfg.trainer.resume:
        # A requeued job reruns the command it was submitted with: continue, never restart from scratch.
        print(f"Slurm requeued this job (SLURM_RESTART_COUNT={os.environ['SLURM_RESTART_COUNT']}): "
              "trainer.resume=true", file=sys.stderr)
        with open_dict(cfg):
            cfg.trainer.resume = True
    try:
        train(cfg, run_dir)
    except (ConfigError, ModelConfigError, checkpoint.CheckpointError) as error:
        job_failed(run_dir, str(error), 2, multirun)
    except RunFolderError as error:
        job_failed(run_dir, str(error), 2, multirun, record="in use by another process" not in str(error))
    except Diverged as error:
        job_failed(run_dir, f"training diverged ({error}); the last good checkpoint is {run_dir / 'last.pt'}", 3, multirun)
    except Interrupted as error:
        print(f"interrupted: {error}; saved to {run_dir / 'last.pt'}; continue with the same command and "
              "trainer.resume=true", file=sys.stderr, flush=True)
        sys.exit(128 + error.signum)
    except Exception as error:  # data errors and the like: one line, not a traceback
        if isinstance(error, DataError):
            job_failed(run_dir, str(error), 2, multirun)
        lines = str(error).strip().splitlines()
        atomic_write_text(run_dir / ERROR_FILE, f"{type(error).__name__}: {lines[0] if lines else ''}\n")
        raise
    (run_dir / ERROR_FILE).unlink(missing_ok=True)  # an earlier attempt's error no longer applies


def main() -> None:
    # `+experiment=x` is what people type; experiment is already in the defaults list (as null).
    sys.argv = [a.replace("+experiment=", "experiment=", 1) if a.startswith("+experiment=") else a for a in sys.argv]
    try:
        check_group_overrides(sys.argv[1:])
        check_command_line(sys.argv[1:])
    except ConfigError as error:
        fail(str(error))
    hydra_entry()


if __name__ == "__main__":
    main()
