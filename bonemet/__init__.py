"""bonemet: computer-aided diagnosis of bone metastases on CT.

The package reads like the pipeline: ``bonemet.data`` (readers, windows, splits, checks),
``bonemet.phantom`` (the synthetic CT used as embedded default data) and ``bonemet.cli``.
"""

__version__ = "0.1.0"
