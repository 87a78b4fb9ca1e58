"""Build a paper table from run folders: results/<scale>/<table>.md, .csv and .png.

    python scripts/make_table.py table1_ptb_char [--scale quick]

Each row: our mean ± std over seeds (valid and test, best-validation checkpoint), the paper's figure,
the difference, epochs run, and the scale, device, seeds and commit that produced it. Rows without
finished runs are listed as "not run"; a row that lacks some of the table's seeds (--seeds, else every
seed found among its rows) names them. Below the table, each of the paper's orderings listed in the
spec's `claims` is checked against our means (holds or not, and whether within seed noise). The .png
has the training (dashed) and validation (solid) curves per epoch, one colour per row, as the paper's
Figures 4 and 5: validation per seed faint and their mean bold, training as the mean over seeds.

A run is taken into a row only if its config.yaml is the row's experiment as the configs compose it at
that scale (zoneout/run_identity.py, the rule resuming applies). A sweep member or a run with other
overrides keeps the experiment's name: any such run found stops the table with one line naming it and
the setting that differs, and nothing is written (a kept copy in results/ is never replaced by it).
An unreadable summary.json, config.yaml or metrics.jsonl stops it the same way.

    python scripts/make_table.py table1_ptb_char --scale quick model.hidden_size=25 ...

builds the table of runs made with those extra overrides (what `replicate.py ... <overrides>` ran). If
they change what a row trains, those runs are not the rows as configured: their table, and the copies
of their runs, go to results/<scale>/overrides-<hash>/ (the overrides written at the top of the table),
never over results/<scale>/.
"""
from __future__ import annotations

import argparse
import csv
import functools
import hashlib
import io
import json
import math
import os
import statistics
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
# The configs rows are composed from: where this script lives (ROOT may point elsewhere in tests).
CONFIGS = Path(__file__).resolve().parent.parent / "configs"
sys.path.insert(0, str(ROOT))
from zoneout.atomic import atomic_write_text  # noqa: E402
from zoneout.run_identity import RUN_DEFINING, first_difference  # noqa: E402


def runs_root() -> Path:
    return Path(os.environ.get("ZONEOUT_RUNS_DIR", ROOT / "runs"))


def results_root() -> Path:
    """Where tables are written: results/ (ZONEOUT_RESULTS_DIR elsewhere, e.g. for tests)."""
    return Path(os.environ.get("ZONEOUT_RESULTS_DIR", ROOT / "results"))


def scales() -> list[str]:
    """The scales configs/scale/ defines (paper, quick, small, ...)."""
    return sorted(p.stem for p in (CONFIGS / "scale").glob("*.yaml"))


def load_table_spec(table: str) -> dict:
    path = ROOT / "experiments" / f"{table}.yaml"
    if not path.exists():
        allowed = sorted(p.stem for p in (ROOT / "experiments").glob("*.yaml"))
        raise ValueError(f"table {table!r} not found; allowed: {', '.join(allowed)}")
    return yaml.safe_load(path.read_text())


# What a table keeps of each run, committed under results/<scale>/runs/<experiment>/seed<N>/ so the table
# (and its curves) can be rebuilt and extended in a checkout that no longer has the run folders.
KEPT_FILES = ("summary.json", "metrics.jsonl", "config.yaml")


def kept_runs_dir(scale: str, out_dir: Path | None = None) -> Path:
    return (out_dir or results_root() / scale) / "runs"


# A finished summary without these cannot be a row's run (make_table reads each of them).
SUMMARY_KEYS = ("seed", "best_valid", "test", "epochs_run", "device", "commit")
FIX_A_FILE = "restore it (git checkout, for a copy kept under results/) or move its run folder aside and rerun that seed"


def unreadable(path: Path, why: str) -> ValueError:
    return ValueError(f"{path}: {why}; {FIX_A_FILE}")


