"""Run folders: what a trained run is and how it is read back (configurations, members, checkpoints, names).

``runs.seg`` and ``runs.cls`` own a segmentation and a classification run; ``runs.checkpoint`` the checkpoint files
(atomic save, safe load). Training writes runs; evaluation, prediction and the benches read them only through here.
"""
