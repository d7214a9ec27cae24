"""What a training run prints and logs: Lightning's W&B logger without an obsolete argument, a resumed run's CSV
rows kept, and filters for library messages that a user cannot act on."""

import csv
import logging
import warnings
from pathlib import Path
from typing import Any

from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.loggers import WandbLogger as LightningWandbLogger


class WandbLogger(LightningWandbLogger):
    """Lightning's WandbLogger, minus its `anonymous=None`: wandb (0.31 here) warns on every run that the anonymous
    setting "has no effect" whenever it is passed at all (wandb/wandb#10909 names Lightning's logger)."""

    def __init__(self, **kwargs: Any):
        super().__init__(**kwargs)
        if self._wandb_init.get("anonymous") is None:
            self._wandb_init.pop("anonymous", None)


def keep_csv_rows(loggers: list[Any], before_step: int) -> None:
    """Keep, in a resumed run's metrics.csv, the rows its first part logged before the checkpoint's step.

    Lightning's CSVLogger deletes an existing metrics.csv when it starts, so the rows are read first and logged
    again. Rows at or after `before_step` (logged between the checkpoint and a crash) are dropped: the resumed run
    logs those steps anew.
    """
    for lg in loggers:
        path = Path(lg.log_dir) / "metrics.csv" if isinstance(lg, CSVLogger) else None
        if path is None or not path.is_file():
            continue
        with open(path, newline="") as f:
            rows = [row for row in csv.DictReader(f) if int(row["step"]) < before_step]
        for row in rows:
            step = int(row.pop("step"))
            lg.log_metrics({key: float(value) for key, value in row.items() if value != ""}, step=step)


def quiet_libraries() -> None:
    """Silence what every run prints that the user cannot act on: two library messages (a filter matching each)
    and the second copy of every Lightning line."""
    # Lightning 2.6's own pytree helper still checks against LeafSpec, which torch (2.13 here) deprecates.
    warnings.filterwarnings(
        "ignore", message=r"`isinstance\(treespec, LeafSpec\)` is deprecated", category=FutureWarning
    )
    logging.getLogger("lightning.pytorch.utilities.rank_zero").addFilter(_not_litlogger_tip)
    # The `lightning` package prints its records with a console handler of its own, and they also reach the root
    # logger, which Hydra has set up (console and the run's log file): without this, every Lightning line twice.
    logging.getLogger("lightning").handlers.clear()


def _not_litlogger_tip(record: logging.LogRecord) -> bool:
    """Lightning's advertisement for its hosted logger, logged by every Trainer (a function, so that adding it
    again in a sweep's next job adds nothing)."""
    return "litlogger" not in record.getMessage()