def read_summary(path: Path) -> dict:
    try:
        summary = json.loads(path.read_text())
    except ValueError as error:  # a truncated or hand-edited file
        raise unreadable(path, f"not valid JSON ({error})") from None
    if not isinstance(summary, dict):
        raise unreadable(path, "not a JSON object")
    missing = [key for key in SUMMARY_KEYS if key not in summary] if summary.get("status") == "finished" else []
    if missing:
        raise unreadable(path, f"a finished run's summary without {', '.join(missing)}")
    return summary


def read_config(path: Path) -> dict:
    """A run's resolved config (config.yaml, as zoneout/train.py writes it)."""
    if not path.exists():
        raise unreadable(path, "missing, so which experiment the run was cannot be checked")
    try:
        config = yaml.safe_load(path.read_text())
    except yaml.YAMLError as error:
        raise unreadable(path, f"not valid YAML ({' '.join(str(error).split())})") from None
    if not isinstance(config, dict):
        raise unreadable(path, "not a run's config (no settings)")
    absent = [key for key in RUN_DEFINING if key not in config]
    if absent:  # train.py writes every group: a file cut short
        raise unreadable(path, f"incomplete (no {absent[0]} settings)")
    return config


def read_metrics(path: Path) -> list[dict]:
    if not path.exists():
        raise unreadable(path, "missing (the row's curves need it)")
    metrics = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line:
            continue
        try:
            metrics.append(json.loads(line))
        except ValueError as error:
            raise unreadable(path, f"line {number} is not valid JSON ({error})") from None
    return metrics


def run_overrides(overrides: list[str] | tuple[str, ...]) -> tuple[str, ...]:
    """The overrides that reach a run's config (Hydra's own settings, hydra.*, do not)."""
    return tuple(o for o in overrides if not o.lstrip("+~").startswith("hydra"))


@functools.lru_cache(maxsize=None)
def composed_config(experiment: str, scale: str, overrides: tuple[str, ...] = ()) -> dict:
    """The row's experiment at `scale` (plus extra overrides) as the configs compose it now, resolved
    (read-only: it is cached)."""
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    try:
        with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
            cfg = compose("config", overrides=[f"experiment={experiment}", f"scale={scale}", *run_overrides(overrides)])
        return OmegaConf.to_container(cfg, resolve=True)
    except Exception as error:  # noqa: BLE001 - any composition error means no run can be checked
        extra = f" {' '.join(overrides)}" if overrides else ""
        raise ValueError(f"experiment={experiment} scale={scale}{extra} does not compose: {' '.join(str(error).split())}") from None


def changed_rows(spec: dict, scale: str, overrides: tuple[str, ...]) -> str | None:
    """'row: setting: configured, now overridden' for the first row the overrides change, else None."""
    for row in (r for r in spec["rows"] if r.get("experiment")):
        difference = first_difference(composed_config(row["experiment"], scale),
                                      composed_config(row["experiment"], scale, run_overrides(overrides)))
        if difference is not None:
            return f"{row['experiment']}: {difference}"
    return None


def table_dir(spec: dict, scale: str, overrides: tuple[str, ...] = ()) -> Path:
    """results/<scale>/, or results/<scale>/overrides-<hash>/ for runs whose overrides change the rows."""
    if not overrides or changed_rows(spec, scale, overrides) is None:
        return results_root() / scale
    digest = hashlib.sha256("\n".join(run_overrides(overrides)).encode()).hexdigest()[:8]
    return results_root() / scale / f"overrides-{digest}"


def check_same_experiment(folder: Path, summary: dict, experiment: str, scale: str, overrides: tuple[str, ...] = ()) -> None:
    """Refuse a run under the row's name that ran another config: it must never become the row, nor
    replace the row's kept copy. Settings that cannot change the result may differ (first_difference)."""
    expected = {**composed_config(experiment, scale, run_overrides(overrides)), "seed": summary["seed"]}  # many seeds
    difference = first_difference(read_config(folder / "config.yaml"), expected)
    if difference is not None:
        extra = f" with {' '.join(overrides)}" if overrides else ""
        raise ValueError(f"{folder} is named {experiment} but is not that experiment at {scale} scale{extra} "
                         f"({difference}); nothing written: move that run folder elsewhere (a sweep member or a run "
                         "with other overrides is not this row; the overrides it ran with build its own table)")


