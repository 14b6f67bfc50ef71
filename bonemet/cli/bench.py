"""``bonemet bench``: measured speed, written as the tables the README shows."""

from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import Annotated

import typer

app = typer.Typer(help="Benchmarks (speed is measured here, never in tests).", no_args_is_help=True)


@app.command()
def seg(
    size: Annotated[int, typer.Option(min=32)] = 224,
    width: Annotated[int, typer.Option(min=1)] = 32,
    batch_size: Annotated[int, typer.Option(min=1)] = 8,
    models: Annotated[str, typer.Option(help="Comma-separated model names.")] =
        "unet,attunet,unet++,attunet++,hybrid-attunet++",
    quick: Annotated[bool, typer.Option(help="One timed repetition instead of three.")] = False,
    out: Annotated[Path | None, typer.Option(help="Folder to save bench_seg.md in.")] = None,
    device: Annotated[str, typer.Option(help="cpu (default), cuda, cuda:N, mps or auto.")] = "cpu",
) -> None:
    """Training images/s and inference slices/s of each segmentation model, in one run."""
    import time

    from ..bench.seg import bench_models, machine_line
    from ..markdown import markdown_table
    from ..errors import BonemetError
    from ..models import model_names

    names = [m.strip() for m in models.split(",") if m.strip()]
    bad = [m for m in names if m not in model_names()]
    if bad:
        raise BonemetError(f"unknown model(s) {bad}")
    t0 = time.perf_counter()
    from ..devices import describe_device, resolve_device

    dev = resolve_device(device)
    rows = bench_models(names, size, width, batch_size, reps=1 if quick else 3,
                        log=lambda m: typer.echo(m, err=True), device=dev)
    text = (f"Segmentation speed, {size} px, width {width}, batch {batch_size}, eager fp32 (training also with "
            f"--bf16) on {describe_device(dev)} (host {machine_line()}); median of {1 if quick else 3} timed repetitions after one warm-up; "
            f"bench took {time.perf_counter() - t0:.0f} s.\n\n" + markdown_table(rows))
    report(text, out, "bench_seg.md")


