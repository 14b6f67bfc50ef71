"""Does a member mark lesions by silencing its lesion decoder? NOT part of bonemet.

The lesion head is a 1x1 convolution over the last node's features, which come out of ReLUs (zero or more): where all
of them are zero the lesion logit is the head's bias, and with every other head weight negative that bias is the
most the member can give. For each member of ``RUN``: the build's first copy of background ``I`` (6 lesions, seed
100, as ``models build`` makes it) is segmented in eager fp32, and hooks read the last lesion node's features and the
lesion logits of every window: the head's bias, the largest logit above it, how many pixels reach 0.5, and how many
of those have all features zero.

    python docs/experiments/silent_lesions.py RUN I [BUILD]     # about 20 s a member
    python docs/experiments/silent_lesions.py runs/default-model/work/all/seg 1
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import torch

from bonemet.inference.runners import SegRunner
from bonemet.inference.scan import read_scan
from bonemet.markdown import markdown_table
from bonemet.phantom.synth import synthesize_from_ct
from bonemet.recipe import recipe_of


def main(run: Path, background: int, build: Path) -> None:
    ct, bone = recipe_of(build).backgrounds[background]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        synthesize_from_ct(ct, bone, Path(tmp) / "v", lesions=6, seed=100, formats=("volumes",), patient="B")
        scan = read_scan(Path(tmp) / "v" / "volumes" / "B" / "ct.nii.gz")
        k = 0
        while (run / f"fold{k}").exists():
            runner = SegRunner(run, members=[k], paths=())  # eager fp32: the member's own arithmetic
            model = runner.models[0]
            feats: list[torch.Tensor] = []
            logits: list[torch.Tensor] = []
            hooks = [model.nodes["0_4"][0].register_forward_hook(lambda m, i, o: feats.append(o.detach())),
                     model.heads[0].register_forward_hook(lambda m, i, o: logits.append(o.detach()))]
            runner.predict(scan)
            for h in hooks:
                h.remove()
            silent = torch.cat(feats).amax(1) == 0
            z = torch.cat(logits)[:, 0]
            bias = model.heads[0].bias.item()
            w = model.heads[0].weight.flatten()
            high = z >= 0
            rows.append({"member": k, "head bias": f"{bias:+.2e}",
                         "positive head weights": f"{int((w > 0).sum())}/{w.numel()}",
                         "largest logit - bias": f"{float(z.max()) - bias:+.3f}", "pixels >= 0.5": int(high.sum()),
                         "of them all features zero": int((high & silent).sum())})
            k += 1
    print(markdown_table(rows))


if __name__ == "__main__":
    a = sys.argv[1:]
    main(Path(a[0]), int(a[1]), Path(a[2]) if len(a) > 2 else Path("runs/default-model"))
