"""Char-PTB at paper scale, epoch by epoch beside the authors' own training log.

    python scripts/paper_trajectory.py [--keep]      (make paper-trajectory)

Reads every run folder ptb_char/<row>_clip-<rule>/seed<N> of experiments/reference/paper_trajectory_ptb_char.yaml
under $ZONEOUT_RUNS_DIR/paper (runs/paper by default) and under results/paper/runs (the committed copies;
a live folder wins over its copy), and writes results/paper/ptb_char_trajectory.{csv,md,png}: our
validation BPC per epoch finished so far, beside the authors' logged dev_bpr for the same epoch.
--keep first copies each live run's small files (metrics.jsonl, config.yaml, summary.json; never
checkpoints) to results/paper/runs/, so a checkout without the run folders keeps what was reached.
Variant runs (`VARIANT=<name> scripts/paper_scale_run.sh ...`: folders <row>_clip-<rule>_<name>, one
setting changed) get a section of their own in the .md, beside their row's same-seed run; the csv keeps
the rows only, so a table never mixes two settings. A row run with two or more seeds gets a section on how far
its seeds lie apart per epoch, beside each seed's gap to the authors' single run.
"""
from __future__ import annotations

import argparse
import csv
import io
import json
import os
import re
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from zoneout.atomic import atomic_write_bytes, atomic_write_text  # noqa: E402
from zoneout.run_identity import MODEL_ADDED, TRAINING_DEFINING  # noqa: E402

SPEC = ROOT / "experiments" / "reference" / "paper_trajectory_ptb_char.yaml"
KEPT_FILES = ("metrics.jsonl", "config.yaml", "summary.json")
CSV_HEADER = ["row", "clip", "seed", "epoch", "valid_bpc", "authors_valid_bpc"]
VARIANT_NAME = re.compile(r"[a-z0-9-]+")  # as scripts/paper_scale_run.sh accepts it
PAST_BEST = 3  # epochs without a new best before a row counts as past its best (its curve has turned up)


class TrajectoryError(ValueError):
    pass


def results_dir() -> Path:
    return Path(os.environ.get("ZONEOUT_RESULTS_DIR", ROOT / "results")) / "paper"


def live_runs_dir() -> Path:
    return Path(os.environ.get("ZONEOUT_RUNS_DIR", ROOT / "runs")) / "paper"


def read_json_lines(path: Path) -> list[dict]:
    try:
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    except (OSError, json.JSONDecodeError) as error:
        raise TrajectoryError(f"{path}: unreadable ({error}); restore it from the run's last.pt by resuming, or remove that run") from None


def authors_log(spec: dict) -> dict[int, dict]:
    with open(ROOT / spec["authors_log"], newline="") as handle:
        return {int(row["epoch"]): row for row in csv.DictReader(handle)}


def find_runs(spec: dict) -> dict[tuple[str, str, int], Path]:
    """(row, rule, seed) -> its folder, the live run folder preferred over its committed copy."""
    found = {}
    for root in (results_dir() / "runs", live_runs_dir()):  # later roots win
        for row in spec["rows"]:
            for rule in spec["clips"]:
                for folder in sorted((root / "ptb_char" / f"{row}_clip-{rule}").glob("seed*")):
                    if (folder / "metrics.jsonl").exists() and read_json_lines(folder / "metrics.jsonl"):
                        found[(row, rule, int(folder.name.removeprefix("seed")))] = folder
    return found


def find_variants(spec: dict) -> dict[tuple[str, str, str, int], Path]:
    """(row, rule, variant, seed) -> its folder, for folders <row>_clip-<rule>_<variant>."""
    found = {}
    for root in (results_dir() / "runs", live_runs_dir()):
        for row in spec["rows"]:
            for rule in spec["clips"]:
                for run in sorted((root / "ptb_char").glob(f"{row}_clip-{rule}_*")):
                    variant = run.name.removeprefix(f"{row}_clip-{rule}_")
                    if not VARIANT_NAME.fullmatch(variant):
                        continue
                    for folder in sorted(run.glob("seed*")):
                        if (folder / "metrics.jsonl").exists() and read_json_lines(folder / "metrics.jsonl"):
                            found[(row, rule, variant, int(folder.name.removeprefix("seed")))] = folder
    return found


def override_value(value) -> str:
    """A setting as one writes it on the command line (true, not Python's True)."""
    return str(value).lower() if isinstance(value, bool) else str(value)


