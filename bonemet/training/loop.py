"""Pieces shared by the segmentation and classification training loops."""

from __future__ import annotations

import csv
from pathlib import Path

import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from ..errors import BonemetError
from ..fileio import write_csv

console = Console(stderr=True)


def make_optimizer(name: str, params, lr: float = 0.01) -> torch.optim.Optimizer:
    """``adam`` or ``sgd`` (momentum 0.9); the schedule sets the learning rate every epoch."""
    if name == "adam":
        return torch.optim.Adam(params, lr=lr)
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=0.9)
    raise BonemetError(f"unknown optimizer '{name}' (adam or sgd)")


def set_lr(opt: torch.optim.Optimizer, lr: float) -> None:
    for group in opt.param_groups:
        group["lr"] = lr


def epoch_bar(label: str) -> Progress:
    """A transient progress bar for one epoch, with the running loss."""
    return Progress(TextColumn(label), BarColumn(), MofNCompleteColumn(), TextColumn("loss {task.fields[loss]:.4f}"),
                    TimeElapsedColumn(), console=console, transient=True)


def write_rows(path: Path, rows: list[dict]) -> None:
    """Per-epoch metrics as CSV (columns = the union of the rows' keys)."""
    fields: list[str] = []
    for r in rows:
        fields += [f for f in r if f not in fields]
    write_csv(path, rows, fields)


def read_rows(path: Path, before_epoch: int) -> list[dict]:
    """The metric rows of the epochs a resumed run keeps."""
    if not path.exists():
        return []
    with open(path, newline="") as fh:
        return [r for r in csv.DictReader(fh) if int(r["epoch"]) < before_epoch]