def find_runs(scale: str, experiment: str, out_dir: Path | None = None,
              overrides: tuple[str, ...] = ()) -> list[tuple[dict, Path]]:
    """Finished runs of one row at one scale, wherever they were written (plain runs, multiruns, or the
    copies a table keeps in results/); one per seed, the newest. Each must be the row's experiment."""
    found = []
    for root in (runs_root(), kept_runs_dir(scale, out_dir)):
        for summary_path in sorted(root.rglob("summary.json")) if root.is_dir() else []:
            summary = read_summary(summary_path)
            if summary.get("name") == experiment and summary.get("scale") == scale and summary.get("status") == "finished":
                check_same_experiment(summary_path.parent, summary, experiment, scale, overrides)
                found.append((summary, summary_path.parent))
    unique = {}
    for summary, folder in sorted(found, key=lambda run: (run[1] / "summary.json").stat().st_mtime):
        seen = unique.get(summary["seed"])
        if seen and seen[0] != summary:  # a kept copy of the same run is no news
            print(f"note: {experiment} seed {summary['seed']} ({scale}) also in {seen[1]}; "
                  f"using the newest, {folder}", file=sys.stderr)
        if not seen or seen[0] != summary or kept_runs_dir(scale, out_dir) not in folder.parents:
            unique[summary["seed"]] = (summary, folder)  # prefer the live run folder over its kept copy
    return [unique[k] for k in sorted(unique)]


def keep_runs(runs: list[tuple[dict, Path]], experiment: str, kept: Path) -> None:
    """Copy each run's small files (no checkpoints) into results/<scale>/runs/."""
    for summary, folder in runs:
        target = kept / experiment / f"seed{summary['seed']}"
        if folder == target:
            continue
        for name in KEPT_FILES:
            if (folder / name).exists():
                target.mkdir(parents=True, exist_ok=True)
                atomic_write_text(target / name, (folder / name).read_text())


def mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def fmt(mean: float, std: float, n: int, digits: int) -> str:
    return f"{mean:.{digits}f}" + (f" ± {std:.{digits}f}" if n > 1 else "")


def capped(summary: dict, run_dir: Path) -> bool:
    """The run was ended by trainer.max_epochs, not by early stopping: it may still have been improving."""
    config = run_dir / "config.yaml"
    if not config.exists():  # scripts/compare.py takes run folders without one
        return False
    max_epochs = (read_config(config).get("trainer") or {}).get("max_epochs")
    return max_epochs is not None and summary["epochs_run"] >= max_epochs


def wall_minutes(summary: dict) -> str:
    """A run's wall time in minutes; "+" marks a resumed run, whose summary counts only the last process."""
    if summary.get("wall_seconds") is None:
        return "–"
    return f"{summary['wall_seconds'] / 60:.0f}" + ("+" if summary.get("resumed_from_epoch") is not None else "")


