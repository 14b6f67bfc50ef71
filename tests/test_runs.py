"""Run configurations: one base for segmentation and classification runs, checked when built, never changed."""

from __future__ import annotations

import dataclasses

import pytest

from bonemet.errors import BonemetError
from bonemet.runs.cls import ClsConfig
from bonemet.runs.config import RunConfig
from bonemet.runs.seg import SegConfig


@pytest.mark.parametrize("config", [SegConfig, ClsConfig])
def test_run_configs_share_their_fields_and_checks_and_never_change(config) -> None:
    shared = [f.name for f in dataclasses.fields(RunConfig)]
    assert [f.name for f in dataclasses.fields(config)][:len(shared)] == shared
    cfg = config(data="root")
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.epochs = 3
    for field, value, message in (("folds", 0, "folds must be 1 or more, got 0"),
                                  ("select", "worst", "unknown selection 'worst' (last or best)"),
                                  ("test_patients", 1.0, "test_patients must be a share in [0, 1), got 1.0"),
                                  ("eval_every", 0, "eval_every must be 1 or more, got 0")):
        with pytest.raises(BonemetError, match=f"^{message}$".replace("(", r"\(").replace(")", r"\)")
                           .replace("[", r"\[")):
            config(data="root", **{field: value})
        with pytest.raises(BonemetError):
            cfg.with_(**{field: value})  # a changed configuration is checked as a new one
    changed = cfg.with_(preprocessing={"window": "bone"})
    assert changed.preprocessing == {"window": "bone"} and cfg.preprocessing == {} and type(changed) is config


def test_each_run_keeps_its_own_defaults_and_checks() -> None:
    assert (SegConfig(data="x").folds, SegConfig(data="x").optimizer) == (5, "adam")
    assert (ClsConfig(data="x").folds, ClsConfig(data="x").optimizer) == (1, "sgd")
    assert ClsConfig(data="x", model="vit_tiny_patch16_224").epochs == 80  # its schedule's own length
    with pytest.raises(BonemetError, match="size must be a multiple of 16"):
        SegConfig(data="x", size=40)
    with pytest.raises(BonemetError, match="unknown crop 'face'"):
        ClsConfig(data="x", crop="face")
