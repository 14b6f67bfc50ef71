"""bonemet: computer-aided diagnosis of bone metastases on CT.

The package reads like the pipeline: ``bonemet.data`` (readers, windows, splits, checks),
``bonemet.phantom`` (the synthetic CT used as embedded default data) and ``bonemet.cli``.
"""

__version__ = "0.1.0"


def predict(input, seg=None, out=None, *, affine=None, cls=None, threshold: float = 0.5, device: str = "auto",
            probabilities: bool = False, overwrite: bool = False, **options):
    """The CAD pipeline on one scan, in memory: ``bonemet.predict(input)`` (the bundled default model) or
    ``bonemet.predict(input, seg=RUN)``.

    Args:
        input: a path (DICOM series folder or DICOMDIR, NIfTI file, folder of PNG / JPEG slices), a nibabel image,
            or a 3D array of HU with its voxel-to-RAS ``affine``.
        seg: a segmentation run folder (``bonemet seg train`` or ``seg distill``); None: the bundled default model
            (``bonemet models``, checked against its SHA-256 manifest). ``cls``: a classification run.
        out: also write what ``bonemet predict`` writes (masks, DICOM-SEG, tables, report) into this folder.
        probabilities: keep the probability maps in the result (and write them with ``out``).
        options: further fields of :class:`bonemet.inference.predict.PredictOptions` (``window``, ``batch_size``,
            ``min_volume_ml``, ``paths``...).

    Returns:
        a :class:`bonemet.inference.predict.Prediction`: ``verdict``, ``probability``, ``lesions``, ``lesion_mask``
        and ``bone_mask`` on the canonical grid, ``native_masks()`` in the input's own orientation, ``summary``.
    """
    from pathlib import Path

    from .inference.predict import PredictOptions, Predictor, write_prediction
    from .inference.scan import as_scan

    opts = PredictOptions(seg=None if seg is None else Path(seg), cls=None if cls is None else Path(cls),
                          threshold=threshold, device=device,
                          probabilities=probabilities, overwrite=overwrite, **options)
    predictor = Predictor(opts)
    if out is not None and isinstance(input, (str, Path)):
        return predictor.predict(input, out)
    pred = predictor.analyse(as_scan(input, affine, opts.series_uid))
    if out is not None:
        from .fileio import atomic_dir

        with atomic_dir(out, overwrite=overwrite, kind="predict", protect=[opts.seg, cls]) as tmp:
            write_prediction(tmp, pred, opts)
    return pred