def summarize_row(row: dict, runs: list[tuple[dict, Path]], metric: str,
                  table_seeds: list[int] = ()) -> tuple[dict, list]:
    """One table row (our mean ± std over the runs' seeds, the paper's figures, which of the table's
    seeds it lacks) and its curves, one (label, epochs, valid values, train values) per seed."""
    paper = row.get("paper") or {}
    have = {summary["seed"] for summary, _ in runs}
    missing = [seed for seed in table_seeds if seed not in have] if row.get("experiment") else []
    entry = {"row": row["label"], "experiment": row.get("experiment"), "cited": bool(row.get("cited")),
             "paper_valid": paper.get("valid"), "paper_test": paper.get("test"), "n_seeds": len(runs),
             "table_seeds": " ".join(map(str, table_seeds)), "missing_seeds": " ".join(map(str, missing))}
    curves = []
    if runs:
        valid = mean_std([s["best_valid"] for s, _ in runs])
        test = mean_std([s["test"] for s, _ in runs])
        entry.update({"valid_mean": valid[0], "valid_std": valid[1], "test_mean": test[0], "test_std": test[1],
                      "epochs": "/".join(str(s["epochs_run"]) + ("*" if capped(s, d) else "") for s, d in runs),
                      "wall_minutes": "/".join(wall_minutes(s) for s, _ in runs),
                      "wall_seconds_sum": sum(s.get("wall_seconds") or 0.0 for s, _ in runs),
                      "wall_missing": sum(s.get("wall_seconds") is None for s, _ in runs),
                      "seeds": " ".join(str(s["seed"]) for s, _ in runs),
                      "device": runs[0][0]["device"], "commit": " ".join(sorted({s["commit"] for s, _ in runs}))})
        for _, run_dir in runs:
            metrics = read_metrics(run_dir / "metrics.jsonl")
            curves.append((row["label"], [m["epoch"] for m in metrics], [m[f"valid_{metric}"] for m in metrics],
                           [m.get(f"train_{metric}") for m in metrics]))
    return entry, curves


def check_claims(spec: dict, entries: dict[str, dict]) -> list[dict]:
    """The paper's orderings (the spec's `claims`: row `better` has a lower metric than row `than` on
    `claims_split`), each checked against our means: holds or not, and whether our difference is
    within seed noise (|delta| < 2 standard errors; needs 2+ seeds in both rows)."""
    split = spec.get("claims_split", "test")
    checked = []
    for claim in spec.get("claims", []):
        better, than = entries[claim["better"]], entries[claim["than"]]
        result = {"better": better["row"], "than": than["row"], "split": split,
                  "paper_better": better[f"paper_{split}"], "paper_than": than[f"paper_{split}"],
                  "paper_note": claim.get("note"), "delta": None, "stderr": None, "verdict": "not run"}
        if better["n_seeds"] and than["n_seeds"]:
            result["ours_better"], result["ours_than"] = better[f"{split}_mean"], than[f"{split}_mean"]
            result["delta"] = result["ours_better"] - result["ours_than"]
            result["stderr"], result["verdict"] = judge(result["delta"], (better[f"{split}_std"], better["n_seeds"]),
                                                        (than[f"{split}_std"], than["n_seeds"]))
        checked.append(result)
    return checked


def judge(delta: float, first: tuple[float, int], second: tuple[float, int]) -> tuple[float | None, str]:
    """A claim "first < second" given delta = mean(first) - mean(second) and each side's (std, seeds):
    the standard error of delta (None with a single seed on either side) and the verdict."""
    verdict = "holds" if delta < 0 else "does not hold"
    if first[1] < 2 or second[1] < 2:
        return None, verdict + " (1 seed: noise unknown)"
    stderr = math.sqrt(first[0] ** 2 / first[1] + second[0] ** 2 / second[1])
    return stderr, verdict + (" (within seed noise)" if abs(delta) < 2 * stderr else "")


def render_claims(claims: list[dict], digits: int) -> str:
    if not claims:
        return ""
    split = claims[0]["split"]
    held = sum(c["verdict"].startswith("holds") for c in claims)
    unchecked = sum(c["verdict"] == "not run" for c in claims)
    count = f"{held} of {len(claims)} hold" + (f" ({unchecked} not checked: a row not run yet)" if unchecked else "")
    lines = ["", f"## The paper's orderings, checked on our runs ({split}, lower is better)", "",
             f"{count}. Δ = ours(first) − ours(second), ± its standard error over seeds; "
             "within seed noise: |Δ| < 2 standard errors.", "",
             "| paper's ordering | paper | ours | Δ ours | verdict |", "|---|---|---|---|---|"]
    for c in claims:
        if c["paper_better"] is not None and c["paper_than"] is not None:
            paper = f"{c['paper_better']} < {c['paper_than']}"
        else:
            paper = c["paper_note"] or "–"
        ours = delta = "–"
        if c["delta"] is not None:
            ours = f"{c['ours_better']:.{digits}f} vs {c['ours_than']:.{digits}f}"
            delta = f"{c['delta']:+.{digits}f}" + (f" ± {c['stderr']:.{digits}f}" if c["stderr"] is not None else "")
        lines.append(f"| {c['better']} < {c['than']} | {paper} | {ours} | {delta} | {c['verdict']} |")
    return "\n".join(lines) + "\n"


