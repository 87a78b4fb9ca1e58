"""Run every row of a paper table (experiments/<table>.yaml) for the given seeds, then build the table.

    python scripts/replicate.py table1_ptb_char --scale quick --seeds 0 1 2 [--launcher joblib|slurm] [-- extra overrides]

Rows run one after another in subprocesses (or as one Hydra multirun with --launcher), each into
runs/<scale>/<experiment>/seed<seed>; a row whose run folder already has a finished summary is skipped
unless --force, and an interrupted one resumes from its last.pt. --rows runs a subset of the rows.
A failed row does not stop the others: at the end each (row, seed) that did not finish is reported
with the first line of its error (the run folder's error.txt, written by zoneout/train.py, or its
summary), the table is built from the rows that did, and the exit status is 1.
With --launcher slurm the jobs go through Slurm (configs/hydra/launcher/slurm.yaml); the script
returns once none of them is queued or running.
"""
from __future__ import annotations

import argparse
import collections
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))
from make_table import build_table, kept_runs_dir, load_table_spec, runs_root, scales, table_dir  # noqa: E402

from zoneout.stopping import stopped_for_good  # noqa: E402

ERROR_FILE = "error.txt"  # zoneout.train.ERROR_FILE


def run_folder(scale: str, experiment: str, seed: int) -> Path:
    return runs_root() / scale / experiment / f"seed{seed}"


def read_summary(folder: Path) -> dict | None:
    try:
        return json.loads((folder / "summary.json").read_text())
    except (OSError, ValueError):
        return None


def stopping_rule(experiment: str, scale: str, overrides: list[str]) -> tuple[int, int] | None:
    """(trainer.max_epochs, trainer.patience) of one row as it would run now (the real configs, composed);
    None if they do not compose (the row then runs, and reports the error itself)."""
    from hydra import compose, initialize_config_dir

    try:
        with initialize_config_dir(config_dir=str(ROOT / "configs"), version_base="1.3"):
            cfg = compose("config", overrides=[f"experiment={experiment}", f"scale={scale}",
                                               *(o for o in overrides if not o.lstrip("+~").startswith("hydra"))])
        return int(cfg.trainer.max_epochs), int(cfg.trainer.patience)
    except Exception:  # noqa: BLE001 - any composition error is the row's to report
        return None


def finished(scale: str, experiment: str, seed: int, rule: tuple[int, int] | None, kept: Path | None = None) -> bool:
    """A run with nothing left to do under the current stopping rule (max_epochs, patience), in its run
    folder or in the copy a table keeps under results/<scale>/runs (a table that grows over sessions or
    machines: the run folders of earlier sessions are gone). A run that the epoch cap stopped is not
    finished once the cap is raised: it continues from its last.pt (zoneout/train.py), or, if only the
    kept copy is left, runs again."""
    if rule is None:
        return False
    for folder in (run_folder(scale, experiment, seed), (kept or kept_runs_dir(scale)) / experiment / f"seed{seed}"):
        summary = read_summary(folder)
        if summary is not None and stopped_for_good(summary, *rule):
            return True
    return False


def first_line(text: str) -> str:
    return next((line.strip() for line in text.splitlines() if line.strip()), "")


def outcome(scale: str, experiment: str, seed: int, since: float) -> str | None:
    """None if the run finished, else the first line of why not (errors older than `since` are an
    earlier attempt's and are not reported)."""
    folder = run_folder(scale, experiment, seed)
    summary = read_summary(folder)
    if summary is not None and summary.get("status") == "finished":
        return None
    error = folder / ERROR_FILE
    if error.exists() and error.stat().st_mtime >= since:
        return first_line(error.read_text()) or "failed (empty error.txt)"
    if summary is not None and summary.get("error"):
        return first_line(summary["error"])
    if summary is not None:
        return f"stopped while {summary.get('status')} with no error recorded (killed?); a rerun resumes from last.pt"
    return "no summary and no error recorded: the job did not run or was killed before its first epoch"


def run_teeing_stderr(command: list[str], keep: int = 40) -> tuple[int, list[str]]:
    """Run command with its stderr passed through, returning the exit status and stderr's last lines."""
    tail: collections.deque[str] = collections.deque(maxlen=keep)
    with subprocess.Popen(command, cwd=ROOT, stderr=subprocess.PIPE, text=True, errors="replace") as process:
        for line in process.stderr:
            sys.stderr.write(line)
            sys.stderr.flush()
            if line.strip():
                tail.append(line.rstrip())
    return process.returncode, list(tail)


def launcher_error(tail: list[str]) -> str:
    """The launcher's last line that names an error (Hydra ends with a hint about HYDRA_FULL_ERROR)."""
    lines = [line.strip() for line in tail if "HYDRA_FULL_ERROR" not in line]
    named = [line for line in lines if any(word in line.lower() for word in ("error", "failed", "exception"))]
    return (named or lines or ["no output"])[-1]


def slurm_jobs_left(submitit_dir: Path, since: float) -> list[str]:
    """This sweep's Slurm jobs (submitit folders made since `since`) that are still queued or running."""
    if not submitit_dir.is_dir():
        return []
    ids = sorted({entry.name.split("_")[0] for entry in submitit_dir.iterdir()
                  if entry.is_dir() and entry.name.split("_")[0].isdigit() and entry.stat().st_mtime >= since})
    if not ids:
        return []
    # completing jobs have written their results: only these states mean "still to come"
    result = subprocess.run(["squeue", "-h", "-o", "%i", "-t", "PD,R,CF,S,RQ,RH,RF,RS", "-j", ",".join(ids)],
                            capture_output=True, text=True)
    return result.stdout.split() if result.returncode == 0 else []


