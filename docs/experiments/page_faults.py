"""Page faults and system time of the default inference path: NOT part of bonemet.

Hybrid-AttUnet++ at width 32, 224 px, batch 2, random weights, on ``FastModel``'s default path: ``WARM`` passes,
then ``PASSES`` timed ones, with the minor page faults and the system CPU time per pass (``getrusage``). Run it
under different allocators or glibc settings, each in a fresh process, for example:

    python docs/experiments/page_faults.py 3 5
    MALLOC_MMAP_THRESHOLD_=1000000000 MALLOC_TRIM_THRESHOLD_=100000000000 python docs/experiments/page_faults.py
    LD_PRELOAD=/usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4 python docs/experiments/page_faults.py
    python docs/experiments/page_faults.py 0 30 --each     # every pass: when the faults stop
"""

import resource
import sys
import time

import torch

from bonemet.inference.fast import FastModel, default_paths
from bonemet.models import create_model


def main(warm: int = 3, passes: int = 5, each: bool = False) -> None:
    torch.manual_seed(0)
    fast = FastModel(create_model("hybrid-attunet++", width=32).eval(), default_paths())
    x = torch.rand(2, 3, 224, 224)
    with torch.inference_mode():
        for _ in range(warm):
            fast(x)
        r0, t0 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
        for i in range(passes):
            a, t = resource.getrusage(resource.RUSAGE_SELF).ru_minflt, time.perf_counter()
            fast(x)
            if each:
                print(f"pass {warm + i}: {1e3 * (time.perf_counter() - t):.0f} ms, "
                      f"{resource.getrusage(resource.RUSAGE_SELF).ru_minflt - a} faults")
        r1, dt = resource.getrusage(resource.RUSAGE_SELF), (time.perf_counter() - t0) / passes
    print(f"{1e3 * dt:.0f} ms a pass, {(r1.ru_minflt - r0.ru_minflt) / passes:.0f} minor faults a pass, "
          f"system {(r1.ru_stime - r0.ru_stime) / passes:.3f} s and user {(r1.ru_utime - r0.ru_utime) / passes:.3f} s "
          "of CPU a pass")


if __name__ == "__main__":
    nums = [int(a) for a in sys.argv[1:] if a.isdigit()]
    main(*nums[:2], each="--each" in sys.argv)