def rows_it_would_lose(existing_csv: Path, rows: list[dict]) -> list[str]:
    """Experiments that have our numbers in an existing table but no run folder here: rebuilding the
    table in a checkout without those runs (a fresh clone, another ZONEOUT_RUNS_DIR) would wipe them."""
    if not existing_csv.exists():
        return []
    had = {r["experiment"] for r in csv.DictReader(io.StringIO(existing_csv.read_text())) if r.get("n_seeds", "0") not in ("", "0")}
    return sorted(had - {r["experiment"] for r in rows if r["n_seeds"]})


def build_table(spec: dict, scale: str, print_table: bool = False, out_dir: Path | None = None,
                force: bool = False, seeds: list[int] = (), overrides: list[str] | tuple[str, ...] = ()) -> list[dict]:
    """Build and write the table. `seeds`: seeds every row should have, besides every seed found among
    its rows; a row without some of them says which (its mean is over fewer seeds). `overrides`: the extra
    overrides the runs were made with; where they change the rows, the table is theirs (table_dir)."""
    digits = 1 if spec["metric"] == "perplexity" else 3
    overrides = run_overrides(overrides)
    changed = changed_rows(spec, scale, overrides) if overrides else None
    out_dir = out_dir or table_dir(spec, scale, overrides)
    # A row without an experiment (e.g. a cited HyperLSTM figure) has nothing of ours to run.
    found = [(row, find_runs(scale, row["experiment"], out_dir, overrides) if row.get("experiment") else [])
             for row in spec["rows"]]
    table_seeds = sorted(set(seeds) | {summary["seed"] for _, runs in found for summary, _ in runs})
    rows, curves, by_name = [], [], {}
    for row, runs in found:
        entry, row_curves = summarize_row(row, runs, spec["metric"], table_seeds)
        rows.append(entry)
        by_name[row["name"]] = entry
        curves.extend(row_curves)
    lost = rows_it_would_lose(out_dir / f"{spec['table']}.csv", rows)
    if lost and not force:
        raise ValueError(f"{out_dir / spec['table']}.md has results for {len(lost)} row(s) with no finished run under "
                         f"{runs_root()} (e.g. {lost[0]}); left as it is (point ZONEOUT_RUNS_DIR at the runs, or --force)")
    out_dir.mkdir(parents=True, exist_ok=True)
    for row, runs in found:
        keep_runs(runs, row["experiment"], kept_runs_dir(scale, out_dir))
    markdown = render_markdown(spec, scale, rows, digits, overrides if changed else (), changed) + \
        render_claims(check_claims(spec, by_name), digits)
    atomic_write_text(out_dir / f"{spec['table']}.md", markdown)
    atomic_write_text(out_dir / f"{spec['table']}.csv", render_csv(rows))
    if curves:
        plot_curves(spec, scale, curves, out_dir / f"{spec['table']}.png")
    if print_table:
        print(markdown)
    for entry in rows:
        if entry["n_seeds"] and entry["missing_seeds"]:
            print(f"note: {entry['experiment']} ({scale}) has {seeds_text(entry)}: its mean is over "
                  f"{entry['n_seeds']} seed(s)", file=sys.stderr)
    return rows


