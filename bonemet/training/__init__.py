"""Training: augmentation, schedules, checkpoints, and the segmentation trainer."""