def settings_changed(variant_folder: Path, row_folder: Path | None) -> str:
    """'model.initial_state: zeros -> learned, ...' between the two runs' config.yaml (the run-defining groups)."""
    if row_folder is None or not (row_folder / "config.yaml").exists() or not (variant_folder / "config.yaml").exists():
        return "settings not compared (a config.yaml is missing)"
    configs = []
    for folder in (row_folder, variant_folder):
        try:
            configs.append(yaml.safe_load((folder / "config.yaml").read_text()) or {})
        except (OSError, yaml.YAMLError) as error:
            raise TrajectoryError(f"{folder / 'config.yaml'}: unreadable ({error})") from None
    changes = []
    for group in ("model", "regularizer", "optim", "trainer"):
        old, new = configs[0].get(group) or {}, configs[1].get(group) or {}
        if group == "model":  # a setting added after a run began: that run ran with its default
            old, new = {**MODEL_ADDED, **old}, {**MODEL_ADDED, **new}
        if group == "trainer":  # only what run_identity counts as changing what is trained
            old, new = ({k: d.get(k, v) for k, v in TRAINING_DEFINING.items()} for d in (old, new))
        for key in sorted(set(old) | set(new)):
            if old.get(key) != new.get(key):
                changes.append(f"{group}.{key}: {override_value(old.get(key, 'unset'))} -> {override_value(new.get(key, 'unset'))}")
    return ", ".join(changes) or "no run-defining setting differs"


def keep(runs: dict, kept_root: Path) -> None:
    for folder in runs.values():
        target = kept_root / "ptb_char" / folder.parent.name / folder.name
        if folder.resolve() == target.resolve():
            continue
        for name in KEPT_FILES:
            if (folder / name).exists():
                data = (folder / name).read_bytes()
                atomic_write_bytes(target / name, lambda handle, data=data: handle.write(data))


def trajectory(spec: dict, runs: dict) -> tuple[list[dict], dict]:
    authors = authors_log(spec)
    lines, records = [], {}
    for (row, rule, seed), folder in sorted(runs.items()):
        metrics = read_json_lines(folder / "metrics.jsonl")
        records[(row, rule, seed)] = metrics
        for record in metrics:
            theirs = authors.get(record["epoch"]) if row == spec["authors_row"] else None
            lines.append({"row": row, "clip": rule, "seed": seed, "epoch": record["epoch"],
                          "valid_bpc": f"{record['valid_bpc']:.4f}",
                          "authors_valid_bpc": f"{float(theirs['dev_bpr']):.4f}" if theirs else ""})
    return lines, records


def render_markdown(spec: dict, records: dict) -> str:
    authors = authors_log(spec)
    out = [f"# {spec['title']}", "",
           "Ours: `valid_bpc` (mean NLL / ln 2 over 100-character validation chunks from the zero state, "
           "expectation masks) and training BPC with zoneout noise on, per finished epoch. Authors: "
           f"`dev_bpr` and `train_cost_train` / ln 2 of their committed run (`{spec['authors_log']}`, source "
           f"in `{SPEC.relative_to(ROOT)}`). Paper (Table 1): "
           + ", ".join(f"{row} {v['valid']} valid / {v['test']} test" for row, v in spec["paper"].items()) + ".", ""]
    for (row, rule, seed), metrics in records.items():
        best = min(metrics, key=lambda m: m["valid_bpc"])
        out += [f"## {row}, trainer.clip={rule}, seed {seed}: best valid {best['valid_bpc']:.4f} at epoch "
                f"{best['epoch']} of {len(metrics)}", "",
                "| epoch | valid BPC | authors' valid | ours − theirs | train BPC | authors' train | update norm "
                "| clipped steps | train min | commit | device |", "|" + "---|" * 11]
        for m in metrics:
            theirs = authors.get(m["epoch"]) if row == spec["authors_row"] else None
            their_valid = float(theirs["dev_bpr"]) if theirs else None
            their_train = float(theirs["train_cost_train"]) / 0.6931471805599453 if theirs else None
            cells = [m["epoch"], f"{m['valid_bpc']:.4f}", f"{their_valid:.4f}" if theirs else "",
                     f"{m['valid_bpc'] - their_valid:+.4f}" if theirs else "", f"{m['train_bpc']:.4f}",
                     f"{their_train:.4f}" if theirs else "", f"{m['update_norm']:.3f}" if "update_norm" in m else "",
                     f"{100 * m['clip_fraction']:.1f} %" if "clip_fraction" in m else "",
                     f"{m['train_seconds'] / 60:.1f}", m.get("commit", "not recorded"), m.get("device", "not recorded")]
            out.append("| " + " | ".join(map(str, cells)) + " |")
        out.append("")
    if not records:
        out.append("No paper-scale run has finished an epoch yet.")
    return "\n".join(out) + "\n"