SCALE_NOTES = {
    "quick": "**QUICK SCALE — shrunk runs that check the pipeline on a CPU; every model underfits, so no "
             "regularizer can help: not evidence for or against the paper.**",
    "small": "**SMALL SCALE — the evidence scale for a CPU: smaller models on less data, where the unregularized "
             "LSTM overfits; the paper's orderings can hold or fail here, its values cannot be matched.**",
}


def seeds_text(entry: dict) -> str:
    """A row's seeds, and the table's seeds it lacks: "0 2 of 0 1 2 (missing 1)"."""
    if not entry["missing_seeds"]:
        return entry["seeds"]
    return f"{entry['seeds']} of {entry['table_seeds']} (missing {entry['missing_seeds']})"


def render_markdown(spec: dict, scale: str, rows: list[dict], digits: int, overrides: tuple[str, ...] = (),
                    changed: str | None = None) -> str:
    scale_note = "Paper scale." if scale == "paper" else SCALE_NOTES.get(scale, f"**{scale.upper()} SCALE — not the paper's scale.**") + \
        f" Shrink: {spec.get(f'{scale}_scale', 'see configs/dataset/*.yaml')}"
    override_note = [f"**Runs made with extra overrides `{' '.join(overrides)}`, which change the rows "
                     f"({changed}): not the rows as configured.**", ""] if overrides else []
    lines = [f"# {spec['title']}", "", scale_note, "", *override_note,
             f"Ours: best-validation checkpoint, mean ± std over seeds. Paper: {spec['source']}.", "",
             "| row | ours valid | ours test | paper valid | paper test | Δ test (ours − paper) | epochs | wall (min) | seeds | device | commit |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    show = lambda v: "–" if v is None else f"{v}"  # noqa: E731
    for r in rows:
        label = f"{r['row']} (cited)" if r["cited"] else r["row"]  # paper figure from another paper
        if not r["experiment"]:
            lines.append(f"| {label} | – | – | {show(r['paper_valid'])} | {show(r['paper_test'])} | – | – | – | – | – | – |")
        elif not r["n_seeds"]:
            lines.append(f"| {label} | not run | not run | {show(r['paper_valid'])} | {show(r['paper_test'])} | – | – | – | – | – | – |")
        else:
            delta = "–" if r["paper_test"] is None else f"{r['test_mean'] - r['paper_test']:+.{digits}f}"
            lines.append(f"| {label} | {fmt(r['valid_mean'], r['valid_std'], r['n_seeds'], digits)} | "
                         f"{fmt(r['test_mean'], r['test_std'], r['n_seeds'], digits)} | {show(r['paper_valid'])} | "
                         f"{show(r['paper_test'])} | {delta} | {r['epochs']} | {r['wall_minutes']} | {seeds_text(r)} | "
                         f"{r['device']} | {r['commit']} |")
    if any("*" in str(r.get("epochs", "")) for r in rows):
        lines += ["", "\\* stopped by the epoch cap (`trainer.max_epochs`), not by early stopping: that run may still "
                  "have been improving, so its row understates what it would reach."]
    if any(r.get("n_seeds") and r.get("missing_seeds") for r in rows):
        lines += ["", "A row marked (missing …) lacks some of the table's seeds: its mean ± std, and the orderings "
                  "checked with it, are over the seeds it has."]
    ran = [r for r in rows if r.get("n_seeds")]
    if ran:
        total = sum(r["wall_seconds_sum"] for r in ran) / 60
        missing = sum(r["wall_missing"] for r in ran)
        runs = sum(r["n_seeds"] for r in ran) - missing
        lines += ["", f"Wall time: {runs} runs, {total // 60:.0f} h {total % 60:02.0f} min of training in all (the sum of "
                  "the runs' wall times, one process each; a run that shared the machine with another, or was paused, "
                  "counts all of it" + ("; + marks a resumed run, which counts only its last process" if any(
                      "+" in r["wall_minutes"] for r in ran) else "")
                  + (f"; {missing} run(s) without a recorded wall time (–) are not in it" if missing else "") + ")."]
    return "\n".join(lines) + "\n"


def render_csv(rows: list[dict]) -> str:
    fields = ["row", "experiment", "cited", "n_seeds", "valid_mean", "valid_std", "test_mean", "test_std",
              "paper_valid", "paper_test", "epochs", "wall_minutes", "seeds", "missing_seeds", "device", "commit"]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=fields, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


def plot_curves(spec: dict, scale: str, curves: list, path: Path) -> None:
    """Training (dashed, mean over seeds) and validation (solid; each seed faint, the mean bold) per
    epoch, one colour per row: where a row overfits, its dashed line keeps falling as its solid one
    turns up."""
    import textwrap

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    by_row: dict[str, list] = {}
    for label, epochs, valid, train in curves:
        by_row.setdefault(label, []).append((dict(zip(epochs, valid)),
                                             {e: v for e, v in zip(epochs, train) if v is not None}))
    colours = plt.get_cmap("tab10" if len(by_row) <= 10 else "tab20").colors
    figure, axis = plt.subplots(figsize=(10, 4.5))
    for index, (label, seeds) in enumerate(by_row.items()):
        colour = colours[index % len(colours)]
        if len(seeds) > 1:
            for valid, _ in seeds:
                axis.plot(list(valid), list(valid.values()), color=colour, alpha=0.3, linewidth=0.8)
        name = textwrap.fill(label, 45) + (f" ({len(seeds)} seeds)" if len(seeds) > 1 else "")
        for which, style in ((0, "-"), (1, "--")):
            epochs = sorted({epoch for seed in seeds for epoch in seed[which]})  # a seed that stopped early drops out
            mean = [statistics.fmean(seed[which][e] for seed in seeds if e in seed[which]) for e in epochs]
            if which == 0:
                axis.plot(epochs, mean, style, color=colour, marker="o", markersize=2.5, linewidth=1.8, label=name)
            elif epochs:
                axis.plot(epochs, mean, style, color=colour, linewidth=1.2)
    axis.plot([], [], "k-", label="validation (solid)")
    axis.plot([], [], "k--", label="training (dashed)")
    axis.set_xlabel("epoch")
    axis.xaxis.get_major_locator().set_params(integer=True)
    axis.set_ylabel(spec["metric"])
    axis.set_title(textwrap.fill(f"{spec['title']} — {scale} scale (bold: mean over seeds; dashed: training)", 95),
                   fontsize=9)
    axis.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)
    save_figure(figure, path)


