"""A recurrent-BN run's validation metric with its training-EMA population statistics vs the population
re-estimated from training batches with the checkpoint's weights (what trainer.bn_recalibration_batches does
before each evaluation, with the same batches and RNG: on a run trained without it, the re-estimate is the
validation metric that run would have logged at that epoch with it). A large gap says the EMA lags the
weights at this scale.

    python scripts/bn_population.py runs/small/pmnist/recurrent_batchnorm/seed0 [--checkpoint last.pt] [--batches 5]

Reads <run>/config.yaml and the checkpoint's model state; evaluates on the run's validation prefix
(trainer.eval_max_batches); changes nothing on disk.
"""
from __future__ import annotations

import argparse
import copy
import sys
from pathlib import Path

import torch
from omegaconf import OmegaConf

from zoneout import checkpoint
from zoneout.models.build import build_model
from zoneout.tasks import build_task
from zoneout.train import evaluate, recalibrate_batchnorm, recalibration_seed


def compare(run_dir: Path, checkpoint_name: str = "last.pt", batches: int = 5) -> dict:
    """{"epoch", "metric", "ema": (metric, loss), "reestimated": (metric, loss), "batches": used}."""
    cfg = OmegaConf.load(run_dir / "config.yaml")
    torch.manual_seed(cfg.seed)
    task, vocab, outputs, max_length = build_task(cfg, torch.device("cpu"))
    model = build_model(cfg.model, cfg.regularizer, vocab, outputs, max_length)
    state = checkpoint.load(run_dir / checkpoint_name)
    model.load_state_dict(state["model"])
    limit = cfg.trainer.eval_max_batches
    ema = evaluate(model, task, "valid", max_batches=limit)
    reestimated_model = copy.deepcopy(model)
    used = recalibrate_batchnorm(reestimated_model, task, batches, recalibration_seed(cfg, state.get("epoch", 0)))
    if used == 0:
        raise ValueError(f"{run_dir}: the model has no recurrent batch norm")
    reestimated = evaluate(reestimated_model, task, "valid", max_batches=limit)
    return {"epoch": state.get("epoch"), "metric": task.metric, "ema": ema, "reestimated": reestimated, "batches": used}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--checkpoint", default="last.pt")
    parser.add_argument("--batches", type=int, default=5, help="training batches to re-estimate from")
    args = parser.parse_args()
    path = args.run_dir / args.checkpoint
    if not path.is_file() or not (args.run_dir / "config.yaml").is_file():
        sys.exit(f"error: run_dir: {args.run_dir} needs config.yaml and {args.checkpoint}")
    if args.batches < 1:
        sys.exit(f"error: --batches must be a positive integer, got {args.batches}")
    torch.set_flush_denormal(True)
    try:
        result = compare(args.run_dir, args.checkpoint, args.batches)
    except ValueError as error:
        sys.exit(f"error: {error}")
    name = result["metric"]
    print(f"{args.run_dir} ({args.checkpoint}, epoch {result['epoch']}): valid {name} "
          f"{result['ema'][0]:.4f} (loss {result['ema'][1]:.3f}) with the training EMA, "
          f"{result['reestimated'][0]:.4f} (loss {result['reestimated'][1]:.3f}) re-estimated from "
          f"{result['batches']} training batches")


if __name__ == "__main__":
    main()
