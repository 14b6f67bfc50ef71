"""Pieces shared by the segmentation and classification training loops."""

from __future__ import annotations

import csv
import dataclasses
import time
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Subset

from ..devices import Precision, World, init_distributed, training_precision
from ..errors import BonemetError
from ..fileio import read_json, write_csv, write_json
from ..log import console
from .distributed import barrier, plain_state, reduce_sum



@dataclass(frozen=True)
class Runtime:
    """How, not what, a run trains: the device, DataLoader workers and this process's place in a torchrun job.
    None of it changes the numbers (beyond float summation order), so none of it is part of a run's configuration."""

    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    workers: int = 0
    world: World = World()
    sync_bn: bool = False

    @property
    def pin_memory(self) -> bool:
        return self.device.type == "cuda"


def runtime(device: str | None = "auto", workers: int = 0, sync_bn: bool = False) -> Runtime:
    """The runtime of this process: joins the torchrun job when launched by torchrun."""
    world, dev = init_distributed(device)
    if workers < 0:
        raise BonemetError(f"--workers must be 0 or more, got {workers}")
    return Runtime(dev, workers, world, sync_bn)


NOT_COMPARED = ("preprocessing", "weights", "distributed")  # what training itself writes into a run's configuration


def resumed_config(saved: Any, asked: Any, given: Collection[str] | None, run: Path,
                   why: str = "--resume continues the run as it started") -> Any:
    """The configuration a resumed run (or another fold of it) goes on with: the one it started with (``saved``).
    Options given now (``given``: field names, None = every field of ``asked``) that differ from it are refused,
    listed, after ``why``."""
    names = [f.name for f in dataclasses.fields(saved) if f.name not in NOT_COMPARED]
    if given is not None:
        names = [n for n in names if n in given]
    diffs = []
    for name in names:
        old, new = getattr(saved, name), getattr(asked, name)
        if name in ("data", "masks") and old and new:
            same = Path(old).resolve() == Path(new).resolve()
        else:
            same = old == new
        if not same:
            diffs.append(f"{name.replace('_', '-')} {old} in the run, {new} now")
    if diffs:
        hint = "drop them, or train into another --out" if given is not None else \
            "give every call the options the run started with, or train into another --out"
        raise BonemetError(f"{why}; these options differ: {'; '.join(diffs)} ({hint})", run / "config.json")
    return saved


def start_run(run: Path, cfg: Any, what: str, resume: bool, given: Collection[str] | None, fold: int | None,
              world: World) -> Any:
    """The configuration a training call goes on with. A new run: ``cfg``. ``resume``: the run's own (options
    given now must equal it). ``fold``: one fold of a run that other calls may be training at the same time; when
    the run folder already holds its configuration, every option must equal it."""
    from ..fileio import read_config

    cfg_path = run / "config.json"
    if world.distributed and cfg.batch_size % world.size:
        raise BonemetError(f"--batch-size {cfg.batch_size} is the global batch of the {world.size} processes: it "
                           f"must be a multiple of {world.size}")
    if fold is not None and not 0 <= fold < cfg.folds:
        raise BonemetError(f"--fold {fold}: the run has {cfg.folds} folds, numbered 0 to {cfg.folds - 1}")
    if cfg_path.exists() and not resume and fold is None:
        raise BonemetError("run folder already holds a run (use --resume to continue it, or another --out)", run)
    # every process has looked before the main one writes config.json: a process that starts late under load
    # would otherwise find its own job's file and refuse the run
    barrier(world)
    if cfg_path.exists() and (resume or fold is not None):
        saved = read_config(type(cfg), cfg_path, what)
        cfg = resumed_config(saved, cfg, given if resume else None, run,
                             "--resume continues the run as it started" if resume else
                             f"--fold {fold} trains one fold of the run in {run}")
    # how the batches were split, as the run started (each fold's done.json says how many processes trained it)
    return cfg.with_(distributed=distributed_batch(cfg.batch_size, world) or cfg.distributed)


