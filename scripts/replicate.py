"""Run every row of a paper table (experiments/<table>.yaml) for the given seeds, then build the table.

    python scripts/replicate.py table1_ptb_char --scale quick --seeds 0 1 2 [--launcher joblib|slurm] [-- extra overrides]

Rows run one after another in subprocesses (or as one Hydra multirun with --launcher), each into
runs/<scale>/<experiment>/seed<seed>; a row whose run folder already has a finished summary is skipped
unless --force, and an interrupted one resumes from its last.pt. --rows runs a subset of the rows. A failed row does not stop the others; the exit status says whether all succeeded.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))
from make_table import build_table, load_table_spec, runs_root, scales  # noqa: E402


def finished(scale: str, experiment: str, seed: int) -> bool:
    summary = runs_root() / scale / experiment / f"seed{seed}" / "summary.json"
    return summary.exists() and json.loads(summary.read_text()).get("status") == "finished"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("table", help="a file name in experiments/ without .yaml, e.g. table1_ptb_char")
    parser.add_argument("--scale", default="paper", choices=scales())
    parser.add_argument("--seeds", nargs="+", type=int, default=[0])
    parser.add_argument("--launcher", choices=["sequential", "joblib", "slurm"], default="sequential")
    parser.add_argument("--logger", default="wandb", choices=["wandb", "csv"])
    parser.add_argument("--rows", nargs="+", default=None, metavar="ROW",
                        help="run only these rows (their `name` in the table spec); the table is still built whole")
    parser.add_argument("--force", action="store_true", help="rerun rows that already finished")
    parser.add_argument("overrides", nargs="*", help="extra Hydra overrides for every row")
    args = parser.parse_args()
    try:
        spec = load_table_spec(args.table)
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if spec.get("script"):
        print(f"error: table {args.table} is made by {spec['script']}; run that script", file=sys.stderr)
        return 2
    if args.rows:
        known = [row["name"] for row in spec["rows"] if row.get("experiment")]
        unknown = [name for name in args.rows if name not in known]
        if unknown:
            print(f"error: --rows {unknown[0]!r} is not a row of {args.table}; allowed: {', '.join(known)}", file=sys.stderr)
            return 2
        spec = {**spec, "rows": [row for row in spec["rows"] if row["name"] in args.rows]}
    table_spec = load_table_spec(args.table)  # the table is built from every row that has runs
    # trainer.resume: an interrupted row continues from its last.pt, a finished one is skipped (any launcher).
    base = [f"scale={args.scale}", f"logger={args.logger}", "trainer.resume=true", *args.overrides]
    failures = []
    if args.launcher == "sequential":
        for row in spec["rows"]:
            if not row.get("experiment"):
                continue  # e.g. a figure the paper cites from another paper: nothing of ours to run
            for seed in args.seeds:
                if not args.force and finished(args.scale, row["experiment"], seed):
                    print(f"[skip] {row['experiment']} seed {seed}: already finished", flush=True)
                    continue
                print(f"[run] {row['experiment']} seed {seed} ({args.scale} scale)", flush=True)
                command = [sys.executable, "-m", "zoneout.train", f"experiment={row['experiment']}", f"seed={seed}", *base]
                if subprocess.run(command, cwd=ROOT).returncode != 0:
                    failures.append(f"{row['experiment']} seed {seed}")
    else:
        experiments = ",".join(r["experiment"] for r in spec["rows"] if r.get("experiment"))
        launcher = {"joblib": "hydra/launcher=joblib", "slurm": "hydra/launcher=slurm"}[args.launcher]
        seeds = ",".join(map(str, args.seeds))
        # Multirun jobs write to the sweep dir; point each job at the same run dir layout.
        command = [sys.executable, "-m", "zoneout.train", "-m", f"experiment={experiments}", f"seed={seeds}", launcher,
                   "hydra.sweep.dir=" + str(runs_root() / args.scale), "hydra.sweep.subdir=${name}/seed${seed}", *base]
        if subprocess.run(command, cwd=ROOT).returncode != 0:
            failures.append("multirun")
    status = 0
    if failures:
        print(f"error: {len(failures)} run(s) failed: {', '.join(failures)}", file=sys.stderr)
        status = 1
    try:
        build_table(table_spec, args.scale, print_table=True)
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        status = 1
    return status


if __name__ == "__main__":
    sys.exit(main())