@app.command()
def infer(
    model: Annotated[str, typer.Option(help="Segmentation model.")] = "hybrid-attunet++",
    size: Annotated[int, typer.Option(min=32)] = 224,
    width: Annotated[int, typer.Option(min=1)] = 32,
    batch_size: Annotated[int | None, typer.Option(min=1, help="Batch of the batched paths (default: predict's, "
                                                               "2 at 224 px).")] = None,
    slices: Annotated[int, typer.Option(min=1, help="Slices per timed pass.")] = 8,
    scan_slices: Annotated[int, typer.Option(min=8, help="Slices of the phantom scan given to predict.")] = 48,
    members: Annotated[int, typer.Option(min=1, help="Ensemble members for the predict timing.")] = 5,
    compile: Annotated[bool, typer.Option(help="Include the torch.compile paths (minutes of compilation).")] = True,
    quick: Annotated[bool, typer.Option(help="One timed repetition instead of three, a 16-slice scan.")] = False,
    check_run: Annotated[Path | None, typer.Option(help="Also check every path's answers on a trained run "
                                                        "(each member and their average, on slices of its test patients).")] = None,
    check_slices: Annotated[int, typer.Option(min=1, help="Slices of the test patients that --check-run compares "
                                                          "(spread evenly; all of them when fewer).")] = 16,
    profile: Annotated[bool, typer.Option(help="Also profile one pass of each torch path (torch.profiler) and "
                                               "list its top operators by time.")] = False,
    top: Annotated[int, typer.Option(min=1, help="Operators listed per path by --profile.")] = 8,
    out: Annotated[Path | None, typer.Option(help="Folder to save bench_infer.md in.")] = None,
) -> None:
    """Inference paths against eager fp32 at batch 1, training speed and memory, and predict end to end."""
    import tempfile
    import time

    import torch

    from ..bench.infer import (bench_paths, check_paths, time_predict, train_speed, write_phantom_scan,
                               write_random_run)
    from ..bench.peak import CONV_SHAPES, MATMUL_SIZES
    from ..bench.seg import machine_line
    from ..markdown import markdown_table
    from ..inference.fast import auto_batch, bf16_supported, default_paths, openvino_available, ort_available
    from ..inference.quantize import store_int8

    t0 = time.perf_counter()
    reps = 1 if quick else 3
    scan_slices = min(16, scan_slices) if quick else scan_slices
    batch_size = batch_size or auto_batch(size)
    say = lambda m: typer.echo(m, err=True)  # noqa: E731
    train = train_speed(model, size, width, 8, reps)
    say(f"training: {train['train img/s']} img/s (--bf16: {train['train img/s --bf16']}), "
        f"peak RSS {train['peak RSS MB']} MB")
    checked = check_paths(check_run, slices=check_slices, log=say) if check_run is not None else None
    path_reps = 1 if quick else 5  # interleaved rounds: medians of 5 ride out a shared machine's slow spells
    rows, facts = bench_paths(model, size, width, slices, batch_size, path_reps, compile, top if profile else 0,
                              log=say)
    paths = default_paths()
    with tempfile.TemporaryDirectory(prefix="bonemet-bench-") as tmp:
        run = write_random_run(Path(tmp) / "run", members, model, size, width)
        scan = write_phantom_scan(Path(tmp) / "ct.nii.gz", scan_slices, size)
        timed = [(f"default ({'+'.join(paths)}, batch {batch_size})", paths, batch_size)]
        unfused = tuple(p for p in paths if p != "fuse")
        if unfused != paths or batch_size != 8:
            timed.append((f"{'+'.join(unfused)}, batch 8 (no fusion)", unfused, 8))
        timings: list[tuple[str, float]] = []  # (row, seconds per 100 slices)
        for name, p, b in timed:
            t = time_predict(run, scan, Path(tmp) / f"out-{len(timings)}", scan_slices, p, b)
            timings.append((name, t))
            say(f"predict, {name}: {t:.0f} s per 100 slices")
        if openvino_available():
            ov = ("fold_bn", "openvino", "bf16") if bf16_supported() else ("fold_bn", "openvino")
            t = time_predict(run, scan, Path(tmp) / "out-openvino", scan_slices, ov, batch_size)
            timings.append((f"--fast {','.join(ov)}, batch {batch_size} (OpenVINO)", t))
            say(f"predict, {','.join(ov)}: {t:.0f} s per 100 slices")
        if ort_available():
            from ..runs.seg import load_member, load_run

            tq, cfg = time.perf_counter(), load_run(run)[0]
            calib = torch.rand(8, 3, size, size)  # random weights: what the ranges are does not change the speed
            for k in range(members):
                store_int8(run, k, load_member(cfg, run, k), calib, ["random"])
            t_quant = (time.perf_counter() - tq) / members
            t = time_predict(run, scan, Path(tmp) / "out-int8", scan_slices, ("fold_bn", "int8"), batch_size)
            timings.append((f"--fast fold_bn,int8, batch {batch_size} (graphs stored by `bonemet seg quantize`, "
                            f"{t_quant:.0f} s a member, once per run)", t))
            say(f"predict, int8 (stored graphs): {t:.0f} s per 100 slices; quantization {t_quant:.0f} s a member")
        t_base = time_predict(run, scan, Path(tmp) / "out-eager", scan_slices, (), 1)
        timings.append(("eager fp32, batch 1 (baseline)", t_base))
        say(f"predict, eager fp32 batch 1: {t_base:.0f} s per 100 slices")
    predict_rows = [{"path": name, "s per 100 slices": round(t), "speed-up": f"{t_base / t:.1f}x"}
                    for name, t in timings]
    gmac = facts["GMAC/slice"]
    text = (f"Inference paths of {model} (width {width}, {size} px, {gmac} GMAC/slice) on CPU ({machine_line()}); "
            f"median of {path_reps} timed pass(es) over {slices} slices, the paths taking turns (one pass of "
            f"each per round), after a first pass (timed apart: it holds "
            f"export, quantization and compilation); answers compared with the baseline on the same slices "
            f"(random weights and inputs; `--check-run RUN` checks them on a trained model).\n\n"
            + markdown_table(rows) + "\n\n"
            f"Compute floor (best of {len(MATMUL_SIZES)} matmul and {len(CONV_SHAPES)} 3x3 convolution shapes; "
            f"int8: torch's matmuls and, with ONNX Runtime, its int8 matmuls and convolutions): "
            + "; ".join(f"{p} {f['GFLOP/s']} GFLOP/s ({f['shape']})" for p, f in facts["floor"].items())
            + f". A slice is {2 * gmac:.0f} GFLOP; \"share of peak\" is a path's GFLOP/s over the floor of the "
            f"precision it computes in. Peak resident memory of inference {facts['peak RSS MB']} MB.\n\n"
            f"Training (Adam step, batch 8, in a fresh process): {train['train img/s']} images/s eager fp32, "
            + (f"{train['train img/s --bf16']} with --bf16 ({train['bf16 speed-up']})"
               if isinstance(train["train img/s --bf16"], float) else "--bf16 not measured (no native bf16)")
            + f"; forward / backward / optimiser ms per step: {train['step ms fwd / bwd / opt']} fp32"
            + (f", {train['step ms fwd / bwd / opt --bf16']} --bf16" if isinstance(train["train img/s --bf16"], float)
               else "")
            + f"; peak resident memory {train['peak RSS MB']} MB.\n\n"
            f"`bonemet predict` end to end (read NIfTI, {members}-member ensemble of random-weight {model} models, "
            f"lesion list, NIfTI masks, report) on a {scan_slices}-slice phantom scan at {size} px, in one run:\n\n"
            + markdown_table(predict_rows) + "\n")
    for name, ops in facts["profiles"].items():
        text += f"\nTop operators of one pass ({slices} slices), {name}:\n\n" + markdown_table(ops) + "\n"
    if checked:
        text += (f"\nAnswers of trained models against eager fp32: {checked[1]}.\n\n" + markdown_table(checked[0])
                 + "\n")
    text += f"\nBench took {time.perf_counter() - t0:.0f} s."
    report(text, out, "bench_infer.md")