def run_split(run: Path, split: dict, resume: bool, fold: int | None, world: World) -> dict:
    """The run's split: the one in ``splits.json`` when resuming or adding a fold (which must assign the patients
    as ``split``, the one these data and options give, does), else ``split``, written once by the main process."""
    from ..data.splits import load_splits, save_splits

    path = run / "splits.json"
    if path.exists() and (resume or fold is not None):
        saved = load_splits(path)
        if fold is not None and _assignment(saved) != _assignment(split):
            raise BonemetError(f"--fold {fold}: the run's splits.json assigns patients differently from the split "
                               "these data and options give (another data root, or a changed patient list?)", path)
        return saved
    if world.main:
        save_splits(split, path)
    return split


def _assignment(split: dict) -> list:
    """What a split assigns (test patients, each fold's patients or items), without its labels and paths."""
    keep = ("train_patients", "val_patients", "fit_patients", "inner_val_patients", "train", "val")
    return [sorted(split.get("test_patients", [])),
            [{k: sorted(f[k]) for k in keep if k in f} for f in split["folds"]]]


def folds_to_train(run: Path, n_folds: int, fold: int | None, resume: bool) -> list[int]:
    """All folds, or ``fold`` alone (refused when an earlier call already started it and this is no resume)."""
    if fold is None:
        return list(range(n_folds))
    if not resume and (run / f"fold{fold}" / "last.pt").exists():
        raise BonemetError(f"fold {fold} of this run has already started (add --resume to continue it)",
                           run / f"fold{fold}")
    return [fold]


def distributed_batch(batch_size: int, world: World) -> dict:
    """What a torchrun job does with ``--batch-size``: it is the global batch, split over the processes, and the
    learning rate is the schedule's, not scaled (so N processes take the steps one process would)."""
    if not world.distributed:
        return {}
    import torch.distributed as dist

    return {"processes": world.size, "backend": dist.get_backend(), "global_batch": batch_size,
            "batch_per_process": batch_size // world.size,
            "learning_rate": "the schedule x lr_scale for the global batch (not scaled by the process count)"}


def announce_distributed(cfg: Any, world: World) -> None:
    """Say, once, how a torchrun job splits its batches."""
    d = cfg.distributed
    if world.main and d:
        console.print(f"{d['processes']} processes ({d['backend']}): {d['batch_per_process']} items each, a global "
                      f"batch of {d['global_batch']}; learning rate: {d['learning_rate']}")


def make_optimizer(name: str, params, lr: float = 0.01, weight_decay: float = 0.0) -> torch.optim.Optimizer:
    """``adam``, ``adamw`` (decoupled weight decay) or ``sgd`` (momentum 0.9); the schedule sets the
    learning rate every epoch."""
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=0.9, weight_decay=weight_decay)
    raise BonemetError(f"unknown optimizer '{name}' (adam, adamw or sgd)")


def train_input(image: torch.Tensor, bf16: bool) -> torch.Tensor:
    """The training batch in the memory format of a CPU ``training_precision`` model."""
    return image.contiguous(memory_format=torch.channels_last) if bf16 else image


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


def resume_state(fold_dir: Path, model: torch.nn.Module, opt: torch.optim.Optimizer) -> tuple[int, float, list[dict]]:
    """Load ``last.pt`` of an interrupted fold into ``model`` (before it is wrapped for data-parallel training) and
    ``opt``: (first epoch to run, best selection score, kept metric rows)."""
    from ..runs.checkpoint import load_checkpoint, load_weights

    path = fold_dir / "last.pt"
    ck = load_checkpoint(path)
    load_weights(model, ck, path)
    try:
        opt.load_state_dict(ck["optimizer"])
        start = int(ck["epoch"]) + 1
    except (KeyError, ValueError, TypeError) as exc:
        raise BonemetError(f"the checkpoint cannot resume training (optimizer state or epoch: {exc})", path) from None
    return start, float(ck.get("best", -1.0)), read_rows(fold_dir / "metrics.csv", start)


