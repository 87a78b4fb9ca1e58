"""What both toys share: their spec (experiments/<toy>.yaml), the command line, run metadata and atomic output."""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Callable

import torch
import yaml

from zoneout.atomic import atomic_write_bytes, atomic_write_text
from zoneout.train import describe_device, git_commit

ROOT = Path(__file__).resolve().parent.parent.parent


def load_spec(toy: str) -> dict:
    return yaml.safe_load((ROOT / "experiments" / f"{toy}.yaml").read_text())


def scale_settings(spec: dict, scale: str) -> dict:
    if scale not in spec["scales"]:
        raise ValueError(f"--scale={scale}: unknown; allowed: {', '.join(spec['scales'])}")
    return dict(spec["scales"][scale])


def base_parser(description: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--scale", default="paper", help="a scale of the toy's experiments/*.yaml (paper, quick)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="one run per variant and seed")
    parser.add_argument("--variants", nargs="+", default=None, help="only these variants (names in the yaml)")
    parser.add_argument("--out-dir", default=None, help="default: results/<scale>")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1: leave the other cores alone)")
    return parser


def check_common(args, spec: dict) -> list[dict]:
    """Validate the shared arguments; returns the variants to run."""
    if len(set(args.seeds)) != len(args.seeds):
        raise ValueError(f"--seeds={' '.join(map(str, args.seeds))}: each seed once")
    if any(seed < 0 for seed in args.seeds):
        raise ValueError(f"--seeds={' '.join(map(str, args.seeds))}: seeds must be non-negative")
    if args.threads < 1:
        raise ValueError(f"--threads={args.threads}: must be a positive integer")
    names = [variant["name"] for variant in spec["variants"]]
    wanted = args.variants or names
    unknown = [name for name in wanted if name not in names]
    if unknown:
        raise ValueError(f"--variants: unknown {' '.join(unknown)}; allowed: {', '.join(names)}")
    return [variant for variant in spec["variants"] if variant["name"] in wanted]


def run_metadata(args) -> dict:
    return {"device": describe_device(torch.device("cpu")), "commit": git_commit(), "torch": torch.__version__,
            "seeds": list(args.seeds), "scale": args.scale}


def mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def fmt(values: list[float], digits: int = 3) -> str:
    """mean ± std over seeds (just the value for one seed)."""
    mean, std = mean_std(values)
    return f"{mean:.{digits}f}" + (f" ± {std:.{digits}f}" if len(values) > 1 else "")


def write_outputs(out_dir: Path, toy: str, report: dict, markdown: str, draw: Callable) -> None:
    """results/<scale>/<toy>.{json,md,png}, each written atomically (a killed run leaves the old file or the new)."""
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir.mkdir(parents=True, exist_ok=True)
    figure = draw(plt)
    figure.tight_layout()
    png = io.BytesIO()
    figure.savefig(png, format="png", dpi=110)
    plt.close(figure)
    atomic_write_bytes(out_dir / f"{toy}.png", lambda handle: handle.write(png.getvalue()))
    atomic_write_text(out_dir / f"{toy}.json", json.dumps(report, indent=2) + "\n")
    atomic_write_text(out_dir / f"{toy}.md", markdown)


def cli(run: Callable, parse: Callable, argv=None) -> int:
    """Parse, run with the requested thread count, and turn bad input into one line on stderr and exit 2."""
    args = parse(argv)
    try:
        torch.set_num_threads(max(args.threads, 1))
        started = time.perf_counter()
        run(args, started)
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


def default_out_dir(args) -> Path:
    return Path(args.out_dir) if args.out_dir else ROOT / "results" / args.scale



def publish(args, toy: str, report: dict, markdown: str, draw: Callable) -> None:
    """Write results/<scale>/<toy>.{md,json,png} atomically and print the table."""
    out_dir = default_out_dir(args)
    write_outputs(out_dir, toy, report, markdown, draw)
    print(markdown)
    print(f"wrote {out_dir / toy}.{{md,json,png}}", file=sys.stderr)
