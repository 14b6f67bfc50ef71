"""The thesis' published numbers, to set bonemet's own beside (BM-Seg, slice-level 5-fold; its classification data).

Values are percentages as printed in the thesis. Where the thesis prints specificity and sensitivity swapped for
a row, they are given here in the only order that fits its other numbers.
"""

from __future__ import annotations

SEG_METRICS = ("F1", "Dice", "IoU", "Acc", "Spec", "Sens", "Prec")

# Tables 4.1 (U-Net family), 4.2 (sequential models) and the MB row of 4.4; None where the thesis gives no value
SEG_TABLE: dict[str, tuple[float | None, ...]] = {
    "Unet": (79.46, 72.26, 65.93, 98.91, 99.46, 78.75, 80.22),
    "AttUnet": (79.41, 71.76, 65.86, 98.90, 99.44, 79.20, 79.64),
    "Unet++": (79.74, 71.99, 66.31, 98.92, 99.46, 79.41, 80.16),
    "AttUnet++ (plain block)": (68.78, 58.74, 52.47, 98.29, 99.06, 70.23, 67.36),
    "AttUnet++ + MB": (80.27, 72.63, 67.06, None, None, None, None),
    "Hybrid-AttUnet++": (82.27, 75.70, 69.89, 99.05, 99.53, 81.88, 82.68),
    "EH-AttUnet++": (83.67, 77.05, 71.92, 99.13, 99.59, 82.68, 84.68),
    "Sequential (Unet, AttUnet)": (77.41, 66.88, 63.16, 98.83, 99.50, 74.54, 80.63),
    "Sequential (Unet, Unet++)": (77.54, 67.75, 63.32, 98.83, 99.49, 75.14, 80.12),
    "Sequential (Unet, AttUnet++)": (77.73, 68.60, 63.58, 98.83, 99.45, 76.33, 79.24),
}

# Table 4.3: lesion F1 of each fold, folds 1-5
PER_FOLD_F1: dict[str, tuple[float, ...]] = {
    "Unet": (80.41, 77.52, 79.27, 80.65, 79.44),
    "AttUnet": (79.17, 77.79, 79.04, 80.63, 80.39),
    "Unet++": (80.12, 80.21, 78.44, 80.27, 79.67),
    "AttUnet++ (plain block)": (70.34, 65.99, 68.65, 72.59, 66.32),
    "EH-AttUnet++": (84.19, 83.49, 83.00, 83.96, 83.69),
}

# Table 4.4: the ablation, as (modified block, dual decoders, ensemble) -> the row's model
ABLATION = [((False, False, False), "AttUnet++ (plain block)"), ((True, False, False), "AttUnet++ + MB"),
            ((True, True, False), "Hybrid-AttUnet++"), ((True, True, True), "EH-AttUnet++")]

CLS_METRICS = ("Accuracy", "F1", "Recall", "Precision")

# Tables 5.1 / 5.2 (the thesis' own classification data; its Inception-v3 row is inconsistent: that recall and
# precision give an F1 of 60.2)
CLS_TABLE: dict[str, tuple[float, float, float, float]] = {
    "resnext50_32x4d": (81.81, 80.08, 92.32, 70.69),
    "densenet201": (80.18, 77.60, 93.35, 66.39),
    "efficientnet_b0": (79.90, 77.07, 93.92, 65.34),
    "inception_v3": (80.96, 79.34, 90.37, 45.17),
    "vit_small_patch16_224": (79.36, 78.47, 85.16, 72.76),
    "vit_tiny_patch16_224": (86.94, 86.57, 92.44, 81.40),
    "deit_small_patch16_224": (73.07, 67.82, 88.75, 54.88),
    "deit_tiny_patch16_224": (70.09, 62.79, 88.03, 48.80),
    "fusion": (88.41, 87.65, 79.55, 97.59),
}