@app.command()
def memory(
    slices: Annotated[str, typer.Option(help="Comma-separated scan lengths (slices) to measure.")] = "100,1000",
    size: Annotated[int, typer.Option(min=32, help="Slice size in pixels.")] = 512,
    seg: Annotated[Path | None, typer.Option(help="A trained segmentation run (default: one random-weight member, "
                                                  "width 4, 64 px: the pipeline's memory, not the models').")]
        = None,
    threshold: Annotated[float, typer.Option(min=0.0, max=1.0, help="predict's threshold (lower it to make the "
                                                                     "random model's output into lesions).")] = 0.5,
    formats: Annotated[str, typer.Option(help="Comma-separated inputs to measure: nifti (uncompressed) and / or "
                                              "dicom (a series of files; adds the DICOM-SEG).")] = "nifti,dicom",
    out: Annotated[Path | None, typer.Option(help="Folder to save bench_memory.md in.")] = None,
) -> None:
    """Peak memory of predict (a fresh process each) on long phantom scans."""
    import tempfile
    import time

    from ..bench.memory import bench_memory
    from ..bench.seg import machine_line
    from ..markdown import markdown_table
    from ..errors import BonemetError

    lengths = number_list(slices, "--slices", 8)
    t0 = time.perf_counter()
    fmts = [f.strip() for f in formats.split(",") if f.strip()]
    if not fmts or set(fmts) - {"nifti", "dicom"}:
        raise BonemetError(f"--formats wants nifti and / or dicom, got '{formats}'")
    rows = []
    with tempfile.TemporaryDirectory(prefix="bonemet-bench-") as work:
        for fmt in fmts:
            rows += bench_memory(lengths, size, Path(work) / fmt, seg, threshold, fmt,
                                 log=lambda m: typer.echo(m, err=True))
    model = f"the run {seg}" if seg else "one random-weight hybrid-attunet++ member (width 4, 64 px)"
    text = (f"Peak resident memory of `bonemet predict --threshold {threshold}` in a fresh process, {model}, on "
            f"{machine_line()}; bench took {time.perf_counter() - t0:.0f} s.\n\n"
            + markdown_table(rows))
    report(text, out, "bench_memory.md")