def render_verdict(spec: dict, records: dict) -> str:
    """The paper's claim (the regularized row beats the unregularized one on best validation BPC), per clip and seed,
    stated only once the baseline has turned up (PAST_BEST epochs without a new best) and the regularized row's best
    so far is already below the baseline's (its own best can only get lower), or once both rows have turned up."""
    regularized, baseline = spec["rows"]
    out = [f"## The paper's claim at this scale: {regularized} vs {baseline}", "",
           f"Paper (Table 1) best valid: {regularized} {spec['paper'][regularized]['valid']}, {baseline} "
           f"{spec['paper'][baseline]['valid']}. Decided once {baseline} has gone {PAST_BEST} epochs without a new best "
           f"and {regularized}'s best so far is below {baseline}'s best (or, once both have, either way).", "",
           f"| trainer.clip | seed | {regularized}: best valid (epoch / run) | {baseline}: best valid (epoch / run) "
           f"| {regularized} − {baseline} at equal epochs | verdict |", "|" + "---|" * 6]
    pairs = sorted({(rule, seed) for (_, rule, seed) in records})
    shown = 0
    for rule, seed in pairs:
        runs = {regularized: records.get((regularized, rule, seed)), baseline: records.get((baseline, rule, seed))}
        if not all(runs.values()):
            continue
        shown += 1
        best = {name: min(m, key=lambda r: r["valid_bpc"]) for name, m in runs.items()}
        last = {name: m[-1]["epoch"] for name, m in runs.items()}
        past = {name: last[name] - best[name]["epoch"] >= PAST_BEST for name in runs}
        by_epoch = {m["epoch"]: m["valid_bpc"] for m in runs[baseline]}
        equal = [f"{m['epoch']}: {m['valid_bpc'] - by_epoch[m['epoch']]:+.4f}" for m in runs[regularized] if m["epoch"] in by_epoch]
        a, b = best[regularized]["valid_bpc"], best[baseline]["valid_bpc"]
        if past[baseline] and (a < b or past[regularized]):
            verdict = f"decided: {regularized if a < b else baseline} is better by {abs(a - b):.4f}"
        elif not past[baseline]:
            verdict = f"open: {baseline} is {last[baseline] - best[baseline]['epoch']} of {PAST_BEST} epochs past its best"
        else:
            verdict = f"open: {regularized} is still above {baseline}'s best and still improving"
        cells = [rule, seed, f"{a:.4f} ({best[regularized]['epoch']} / {last[regularized]})",
                 f"{b:.4f} ({best[baseline]['epoch']} / {last[baseline]})", ", ".join(equal), verdict]
        out.append("| " + " | ".join(map(str, cells)) + " |")
    if not shown:
        out.append("| | | | | | open: no seed has both rows yet |")
    return "\n".join(out) + "\n"


def render_seed_spread(spec: dict, records: dict) -> str:
    """Per row and clip run with two or more seeds, at each epoch two or more of them have finished: each seed's
    validation BPC, how far the seeds lie apart (max - min), and each seed's gap to the authors' log: whether a
    difference from their single run (seed 123) is larger than the spread of ours."""
    groups: dict[tuple[str, str], dict[int, dict[int, float]]] = {}
    for (row, rule, seed), metrics in records.items():
        groups.setdefault((row, rule), {})[seed] = {m["epoch"]: m["valid_bpc"] for m in metrics}
    groups = {key: seeds for key, seeds in groups.items() if len(seeds) > 1}
    if not groups:
        return ""
    authors = authors_log(spec)
    out = ["## Seeds of one row: how far they lie apart", ""]
    for (row, rule), seeds in sorted(groups.items()):
        order = sorted(seeds)
        out += [f"### {row}, trainer.clip={rule}, seeds {', '.join(map(str, order))}", "",
                "| epoch | " + " | ".join(f"seed {s}" for s in order) + " | spread (max − min) | authors' valid | "
                + " | ".join(f"seed {s} − theirs" for s in order) + " |", "|" + "---|" * (3 + 2 * len(order))]
        shared = sorted(e for e in set().union(*seeds.values()) if sum(e in curve for curve in seeds.values()) > 1)
        for epoch in shared:
            values = [seeds[s].get(epoch) for s in order]
            have = [v for v in values if v is not None]
            theirs = float(authors[epoch]["dev_bpr"]) if row == spec["authors_row"] and epoch in authors else None
            cells = ([epoch] + [f"{v:.4f}" if v is not None else "" for v in values]
                     + [f"{max(have) - min(have):.4f}", f"{theirs:.4f}" if theirs is not None else ""]
                     + [f"{v - theirs:+.4f}" if v is not None and theirs is not None else "" for v in values])
            out.append("| " + " | ".join(map(str, cells)) + " |")
        out.append("")
    return "\n".join(out) + "\n"