def save_figure(figure, path: Path) -> None:
    """Write a PNG atomically (a killed run never leaves half a picture) and free the figure."""
    import matplotlib.pyplot as plt

    figure.tight_layout()
    tmp = path.with_suffix(".tmp.png")
    figure.savefig(tmp, dpi=110, bbox_inches="tight")  # nothing clipped: a long title, the outside legend
    plt.close(figure)
    os.replace(tmp, path)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("table")
    parser.add_argument("--scale", default="paper", choices=scales())
    parser.add_argument("--force", action="store_true", help="rewrite the table even if rows with results lose them")
    parser.add_argument("--seeds", nargs="+", type=int, default=[], metavar="SEED",
                        help="seeds every row should have (default: every seed found among the table's rows); "
                             "a row without one of them says so")
    parser.add_argument("overrides", nargs="*", help="the extra Hydra overrides the runs were made with")
    args = parser.parse_intermixed_args()  # overrides may come before or after the options
    try:
        spec = load_table_spec(args.table)
        if spec.get("script") or not spec.get("rows"):  # gradient flow and the toys are not run-folder tables
            raise ValueError(f"{args.table} is not built from run folders: it is made by "
                             f"{spec.get('script') or f'the command in experiments/{args.table}.yaml'}")
        build_table(spec, args.scale, print_table=True, force=args.force, seeds=args.seeds, overrides=args.overrides)
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
