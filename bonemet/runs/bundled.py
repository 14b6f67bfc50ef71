"""Models that ship inside the package: run folders under ``bonemet/pretrained/NAME/``, each with a manifest
that lists every file's SHA-256 and a model card.

A bundled model is an ordinary segmentation run folder (``config.json``, ``splits.json``, ``fold*/last.pt``
with the weights only, ``fold*/done.json``) that ``predict`` loads like any other, after every file has been
checked against ``manifest.json``: a damaged or altered installation is refused in one line instead of giving
different answers. ``package_run`` makes such a folder from a trained run (``bonemet models build`` calls it).
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

from .. import __version__
from ..errors import BonemetError
from ..fileio import read_json, sha256, write_json
from .checkpoint import finished_checkpoint, load_checkpoint, save_checkpoint
from .seg import load_run

BUNDLE_DIR = Path(__file__).resolve().parents[1] / "pretrained"
MANIFEST = "manifest.json"
CARD = "MODEL_CARD.md"

__all__ = ["BUNDLE_DIR", "Bundled", "bundled_models", "bundled_model", "default_model", "package_run", "sha256"]


@dataclass(frozen=True)
class Bundled:
    """One bundled model: its folder and what its manifest says."""

    name: str
    folder: Path
    manifest: dict

    @property
    def default(self) -> bool:
        return bool(self.manifest.get("default"))

    @property
    def size_mb(self) -> float:
        return sum((self.folder / f).stat().st_size for f in self.manifest["files"]) / 1e6

    def problems(self) -> list[str]:
        """Files missing or whose SHA-256 differs from the manifest's (empty when the model is intact)."""
        bad = []
        for rel, digest in self.manifest["files"].items():
            path = self.folder / rel
            if not path.is_file():
                bad.append(f"{rel} is missing")
            elif sha256(path) != digest:
                bad.append(f"{rel} does not match its SHA-256")
        return bad

    def verified(self) -> Path:
        """The run folder, after every file was checked against the manifest."""
        bad = self.problems()
        if bad:
            raise BonemetError(f"bundled model '{self.name}' is damaged: {'; '.join(bad)} (reinstall bonemet)",
                               self.folder / MANIFEST)
        return self.folder


def _read(folder: Path) -> Bundled:
    manifest = read_json(folder / MANIFEST, "bundled model manifest")
    if not isinstance(manifest, dict) or not isinstance(manifest.get("files"), dict):
        raise BonemetError("not a bundled model manifest (no 'files' table)", folder / MANIFEST)
    return Bundled(str(manifest.get("name", folder.name)), folder, manifest)


def bundled_models(root: Path | None = None) -> list[Bundled]:
    """Every model under ``root`` (default: the package's ``pretrained`` folder), by name."""
    root = BUNDLE_DIR if root is None else root
    if not root.is_dir():
        return []
    return sorted((_read(d) for d in root.iterdir() if (d / MANIFEST).is_file()), key=lambda b: b.name)


def bundled_model(name: str, root: Path | None = None) -> Bundled:
    models = bundled_models(root)
    for b in models:
        if b.name == name:
            return b
    names = ", ".join(b.name for b in models) or "none"
    raise BonemetError(f"no bundled model named '{name}' (bundled: {names})")


def default_model(root: Path | None = None) -> Path:
    """The run folder of the bundled default model, checked against its manifest."""
    defaults = [b for b in bundled_models(root) if b.default]
    if not defaults:
        raise BonemetError("this installation has no bundled default model: pass --seg RUN (a run folder of "
                           "'bonemet seg train'), or build one with 'bonemet models build'")
    return defaults[0].verified()


def package_run(run: Path, out: Path, name: str, description: str, default: bool = True,
                extra: dict[str, Path] | None = None) -> Bundled:
    """A bundled-model folder ``out`` from the segmentation run ``run``: its configuration and split, each fold's
    finished weights without optimiser state, ``extra`` files (the model card, results) copied in as named, and a
    manifest with every file's SHA-256. ``out`` must not exist."""
    cfg, split = load_run(run)
    if out.exists():
        raise BonemetError("the bundle folder exists already", out)
    out.mkdir(parents=True)
    for f in ("config.json", "splits.json"):
        shutil.copyfile(run / f, out / f)
    for k in range(len(split["folds"])):
        ck = load_checkpoint(finished_checkpoint(run / f"fold{k}", f"fold {k}"))
        (out / f"fold{k}").mkdir()
        save_checkpoint(out / f"fold{k}" / "last.pt", model=ck["model"])
        write_json(out / f"fold{k}" / "done.json", {"fold": k, "checkpoint": "last.pt",
                                                    "selection": "as trained (weights only)"})
    for rel, src in (extra or {}).items():
        shutil.copyfile(src, out / rel)
    files = sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file())
    write_json(out / MANIFEST, {"name": name, "description": description, "default": default,
                                "bonemet": __version__, "model": cfg.model, "width": cfg.width,
                                "pixel_mm": cfg.pixel_mm, "members": len(split["folds"]),
                                "files": {f: sha256(out / f) for f in files}})
    return _read(out)
