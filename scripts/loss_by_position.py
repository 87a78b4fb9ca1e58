"""Validation BPC by position inside the chunk, for a run of the chunks loader (char-PTB, text8).

Every validation (and training) chunk starts from the initial state, so its first predictions are made
with no context. What those cost is the most a better starting state (model.initial_state=learned, as
the authors' code) could recover: this script measures it on a checkpoint, changing nothing on disk.

    python scripts/loss_by_position.py RUN_DIR [--checkpoint best.pt] [--data-dir data] [--out FILE.md]

Prints (and with --out writes) the BPC of each position band, the whole split's mean (the run's
valid_bpc, recomputed as a check) and the "start cost": the mean minus what the split would score if
every position cost what positions 51 on do.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from omegaconf import OmegaConf

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from zoneout import checkpoint  # noqa: E402
from zoneout.atomic import atomic_write_text  # noqa: E402
from zoneout.models.build import build_model  # noqa: E402
from zoneout.tasks import build_task  # noqa: E402

BANDS = ((1, 1), (2, 2), (3, 3), (4, 5), (6, 10), (11, 20), (21, 50), (51, None))  # 1-based, inclusive
STEADY_FROM = 51


@torch.no_grad()
def nll_by_position(model, task, split: str = "valid") -> tuple[torch.Tensor, torch.Tensor]:
    """Summed NLL (nats) and prediction count per position (0 = the first prediction of a chunk)."""
    model.eval()
    sums, counts = torch.zeros(0, dtype=torch.float64), torch.zeros(0, dtype=torch.float64)
    for batch in task.eval_batches(split):
        inputs, targets = batch[:, :-1], batch[:, 1:]
        logits, _, _ = model(inputs)
        nll = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.t().reshape(-1), reduction="none")
        per_position = nll.view(targets.shape[1], targets.shape[0]).double().sum(dim=1)
        if len(per_position) > len(sums):
            grow = len(per_position) - len(sums)
            sums, counts = F.pad(sums, (0, grow)), F.pad(counts, (0, grow))
        sums[:len(per_position)] += per_position
        counts[:len(per_position)] += targets.shape[0]
    return sums, counts


def summarize(sums: torch.Tensor, counts: torch.Tensor) -> dict:
    bpc = lambda s, c: float(s / c) / math.log(2)  # noqa: E731
    bands = []
    for first, last in BANDS:
        stop = len(sums) if last is None else min(last, len(sums))
        if first <= stop:
            bands.append((first, stop, bpc(sums[first - 1:stop].sum(), counts[first - 1:stop].sum())))
    mean = bpc(sums.sum(), counts.sum())
    steady = bpc(sums[STEADY_FROM - 1:].sum(), counts[STEADY_FROM - 1:].sum()) if len(sums) >= STEADY_FROM else None
    return {"bands": bands, "mean": mean, "steady": steady, "start_cost": None if steady is None else mean - steady,
            "predictions": int(counts.sum())}


def render(run_dir: Path, name: str, epoch, summary: dict, logged) -> str:
    lines = [f"Validation BPC by position in the chunk: `{run_dir}` / `{name}` (epoch {epoch})", "",
             "| positions | BPC |", "|---|---|"]
    lines += [f"| {a}{'' if a == b else f'-{b}'} | {v:.4f} |" for a, b, v in summary["bands"]]
    lines += ["", f"- whole split: {summary['mean']:.4f} BPC over {summary['predictions']:,} predictions"
              + (f" (the run logged {logged:.4f} for this epoch)" if logged is not None else "")]
    if summary["steady"] is not None:
        lines.append(f"- positions {STEADY_FROM} on: {summary['steady']:.4f}; start cost (whole − that): "
                     f"{summary['start_cost']:+.4f} BPC")
    return "\n".join(lines) + "\n"


def logged_valid(run_dir: Path, epoch) -> float | None:
    """The validation BPC the run logged for that epoch (metrics.jsonl), if it did."""
    try:
        records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    except (OSError, json.JSONDecodeError):
        return None
    return next((r.get("valid_bpc") for r in records if r.get("epoch") == epoch), None)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--checkpoint", default="best.pt")
    parser.add_argument("--data-dir", default=None, help="where the dataset is (default: the run's dataset.data_dir)")
    parser.add_argument("--out", type=Path, default=None, help="also write the report here (markdown)")
    args = parser.parse_args(argv)
    config, weights = args.run_dir / "config.yaml", args.run_dir / args.checkpoint
    if not config.is_file() or not weights.is_file():
        print(f"error: run_dir: {args.run_dir} needs config.yaml and {args.checkpoint}", file=sys.stderr)
        return 2
    cfg = OmegaConf.load(config)
    if cfg.dataset.loader != "chunks":
        print(f"error: run_dir: dataset.loader is {cfg.dataset.loader}; positions in a chunk need the chunks loader",
              file=sys.stderr)
        return 2
    if args.data_dir:
        cfg.dataset.data_dir = args.data_dir
    torch.set_flush_denormal(True)
    task, vocab, outputs, max_length = build_task(cfg, torch.device("cpu"))
    model = build_model(cfg.model, cfg.regularizer, vocab, outputs, max_length)
    state = checkpoint.load(weights)
    model.load_state_dict(state["model"])
    epoch = state.get("epoch")
    logged = logged_valid(args.run_dir, epoch)
    report = render(args.run_dir, args.checkpoint, epoch, summarize(*nll_by_position(model, task)), logged)
    print(report, end="")
    if args.out:
        atomic_write_text(args.out, report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