def end_epoch(fold_dir: Path, rows: list[dict], row: dict, model: torch.nn.Module, opt: torch.optim.Optimizer,
              epoch: int, best: float, score: float | None, world: World = World()) -> float:
    """Keep ``best.pt`` when the selection ``score`` improves, log the row, save ``last.pt``; returns the best score.
    Only the main process of a torchrun job writes (the others hold the same weights)."""
    from ..runs.checkpoint import save_checkpoint

    improved = score is not None and score > best
    best = score if improved else best
    rows.append(row)
    if not world.main:
        return best
    state = plain_state(model)
    if improved:
        save_checkpoint(fold_dir / "best.pt", model=state, epoch=epoch, score=best)
    write_rows(fold_dir / "metrics.csv", rows)
    save_checkpoint(fold_dir / "last.pt", model=state, optimizer=opt.state_dict(), epoch=epoch, best=best)
    return best


def sampling_flags(flags: Sequence[bool] | None, neg_ratio: float | None, who: str, positive: str):
    """The flags that ``epoch_loader`` samples with, or None when ``--neg-ratio`` cannot apply: a training set
    without a single ``positive`` slice would keep no item at all, so it trains on every slice instead (said)."""
    if flags is None or neg_ratio is None or any(flags):
        return flags
    console.print(f"[yellow]warning:[/] {who}: no {positive} slice among its {len(flags)} training slices, so "
                  "--neg-ratio has nothing to balance; it trains on all of them")
    return None


class SeededItems(Dataset):
    """``ds`` with its augmentation drawn from a generator seeded by (epoch seed, item index) for every item: what
    an item becomes does not depend on the order, the loader worker or the process that reads it."""

    def __init__(self, ds: Dataset, augment, seed: int) -> None:
        self.ds, self.augment, self.seed = ds, augment, seed

    def __len__(self) -> int:
        return len(self.ds)

    def __getitem__(self, i: int):
        if self.augment is not None:
            self.augment.generator = torch.Generator().manual_seed((self.seed * 1_000_003 + i) % (2**63 - 1))
        return self.ds[i]


