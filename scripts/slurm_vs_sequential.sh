#!/usr/bin/env bash
# Wall time of one table through the sequential launcher and through Slurm (a local single-node
# cluster, scripts/local_slurm.sh), from empty run folders, and whether the two tables agree.
#
#   make slurm-vs-sequential            # the 2-seed quick char-PTB table (rows as in `make replicate-ptb-char`)
#   TABLE=ptb-char SCALE=quick SEEDS="0 1" ROWS="unregularized zoneout" EXTRA="trainer.max_epochs=1" \
#   OUT=/tmp/note.md scripts/slurm_vs_sequential.sh   # a subset / shrink, note elsewhere
#
# Both runs use one thread per row (trainer.threads=1, device=cpu): sequential runs one row at a
# time, Slurm as many as the node has CPUs. Runs and tables go to a temp folder (removed at the end),
# so results/ and runs/ are untouched; the note goes to OUT (default results/<scale>/slurm_vs_sequential.md).
# Needs `make install-slurm` and slurm-wlm + munge (the Makefile target installs the former).
set -euo pipefail
cd "$(dirname "$0")/.."
TABLE=${TABLE:-ptb-char}
SCALE=${SCALE:-quick}
SEEDS=${SEEDS:-0 1}
ROWS=${ROWS:-}
EXTRA=${EXTRA:-}
PY=${PY:-.venv/bin/python}   # the Makefile's venv (make slurm-vs-sequential installs it and the [slurm] extra)
OUT=${OUT:-results/$SCALE/slurm_vs_sequential.md}
OVERRIDES="trainer.threads=1 trainer.progress=false device=cpu $EXTRA"
TABLE_FILE=$(sed -n "s/^TABLE_$TABLE := //p" Makefile)
[[ -n $TABLE_FILE ]] || { echo "error: TABLE=$TABLE: not a replicate target of the Makefile" >&2; exit 2; }

if [[ ${1:-} == --leg ]]; then  # one launcher into $WORK/$2: print the seconds it took
    name=$2 status=0
    start=$(date +%s.%N)
    # the command line `make replicate-$TABLE` runs (without its install/data prerequisites, done already)
    # shellcheck disable=SC2086
    ZONEOUT_RUNS_DIR=$WORK/$name/runs ZONEOUT_RESULTS_DIR=$WORK/$name/results \
        "$PY" scripts/replicate.py "$TABLE_FILE" $OVERRIDES --scale "$SCALE" --seeds $SEEDS --launcher "$name" \
        ${ROWS:+--rows $ROWS} >"$WORK/$name.log" 2>&1 || status=$?
    [[ $status == 0 ]] || { echo "error: the $name table failed (exit $status); its log's end:" >&2; tail -n 30 "$WORK/$name.log" >&2; exit 1; }
    awk -v a="$start" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f\n", b - a }'
    exit 0
fi

WORK=$(mktemp -d /tmp/zoneout-slurm-vs-seq.XXXXXX)
export WORK TABLE SCALE SEEDS ROWS EXTRA PY
trap 'rm -rf "$WORK"' EXIT
echo "[sequential] $TABLE, scale $SCALE, seeds $SEEDS${ROWS:+, rows $ROWS}" >&2
sequential=$("$0" --leg sequential)
echo "[sequential] $sequential s; [slurm] starting a local cluster" >&2
slurm=$(ZONEOUT_SLURM_DIR=$WORK/cluster scripts/local_slurm.sh run -- "$0" --leg slurm)
echo "[slurm] $slurm s" >&2

mkdir -p "$(dirname "$OUT")"
"$PY" - "$WORK" "$OUT" "$sequential" "$slurm" "$TABLE" "$SCALE" "$SEEDS" "$ROWS" "$OVERRIDES" <<'EOF'
import csv, subprocess, sys, os
from pathlib import Path
work, out, seq_s, slurm_s, table, scale, seeds, rows, overrides = sys.argv[1:]
tables = {name: next((Path(work) / name / "results" / scale).glob("*.csv")) for name in ("sequential", "slurm")}
read = lambda path: {r["row"]: r for r in csv.DictReader(path.open())}
seq, slu = read(tables["sequential"]), read(tables["slurm"])
ran = [r for r in seq if seq[r].get("test_mean")]
worst = max((abs(float(seq[r]["test_mean"]) - float(slu[r]["test_mean"])) for r in ran), default=0.0)
cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
note = (f"# {table} at {scale} scale, seeds {seeds}{' (rows ' + rows + ')' if rows else ''}: sequential vs Slurm\n\n"
        f"| launcher | wall time |\n|---|---|\n| sequential | {float(seq_s) / 60:.1f} min |\n"
        f"| slurm (local single node, {os.cpu_count()} CPUs, one job per CPU) | {float(slurm_s) / 60:.1f} min |\n\n"
        f"Overrides: `{overrides.strip()}`. {len(ran)} rows ran; largest difference in mean test between the two "
        f"tables: {worst:.2e}. Machine: {cpu}, {os.cpu_count()} CPUs; commit {commit}; scripts/slurm_vs_sequential.sh.\n")
Path(out).write_text(note)
print(note)
EOF