def render_variants(spec: dict, variants: dict, runs: dict, records: dict) -> str:
    """One table per variant run: its validation BPC beside its row's run of the same seed and the authors'."""
    if not variants:
        return ""
    authors = authors_log(spec)
    out = ["## Variants: a row with one setting changed (own run folders; not in the csv)", ""]
    for (row, rule, variant, seed), folder in sorted(variants.items()):
        metrics = read_json_lines(folder / "metrics.jsonl")
        base = {m["epoch"]: m for m in records.get((row, rule, seed), [])}
        out += [f"### {row}, trainer.clip={rule}, variant `{variant}`, seed {seed}", "",
                f"Changed from the row's run: {settings_changed(folder, runs.get((row, rule, seed)))}.", "",
                "| epoch | valid BPC | the row's valid | variant − row | authors' valid | variant − theirs | train BPC "
                "| train min | commit | device |", "|" + "---|" * 10]
        for m in metrics:
            row_valid = base[m["epoch"]]["valid_bpc"] if m["epoch"] in base else None
            theirs = authors.get(m["epoch"]) if row == spec["authors_row"] else None
            their_valid = float(theirs["dev_bpr"]) if theirs else None
            cells = [m["epoch"], f"{m['valid_bpc']:.4f}", f"{row_valid:.4f}" if row_valid is not None else "",
                     f"{m['valid_bpc'] - row_valid:+.4f}" if row_valid is not None else "",
                     f"{their_valid:.4f}" if theirs else "", f"{m['valid_bpc'] - their_valid:+.4f}" if theirs else "",
                     f"{m['train_bpc']:.4f}", f"{m['train_seconds'] / 60:.1f}", m.get("commit", "not recorded"),
                     m.get("device", "not recorded")]
            out.append("| " + " | ".join(map(str, cells)) + " |")
        out.append("")
    return "\n".join(out) + "\n"


def plot(spec: dict, records: dict, variant_records: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    authors = authors_log(spec)
    figure, axis = plt.subplots(figsize=(7, 4.5))
    epochs = sorted(authors)
    axis.plot(epochs, [float(authors[e]["dev_bpr"]) for e in epochs], color="black", label=f"authors' log ({spec['authors_row']})")
    for (row, rule, seed), metrics in records.items():
        axis.plot([m["epoch"] for m in metrics], [m["valid_bpc"] for m in metrics], marker="o", markersize=3,
                  label=f"ours: {row}, clip={rule}, seed {seed}")
    for (row, rule, variant, seed), metrics in variant_records.items():
        axis.plot([m["epoch"] for m in metrics], [m["valid_bpc"] for m in metrics], marker="x", markersize=3,
                  linestyle="--", label=f"ours: {row}, clip={rule}, {variant}, seed {seed}")
    for row, values in spec["paper"].items():
        axis.axhline(values["valid"], linestyle=":", linewidth=1, color="grey")
        axis.annotate(f"paper {row} valid {values['valid']}", (epochs[-1], values["valid"]), fontsize=7, ha="right", va="bottom")
    axis.set(xlabel="epoch", ylabel="validation BPC", title="char-PTB, paper scale (1x1000 LSTM)")
    axis.legend(fontsize=7)
    tmp = path.with_suffix(".tmp.png")
    figure.savefig(tmp, dpi=110, bbox_inches="tight")
    plt.close(figure)
    os.replace(tmp, path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keep", action="store_true", help="copy live runs' metrics/config/summary to results/paper/runs first")
    args = parser.parse_args(argv)
    spec = yaml.safe_load(SPEC.read_text())
    try:
        runs, variants = find_runs(spec), find_variants(spec)
        if args.keep:
            keep({**runs, **variants}, results_dir() / "runs")
        lines, records = trajectory(spec, runs)
        variant_text = render_variants(spec, variants, runs, records)
        variant_records = {key: read_json_lines(folder / "metrics.jsonl") for key, folder in sorted(variants.items())}
    except TrajectoryError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    out = results_dir()
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=CSV_HEADER, lineterminator="\n")
    writer.writeheader()
    writer.writerows(lines)
    atomic_write_text(out / "ptb_char_trajectory.csv", text.getvalue())
    spread_text = render_seed_spread(spec, records)
    markdown = (render_markdown(spec, records) + "\n" + render_verdict(spec, records)
                + ("\n" + spread_text if spread_text else "") + ("\n" + variant_text if variant_text else ""))
    atomic_write_text(out / "ptb_char_trajectory.md", markdown)
    plot(spec, records, variant_records, out / "ptb_char_trajectory.png")
    print(markdown)
    return 0


if __name__ == "__main__":
    sys.exit(main())
