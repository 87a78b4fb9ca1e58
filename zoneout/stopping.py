"""When a run is done: the one stopping rule that training (zoneout/train.py) and the table scripts
(scripts/replicate.py) both apply to a run's summary.json. Torch-free."""
from __future__ import annotations


def stopped_for_good(summary: dict, max_epochs: int, patience: int) -> bool:
    """A run has nothing left to do under (max_epochs, patience): it finished, and either ran to the cap
    or early stopping ended it. A run that an earlier, lower cap stopped has epochs left."""
    return summary.get("status") == "finished" and (
        summary["epochs_run"] >= max_epochs or summary["epochs_run"] - summary["best_epoch"] >= patience)
