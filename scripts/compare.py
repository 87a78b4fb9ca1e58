"""Compare any set of finished run folders in the same table as make_table.py.

    python scripts/compare.py runs/quick/ptb_char/zoneout/seed0 runs/quick/ptb_char/zoneout/seed1 ... [--out PATH.md]

Runs with the same `name` are one row (mean ± std over their seeds). A row's paper figures come from
the experiments/*.yaml row whose experiment is that name, when there is one. The markdown goes to
stdout; --out also writes PATH.md, PATH.csv and PATH.png (validation curves). All runs must share one
metric and one scale; a missing or unfinished run folder is an error (exit status 2).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))
sys.path.insert(0, str(ROOT))
from make_table import plot_curves, render_csv, render_markdown, summarize_row  # noqa: E402

from zoneout.atomic import atomic_write_text  # noqa: E402


def load_run(run_dir: Path) -> tuple[dict, Path]:
    summary_path, metrics_path = run_dir / "summary.json", run_dir / "metrics.jsonl"
    if not run_dir.is_dir():
        raise ValueError(f"{run_dir}: no such run folder")
    if not summary_path.is_file() or not metrics_path.is_file():
        raise ValueError(f"{run_dir}: not a run folder (needs summary.json and metrics.jsonl)")
    try:
        summary = json.loads(summary_path.read_text())
    except json.JSONDecodeError as error:
        raise ValueError(f"{summary_path}: not valid JSON ({error.msg})") from None
    if summary.get("status") != "finished":
        raise ValueError(f"{run_dir}: run status is {summary.get('status')!r}, not 'finished'")
    return summary, run_dir


def paper_rows() -> dict[str, tuple[dict, dict]]:
    """experiment name -> (table row, table spec), preferring a row that has paper figures."""
    found: dict[str, tuple[dict, dict]] = {}
    for path in sorted((ROOT / "experiments").glob("*.yaml")):
        spec = yaml.safe_load(path.read_text())
        for row in spec.get("rows", []):
            name = row.get("experiment")
            has_figure = any(v is not None for v in (row.get("paper") or {}).values())
            if name and (name not in found or has_figure and not any(
                    v is not None for v in (found[name][0].get("paper") or {}).values())):
                found[name] = (row, spec)
    return found


def quick_scale_text(dataset: str) -> str:
    path = ROOT / "configs" / "dataset" / f"{dataset}.yaml"
    quick = yaml.safe_load(path.read_text()).get("quick", {}) if path.exists() else {}
    return ", ".join(f"{key} {value}" for key, value in quick.items()) or "see configs/dataset/*.yaml"


def compare(run_dirs: list[Path], out: Path | None = None) -> str:
    if not run_dirs:
        raise ValueError("give at least one run folder")
    groups: dict[str, list[tuple[dict, Path]]] = {}
    for run_dir in run_dirs:
        summary, folder = load_run(run_dir)
        group = groups.setdefault(summary["name"], [])
        if any(s["seed"] == summary["seed"] for s, _ in group):
            raise ValueError(f"{run_dir}: a second run of {summary['name']} with seed {summary['seed']}")
        group.append((summary, folder))
    summaries = [s for group in groups.values() for s, _ in group]
    for field in ("metric", "scale"):
        values = sorted({s[field] for s in summaries})
        if len(values) > 1:
            raise ValueError(f"runs mix {field}s ({', '.join(values)}); compare one {field} at a time")
    metric, scale = summaries[0]["metric"], summaries[0]["scale"]

    known = paper_rows()
    rows, curves, quick_texts = [], [], []
    for name, runs in groups.items():
        table_row, spec = known.get(name, ({"label": name}, {}))
        row = {"label": table_row["label"], "experiment": name, "paper": table_row.get("paper"),
               "cited": table_row.get("cited", False)}
        entry, row_curves = summarize_row(row, sorted(runs, key=lambda run: run[0]["seed"]), metric)
        rows.append(entry)
        curves.extend(row_curves)
        quick_texts.append(spec.get("quick_scale") or quick_scale_text(runs[0][0]["dataset"]))
    spec = {"table": "compare", "title": f"Comparison of {len(summaries)} run(s), {len(rows)} row(s) ({metric})",
            "metric": metric, "source": "the matching row of experiments/*.yaml, where the run's name is one",
            "quick_scale": "; ".join(dict.fromkeys(quick_texts))}
    markdown = render_markdown(spec, scale, rows, 1 if metric == "perplexity" else 3)
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(out.with_suffix(".md"), markdown)
        atomic_write_text(out.with_suffix(".csv"), render_csv(rows))
        if curves:
            plot_curves(spec, scale, curves, out.with_suffix(".png"))
    return markdown


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dirs", nargs="+", type=Path, metavar="RUN_DIR")
    parser.add_argument("--out", type=Path, default=None, help="also write PATH.md, PATH.csv and PATH.png")
    args = parser.parse_args(argv)
    try:
        print(compare(args.run_dirs, args.out))
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
