#!/usr/bin/env bash
# One char-PTB run at the paper's exact settings, continuing where it last stopped (results/paper/):
#
#     scripts/paper_scale_run.sh ROW CLIP [extra Hydra overrides]     ROW: zoneout | unregularized
#                                                                     CLIP: grad | update
#
# VARIANT=<name> with extra model overrides (e.g. VARIANT=learned-start model.initial_state=learned) runs
# in a folder of its own, <ROW>_clip-<CLIP>_<name>, which the trajectory table leaves out.
# Seed $SEED (0), one thread, the authors' square-block init, trainer.resume=true: run it again after a
# stop and it goes on from the exact batch of its last.pt (SIGTERM/SIGINT save one first). Run folder
# $ZONEOUT_RUNS_DIR/paper/ptb_char/<ROW>_clip-<CLIP>/seed<SEED> (runs/ by default), its log beside it.
# Sets up this checkout first (make data: venv, install, data; a no-op once done); its own kernel-build folder so that two checkouts with
# different venvs never rebuild the fused extension over each other. Run it from a clean commit in a
# clone of its own, and `make paper-trajectory` in the working checkout after each epoch; `make paper-status`
# says where each run stands and prints the command line logged here that continues it.
set -euo pipefail
cd "$(dirname "$0")/.."
row=${1:-}; clip=${2:-}
case $row in zoneout|unregularized) ;; *) echo "error: ROW must be zoneout or unregularized, got '$row'" >&2; exit 2;; esac
case $clip in grad|update) ;; *) echo "error: CLIP must be grad or update, got '$clip'" >&2; exit 2;; esac
shift 2
variant=${VARIANT:-}
case $variant in ''|*[!a-z0-9-]*) [ -z "$variant" ] || { echo "error: VARIANT must be lower-case letters, digits and '-', got '$variant'" >&2; exit 2; };; esac
seed=${SEED:-0}
runs=${ZONEOUT_RUNS_DIR:-runs}
name=ptb_char/${row}_clip-${clip}${variant:+_$variant}
log=$runs/paper/$name/seed$seed.log
mkdir -p "$runs/paper/$name"
# The exact command that continues this run, for scripts/paper_status.py (and whoever continues it later).
commit=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
[ -z "$(git status --porcelain --untracked-files=no 2>/dev/null)" ] || commit="$commit+uncommitted"
extra=""; for arg in "$@"; do extra+=" $(printf %q "$arg")"; done
printf 'launch %s at %s: ( cd %q && ZONEOUT_RUNS_DIR=%q%s SEED=%q scripts/paper_scale_run.sh %q %q%s )\n' \
    "$(date -u +%Y-%m-%dT%H:%M:%SZ)" "$commit" "$PWD" "$(cd "$runs" && pwd)" "${variant:+ VARIANT=$variant}" "$seed" \
    "$row" "$clip" "$extra" >>"$log"
export TORCH_EXTENSIONS_DIR=${TORCH_EXTENSIONS_DIR:-$PWD/.venv/torch_extensions}
export ZONEOUT_DATA_MIRROR=${ZONEOUT_DATA_MIRROR:-$(cd .. && pwd)/shared/data}
export OMP_NUM_THREADS=1
make -s data >>"$log" 2>&1 || { echo "error: make data failed (venv, install or data): see $log" >&2; exit 2; }
exec .venv/bin/python -m zoneout.train "experiment=ptb_char/$row" scale=paper "seed=$seed" "name=$name" \
    "trainer.clip=$clip" model.init=orthogonal_square_blocks trainer.threads=1 trainer.resume=true \
    logger=csv trainer.progress=false "$@" >>"$log" 2>&1
