"""What every run's ``config.json`` holds in common, and the rule every run configuration follows: it is checked
when built (from options or from a ``config.json``) and never changed afterwards. What training learns as it
starts (the data's preprocessing, how the batches were split over processes, the weights a classifier started
from) makes a new configuration (``with_``), which is the one written to the run folder."""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from ..errors import refuse_first


@dataclass(frozen=True)
class RunConfig:
    """The fields and checks shared by segmentation and classification runs (each adds its own in ``checks``)."""

    data: str
    folds: int = 1
    test_patients: float = 0.2
    epochs: int | None = 60
    batch_size: int = 8
    optimizer: str = "adam"
    lr_scale: float = 1.0
    select: str = "last"
    inner_val: float = 0.15
    augment: bool = True
    neg_ratio: float | None = None
    eval_every: int = 1
    seed: int = 0
    bf16: bool = False  # mixed precision for training (evaluation stays fp32): bf16 autocast on CPUs
    preprocessing: dict = field(default_factory=dict)
    distributed: dict = field(default_factory=dict)  # a torchrun run's processes, per-process and global batch

    def checks(self) -> list[tuple[bool, str]]:
        """(condition, message) pairs every valid run meets; subclasses add theirs."""
        return [
            (self.select in ("last", "best"), f"unknown selection '{self.select}' (last or best)"),
            (isinstance(self.folds, int) and self.folds >= 1, f"folds must be 1 or more, got {self.folds}"),
            (isinstance(self.batch_size, int) and self.batch_size >= 1,
             f"batch size must be 1 or more, got {self.batch_size}"),
            (isinstance(self.eval_every, int) and self.eval_every >= 1,
             f"eval_every must be 1 or more, got {self.eval_every}"),
            (0 <= self.test_patients < 1, f"test_patients must be a share in [0, 1), got {self.test_patients}"),
        ]

    def __post_init__(self) -> None:
        """Refuse values no run can have, when the configuration is built."""
        refuse_first(self.checks())

    def with_(self, **changes) -> RunConfig:
        """A new configuration with ``changes``, checked as any other."""
        return replace(self, **changes)