@app.command()
def batch(
    jobs: Annotated[str, typer.Option(help="Comma-separated numbers of local jobs to compare.")] = "1,2",
    cases: Annotated[int, typer.Option(min=1, help="Phantom scans in the batch.")] = 6,
    slices: Annotated[int, typer.Option(min=8, help="Slices per scan.")] = 48,
    size: Annotated[int, typer.Option(min=32, help="Slice size in pixels.")] = 128,
    seg: Annotated[Path | None, typer.Option(help="A trained segmentation run (default: one random-weight member, "
                                                  "width 4, 64 px).")] = None,
    dicom: Annotated[bool, typer.Option(help="The scans as DICOM series (predict then writes a DICOM-SEG too) "
                                             "instead of NIfTI files.")] = False,
    out: Annotated[Path | None, typer.Option(help="Folder to save bench_batch.md in.")] = None,
) -> None:
    """Cases per minute of 'predict --batch' with 1, 2 ... local jobs, in one run."""
    import tempfile

    from ..bench.scale import bench_batch
    from ..bench.seg import machine_line
    from ..markdown import markdown_table

    counts = number_list(jobs, "--jobs", 1)
    with tempfile.TemporaryDirectory(prefix="bonemet-bench-") as work:
        rows = bench_batch(Path(work), counts, cases, slices, size, seg, log=lambda m: typer.echo(m, err=True),
                           dicom=dicom)
    model = f"the run {seg}" if seg else "one random-weight hybrid-attunet++ member (width 4, 64 px)"
    kind = "DICOM series (DICOM-SEG written)" if dicom else "NIfTI files"
    text = (f"`bonemet predict --batch` on {cases} phantom scans of {slices} x {size} px as {kind}, {model}, on "
            f"{machine_line()}:\n\n" + markdown_table(rows))
    report(text, out, "bench_batch.md")


@app.command()
def device(
    device: Annotated[str, typer.Option(help="auto, cpu, cuda, cuda:N or mps.")] = "auto",
    model: Annotated[str, typer.Option(help="Segmentation model.")] = "hybrid-attunet++",
    size: Annotated[int, typer.Option(min=32)] = 224,
    width: Annotated[int, typer.Option(min=1)] = 32,
    batch_size: Annotated[int, typer.Option(min=1)] = 8,
    reps: Annotated[int, typer.Option(min=1, help="Timed repetitions (the median is kept).")] = 5,
    predict_slices: Annotated[int, typer.Option(min=0, help="Also time predict end to end on a phantom scan of "
                                                         "this many slices, per inference path (0: no).")] = 0,
    members: Annotated[int, typer.Option(min=1, help="Ensemble members for the predict timing.")] = 5,
    out: Annotated[Path | None, typer.Option(help="Folder to save bench_device.md in.")] = None,
) -> None:
    """Training images/s and inference slices/s on a device, fp32 and mixed precision, and the time the thesis'
    5-fold recipe (5 x 60 epochs x 1,200 slices) would take there; with --predict-slices, predict end to end per
    inference path."""
    from ..bench.scale import bench_device, bench_device_predict
    from ..bench.seg import machine_line
    from ..markdown import markdown_table

    log = partial(typer.echo, err=True)
    rows = bench_device(device, size, width, batch_size, reps, model, log=log)
    text = (f"{model}, width {width}, {size} px, batch {batch_size}, median of {reps}; host {machine_line()}:\n\n"
            + markdown_table(rows))
    if predict_slices:
        rows = bench_device_predict(device, predict_slices, members, size, width, model, log=log)
        text += (f"\n\n`predict` end to end (read, models, lesions, every output file; batch: predict's default) on "
                 f"a phantom scan of {predict_slices} slices, {members} random-weight members; each path timed on "
                 "its second call, its lesion probabilities against eager fp32's:\n\n" + markdown_table(rows))
    report(text, out, "bench_device.md")


def number_list(text: str, option: str, minimum: int) -> list[int]:
    """Comma-separated whole numbers of at least ``minimum`` (an option's value), or one clear error."""
    from ..errors import BonemetError

    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise BonemetError(f"{option} wants comma-separated numbers, got '{text}'") from None
    if not values or min(values) < minimum:
        raise BonemetError(f"{option} wants numbers of {minimum} or more, got '{text}'")
    return values


def report(text: str, out: Path | None, name: str) -> None:
    """A bench's Markdown on stdout, and saved as ``out/name`` when ``out`` is given."""
    typer.echo(text)
    if out is not None:
        from ..fileio import write_text

        write_text(out / name, text)