def wait_for_slurm_jobs(submitit_dir: Path, since: float, poll_s: float = 10.0) -> None:
    """The launcher stops waiting at the first job that died without a result (e.g. killed for memory);
    wait for the others, so the table is built from every job that can finish."""
    left = slurm_jobs_left(submitit_dir, since)
    if left:
        print(f"[wait] {len(left)} Slurm job(s) of this table still queued or running: {' '.join(left)}", flush=True)
    while left:
        time.sleep(poll_s)
        left = slurm_jobs_left(submitit_dir, since)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("table", help="a file name in experiments/ without .yaml, e.g. table1_ptb_char")
    parser.add_argument("--scale", default="paper", choices=scales())
    parser.add_argument("--seeds", nargs="+", type=int, default=[0])
    parser.add_argument("--launcher", choices=["sequential", "joblib", "slurm"], default="sequential")
    parser.add_argument("--logger", default="wandb", choices=["wandb", "csv"])
    parser.add_argument("--rows", nargs="+", default=None, metavar="ROW",
                        help="run only these rows (their `name` in the table spec); the table is still built whole")
    parser.add_argument("--force", action="store_true",
                        help="run rows even where a finished run is kept in results/<scale>/runs "
                             "(a live run folder that finished is still skipped by trainer.resume)")
    parser.add_argument("overrides", nargs="*", help="extra Hydra overrides for every row")
    args = parser.parse_intermixed_args()  # overrides may come before or after the options
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
    since = time.time() - 1.0  # errors written from now on are this attempt's
    launcher_tail: list[str] = []
    launcher_status = 0
    try:  # where the table keeps its runs: results/<scale>/runs, or its overrides' own folder
        kept = kept_runs_dir(args.scale, table_dir(table_spec, args.scale, tuple(args.overrides)))
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    runs = []  # what to run: rows with an experiment (not a figure cited from another paper), not finished yet
    for row in (r for r in spec["rows"] if r.get("experiment")):
        rule = stopping_rule(row["experiment"], args.scale, args.overrides)
        for seed in args.seeds:
            if not args.force and finished(args.scale, row["experiment"], seed, rule, kept):
                print(f"[skip] {row['experiment']} seed {seed}: already finished", flush=True)
            else:
                runs.append((row, seed))
    failures = []  # (row, seed, the first line of why it did not finish)
    if args.launcher == "sequential":
        for row, seed in runs:
            print(f"[run] {row['experiment']} seed {seed} ({args.scale} scale)", flush=True)
            command = [sys.executable, "-m", "zoneout.train", f"experiment={row['experiment']}", f"seed={seed}", *base]
            returncode = subprocess.run(command, cwd=ROOT).returncode
            if returncode != 0:
                why = outcome(args.scale, row["experiment"], seed, since)
                failures.append((row, seed, why if why else f"exited with status {returncode}"))
    elif runs:
        launcher = {"joblib": "hydra/launcher=joblib", "slurm": "hydra/launcher=slurm"}[args.launcher]
        sweep_dir = runs_root() / args.scale
        if args.launcher == "slurm":
            print(f"[slurm] one job per row and seed ({len(runs)}); job logs in {sweep_dir / '.submitit'}", flush=True)
        # A multirun is a product experiments x seeds: one per set of rows that still lack the same seeds.
        seeds_of: dict[str, list[int]] = {}
        for row, seed in runs:
            seeds_of.setdefault(row["experiment"], []).append(seed)
        groups: dict[tuple, list[str]] = {}
        for experiment, seeds in seeds_of.items():
            groups.setdefault(tuple(seeds), []).append(experiment)
        for seeds, experiments in groups.items():
            # Multirun jobs write to the sweep dir; point each job at the same run dir layout.
            command = [sys.executable, "-m", "zoneout.train", "-m", f"experiment={','.join(experiments)}",
                       f"seed={','.join(map(str, seeds))}", launcher, f"hydra.sweep.dir={sweep_dir}",
                       "hydra.sweep.subdir=${name}/seed${seed}", *base]
            status, tail = run_teeing_stderr(command)
            launcher_status, launcher_tail = (status, tail) if status else (launcher_status, launcher_tail)
        if args.launcher == "slurm":
            wait_for_slurm_jobs(sweep_dir / ".submitit", since)
        # One launcher for all jobs: each job's outcome is read from its run folder.
        failures = [(row, seed, why) for row, seed in runs
                    if (why := outcome(args.scale, row["experiment"], seed, since)) is not None]
    status = 0
    if failures:
        print(f"error: {len(failures)} of {len(runs)} run(s) did not finish:", file=sys.stderr)
        for row, seed, why in failures:
            print(f"  row {row['name']} ({row['experiment']}) seed {seed}: {why}", file=sys.stderr)
        if launcher_status != 0 and launcher_tail and all(why.startswith("no summary") for _, _, why in failures):
            print(f"  the {args.launcher} launcher exited with {launcher_status}: {launcher_error(launcher_tail)}",
                  file=sys.stderr)
        status = 1
    elif launcher_status != 0:
        print(f"error: the {args.launcher} launcher exited with {launcher_status} "
              f"({launcher_error(launcher_tail)}), though every run finished", file=sys.stderr)
        status = 1
    try:
        # a row without one of the seeds says so; runs whose overrides change the rows get a table of their own
        build_table(table_spec, args.scale, print_table=True, seeds=args.seeds, overrides=args.overrides)
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        status = 1
    return status


if __name__ == "__main__":
    sys.exit(main())
