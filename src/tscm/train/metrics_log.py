"""Run logs: per-step and per-epoch CSV files in the run folder, and TensorBoard when installed.

Rows are kept in memory and each CSV is rewritten atomically on `flush()` (at checkpoints and
epoch ends), so after a crash the CSVs match the last checkpoint; `truncate` drops rows that a
resumed run will redo.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any

from tscm.fileio import write_text_atomic


class CsvTable:
    """An append-only table whose columns grow as new keys appear."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.columns: list[str] = []
        self.rows: list[dict[str, Any]] = []
        if path.is_file():
            with path.open(newline="", encoding="utf-8") as handle:
                reader = csv.DictReader(handle)
                self.columns = list(reader.fieldnames or [])
                self.rows = [dict(row) for row in reader]

    def append(self, row: dict[str, Any]) -> None:
        for key in row:
            if key not in self.columns:
                self.columns.append(key)
        self.rows.append(row)

    def truncate(self, column: str, keep_up_to: float) -> None:
        """Keep rows whose `column` ≤ `keep_up_to`."""
        self.rows = [row for row in self.rows if float(row[column]) <= keep_up_to]

    def flush(self) -> None:
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=self.columns, restval="", lineterminator="\n")
        writer.writeheader()
        writer.writerows(self.rows)
        write_text_atomic(self.path, buffer.getvalue())


def _format(value: Any) -> Any:
    return f"{value:.6g}" if isinstance(value, float) else value


class MetricsLog:
    """steps.csv (one row per optimisation step), epochs.csv (one row per epoch), TensorBoard."""

    def __init__(self, run_dir: Path, tensorboard: bool, resume_step: int | None = None, resume_epoch: int | None = None) -> None:
        self.steps = CsvTable(run_dir / "steps.csv")
        self.epochs = CsvTable(run_dir / "epochs.csv")
        if resume_step is not None:
            self.steps.truncate("step", resume_step)
        if resume_epoch is not None:
            self.epochs.truncate("epoch", resume_epoch)
        self.writer = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                SummaryWriter = None
            if SummaryWriter is not None:
                self.writer = SummaryWriter(log_dir=str(run_dir / "tensorboard"), purge_step=resume_step)

    def log_step(self, step: int, epoch: int, values: dict[str, float]) -> None:
        self.steps.append({"step": step, "epoch": epoch, **{k: _format(v) for k, v in values.items()}})
        if self.writer is not None:
            for key, value in values.items():
                self.writer.add_scalar(f"train/{key}", value, step)

    def log_epoch(self, epoch: int, step: int, values: dict[str, float]) -> None:
        self.epochs.append({"epoch": epoch, "step": step, **{k: _format(v) for k, v in values.items()}})
        if self.writer is not None:
            for key, value in values.items():
                self.writer.add_scalar(f"epoch/{key}", value, step)

    def flush(self) -> None:
        self.steps.flush()
        self.epochs.flush()
        if self.writer is not None:
            self.writer.flush()

    def close(self) -> None:
        self.flush()
        if self.writer is not None:
            self.writer.close()


class NullLog:
    """Non-main processes log nothing."""

    def log_step(self, *args, **kwargs) -> None:
        pass

    def log_epoch(self, *args, **kwargs) -> None:
        pass

    def flush(self) -> None:
        pass

    def close(self) -> None:
        pass
