"""When two run configs are the same experiment: the one rule that resuming (zoneout/train.py) and building
a table row from run folders (scripts/make_table.py) both apply. Torch-free, Hydra-free: plain dicts of
resolved configs (a run folder's config.yaml, or a checkpoint's copy)."""
from __future__ import annotations

from zoneout.config_dir import config_dir

# Groups whose every setting defines the experiment. Trainer knobs not listed below (max_epochs, patience,
# threads, progress, logger, checkpoint cadence) may change: extending a finished run is legitimate.
RUN_DEFINING = ("model", "regularizer", "optim", "seed", "scale_name")
DATASET_LOCATION = ("data_dir", "mirror")
# A dataset's per-scale blocks (quick:, small:) hold the sizes a scale applies; what they set is compared
# where it lands (model.hidden_size, dataset.train_fraction), and their epoch cap may change like trainer's.
SCALE_BLOCKS = tuple(path.stem for path in (config_dir() / "scale").glob("*.yaml"))
# Trainer settings that change what is trained or how the best epoch is selected. A run saved before a
# setting existed ran with the value given here.
TRAINING_DEFINING = {"clip": "grad", "clip_grad_norm": None, "loss_sum_over_time": False, "max_steps_per_epoch": None,
                     "eval_max_batches": None}
# Model settings added after runs were saved: such a run ran with the value given here.
MODEL_ADDED = {"initial_state": "zeros", "recurrent_bias": True}


def first_difference(saved: dict, current: dict) -> str | None:
    """'name: saved value, now current value' for the first defining setting that differs, else None."""
    saved_trainer, current_trainer = saved.get("trainer") or {}, current.get("trainer") or {}
    for key, default in TRAINING_DEFINING.items():
        old, new = saved_trainer.get(key, default), current_trainer.get(key, default)
        if old != new:
            return f"trainer.{key}: {old!r}, now {new!r}"
    for key in RUN_DEFINING + ("dataset",):
        old, new = saved.get(key), current.get(key)
        if key == "model" and isinstance(old, dict) and isinstance(new, dict):
            old, new = ({**MODEL_ADDED, **d} for d in (old, new))
        if key == "dataset" and isinstance(old, dict) and isinstance(new, dict):
            old, new = ({k: v for k, v in d.items() if k not in DATASET_LOCATION + SCALE_BLOCKS} for d in (old, new))
        if old == new:
            continue
        if isinstance(old, dict) and isinstance(new, dict):
            name = next(k for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k))
            return f"{key}.{name}: {old.get(name)!r}, now {new.get(name)!r}"
        return f"{key}: {old!r}, now {new!r}"
    return None
