"""Put verified copies of the datasets into the data folder (from a mirror folder or the canonical URLs).

    python scripts/fetch_data.py [--dataset ptb_char ptb_word mnist text8 | all] [--data-dir DIR] [--mirror DIR]

Prints one line per file (copied / downloaded / verified / already verified). On a missing or corrupted
file it prints one line to stderr and exits with status 1.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))  # runnable from a checkout without `pip install -e .`

from zoneout.data.download import DATASETS, MIRROR_ENV, DataError, prepare  # noqa: E402

DATA_DIR_ENV = "ZONEOUT_DATA_DIR"
DEFAULT_DATASETS = ("ptb_char", "ptb_word", "mnist")


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", nargs="+", choices=[*DATASETS, "all"], default=list(DEFAULT_DATASETS),
                        help=f"datasets to fetch (default: {' '.join(DEFAULT_DATASETS)}; text8 is ~100 MB)")
    parser.add_argument("--data-dir", type=Path, default=Path(os.environ.get(DATA_DIR_ENV) or REPO_ROOT / "data"),
                        help=f"where the files go (default: ${DATA_DIR_ENV} or <repo>/data)")
    parser.add_argument("--mirror", type=Path, default=None,
                        help=f"folder laid out like the data folder to copy from (default: ${MIRROR_ENV})")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    names = list(DATASETS) if "all" in args.dataset else list(dict.fromkeys(args.dataset))
    try:
        for name in names:
            prepare(name, args.data_dir, args.mirror, log=lambda line: print(line, flush=True))
    except (DataError, OSError) as error:  # OSError: e.g. an unwritable data dir
        print(f"error: {' '.join(str(error).split())}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