def epoch_loader(ds: Dataset, batch_size: int, seed: int, flags: Sequence[bool] | None = None,
                 neg_ratio: float | None = None, augment=None, augment_seed: int = 0, workers: int = 0,
                 pin_memory: bool = False, world: World = World()) -> DataLoader:
    """One epoch's batches in a seeded random order. With ``flags`` and ``neg_ratio``: every flagged (positive)
    item, and at most ``neg_ratio`` unflagged items per flagged one, drawn afresh each epoch (CPU budgets).

    ``augment`` (which ``ds`` applies) draws each item's transform from (``augment_seed``, item index), so the
    batches are the same with any number of ``workers`` (DataLoader processes). In a torchrun job of N processes
    ``batch_size`` is the global batch: a DistributedSampler gives each process ``batch_size / N`` items of every
    global batch, the very items one process would have trained on in that step.
    """
    gen = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(ds), generator=gen).tolist()
    if flags is not None and neg_ratio is not None:
        pos = [i for i in order if flags[i]]
        kept = pos + [i for i in order if not flags[i]][: int(neg_ratio * max(1, len(pos)))]
        # shuffle again: the kept negatives come from the front of ``order``, so filtering it in place
        # would give negative-heavy batches first and all-positive batches at the end of every epoch
        order = [kept[j] for j in torch.randperm(len(kept), generator=gen).tolist()]
    drop_last = len(order) > batch_size
    items = Subset(SeededItems(ds, augment, augment_seed), order)
    common = {"num_workers": workers, "pin_memory": pin_memory, "persistent_workers": False}
    if not world.distributed:
        return DataLoader(items, batch_size=batch_size, shuffle=False, drop_last=drop_last, **common)
    if batch_size % world.size:
        raise BonemetError(f"--batch-size {batch_size} is the global batch of the {world.size} processes: it must "
                           f"be a multiple of {world.size}")
    whole = Subset(items, range(len(order) - len(order) % (batch_size if drop_last else world.size)))
    sampler = DistributedSampler(whole, num_replicas=world.size, rank=world.rank, shuffle=False, drop_last=True)
    return DataLoader(whole, batch_size=batch_size // world.size, sampler=sampler, drop_last=False, **common)


@dataclass
class TrainStep:
    """One training step of a loop: ``fn(batch)`` returns (loss, items); ``precision`` runs its backward pass and
    optimiser step (a gradient scaler for float16), ``world`` is the process group its loss is averaged over."""

    fn: Callable[[object], tuple[torch.Tensor, int]]
    precision: Precision = field(default_factory=lambda: Precision(torch.device("cpu")))
    world: World = World()

    def __call__(self, batch: object) -> tuple[torch.Tensor, int]:
        return self.fn(batch)


def train_epoch(model: torch.nn.Module, opt: torch.optim.Optimizer, loader: DataLoader, label: str,
                step: Callable[[object], tuple[torch.Tensor, int]]) -> float:
    """One optimisation pass with a progress bar; ``step(batch)`` returns (loss, items) (a :class:`TrainStep` also
    says how its backward pass runs and over which processes); returns the mean loss over every process's items."""
    precision = getattr(step, "precision", None) or Precision(torch.device("cpu"))
    world = getattr(step, "world", None) or World()
    loss_sum, n = 0.0, 0
    with epoch_bar(label) if world.main else _no_bar() as bar:
        task = bar.add_task("train", total=len(loader), loss=float("nan"))
        for batch in loader:
            opt.zero_grad(set_to_none=True)
            loss, items = step(batch)
            precision.step(loss, opt)
            loss_sum += float(loss.detach()) * items
            n += items
            bar.update(task, advance=1, loss=loss_sum / n)
    loss_sum, n = reduce_sum([loss_sum, float(n)], world)
    return loss_sum / max(1.0, n)


class _no_bar:
    """The progress bar of processes that do not report (all but the main one of a torchrun job)."""

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        return None

    def add_task(self, *args, **kwargs) -> int:
        return 0

    def update(self, *args, **kwargs) -> None:
        return None


@dataclass
class FoldRecipe:
    """How one fold model of a run (or a distilled student) trains where segmentation, classification and
    distillation differ; ``fit_fold`` does the rest (seeding, resuming, data parallelism, the learning-rate schedule, seeded epoch loaders, scoring, the kept
    checkpoint, the epoch log and ``done.json``)."""

    name: str  # how the log names the fold model: "fold", "model" or "student"
    build: Callable[[], tuple[torch.nn.Module, torch.optim.Optimizer]]  # called after the fold's seed is set
    schedule: Any  # epoch -> learning rate (``schedule.PiecewiseLR``)
    datasets: Callable[[torch.nn.Module], tuple[Dataset, Dataset | None, Dataset | None]]  # train, held-out, selection
    step: Callable[[torch.nn.Module, Precision], Callable[[Any], tuple[torch.Tensor, int]]]  # loss of one batch
    scores: Callable[[torch.nn.Module, Dataset], dict[str, float]] | None  # quick scores of a data set
    selection_score: Callable[[dict[str, float]], float] | None  # the number best.pt is chosen by
    heldout_shown: tuple[str, str] | None  # (score key, words) of the held-out score in the epoch log
    selection: str  # what done.json says chose the checkpoint when there are selection patients
    flags: Sequence[bool] | None = None  # positive item or not, for --neg-ratio
    augment: Any = None  # the augmentation whose draws the loader seeds
    unused_parameters: bool = False  # DistributedDataParallel's find_unused_parameters
    new_optimizer: Callable[[torch.nn.Module], torch.optim.Optimizer] | None = None  # each epoch, if given
    train_mode: Callable[[torch.nn.Module], None] | None = None  # after model.train(), e.g. frozen layers to eval
    heldout_selects: bool = False  # the reference run's leak: select on the held-out (scored) fold itself


def fit_fold(cfg: Any, run: Path, k: int, recipe: FoldRecipe, resume: bool, rt: Runtime, has_sel: bool) -> dict:
    """Train fold model ``k`` of a run by ``recipe``: skipped when finished and resuming, continued after its last
    epoch when ``resume``; every process of a torchrun job takes part, the main one writes. Returns done.json."""
    from .distributed import data_parallel

    fold_dir = run / f"fold{k}"
    world = rt.world
    if world.main:
        fold_dir.mkdir(parents=True, exist_ok=True)
    done = fold_dir / "done.json"
    if resume and done.exists():
        if world.main:
            console.print(f"{recipe.name} {k}: already finished, skipped")
        return read_json(done, "done.json")
    torch.manual_seed(cfg.seed * 1000 + k)
    model, opt = recipe.build()
    precision = training_precision(model, cfg.bf16, rt.device, warn=lambda m: console.print(f"[yellow]{m}[/]"))
    start, best, rows = 0, -1.0, []
    if resume and (fold_dir / "last.pt").exists():
        start, best, rows = resume_state(fold_dir, model, opt)
        if world.main:
            console.print(f"{recipe.name} {k}: resuming after epoch {start - 1}")
    model = data_parallel(model, world, rt.device, rt.sync_bn, unused_parameters=recipe.unused_parameters)
    train_ds, held_ds, sel_ds = recipe.datasets(model)
    for epoch in range(start, cfg.epochs):
        t0 = time.perf_counter()
        lr = recipe.schedule(epoch)
        if recipe.new_optimizer:
            opt = recipe.new_optimizer(model)
        set_lr(opt, lr)
        loader = epoch_loader(train_ds, cfg.batch_size, cfg.seed * 100_003 + k * 1009 + epoch, recipe.flags,
                              cfg.neg_ratio, recipe.augment, cfg.seed * 7919 + k * 31 + epoch, rt.workers,
                              rt.pin_memory, world)
        model.train()
        if recipe.train_mode:
            recipe.train_mode(model)
        train_loss = train_epoch(model, opt, loader, f"{recipe.name} {k} epoch {epoch + 1}/{cfg.epochs}",
                                 TrainStep(recipe.step(model, precision), precision, world))
        row: dict = {"epoch": epoch, "lr": lr, "train_loss": train_loss}
        heldout = (recipe.scores(model, held_ds) if held_ds is not None and (
            epoch == cfg.epochs - 1 or (epoch + 1) % cfg.eval_every == 0) else {})
        row.update({f"heldout_{name}": v for name, v in heldout.items()})
        score = None
        if has_sel:
            selection = heldout if recipe.heldout_selects and heldout else recipe.scores(model, sel_ds)
            row.update({f"select_{name}": v for name, v in selection.items()})
            score = recipe.selection_score(selection)
        row["seconds"] = time.perf_counter() - t0
        best = end_epoch(fold_dir, rows, row, model, opt, epoch, best, score, world)
        if world.main:
            shown = (f"held-out {recipe.heldout_shown[1]} {heldout.get(recipe.heldout_shown[0], float('nan')):.3f}, "
                     if recipe.heldout_shown else "")
            console.print(f"{recipe.name} {k} epoch {epoch + 1}/{cfg.epochs}: lr {lr:g}, loss {row['train_loss']:.4f}, "
                          f"{shown}{row['seconds']:.1f} s")
    result = {"fold": k, "epochs": cfg.epochs, "checkpoint": "best.pt" if has_sel else "last.pt",
              "selection": recipe.selection if has_sel else "last epoch", "processes": world.size,
              "device": rt.device.type}
    if world.main:
        write_json(done, result)
    barrier(world)
    return result
