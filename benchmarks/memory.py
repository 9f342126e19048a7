"""Peak memory of vae_digits SVI: the zoo engine against the hand-written PyTorch loop.

Each variant trains in a fresh Python process (peak resident memory cannot be reset inside
one); a process that only imports everything and loads the data is the baseline, and each
row reports its peak above that baseline.

Run alone with ``python -m benchmarks.memory [--quick]``.
"""

from __future__ import annotations

import subprocess
import sys

VARIANTS = ("baseline", "hand", "trace", "jit")

_CHILD = """
import re, torch
torch.set_num_threads(1)
from benchmarks.vae_step import _split, hand_run, zoo_run
train, _ = _split()
variant, steps = {variant!r}, {steps}
if variant == "hand":
    hand_run(train, steps, 0)
elif variant != "baseline":
    zoo_run(train, steps, 0, variant)
# VmHWM: this process's own peak (ru_maxrss would keep the parent's peak across exec)
print(re.search(r"VmHWM:\\s+(\\d+) kB", open("/proc/self/status").read()).group(1))
"""


def peak_mb(variant: str, steps: int) -> float:
    code = _CHILD.format(variant=variant, steps=steps)
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True)
    return int(out.stdout.strip().splitlines()[-1]) / 1024.0  # kB -> MiB


def run(quick: bool = False) -> dict:
    steps = 50 if quick else 300
    peaks = {variant: peak_mb(variant, steps) for variant in VARIANTS}
    base = peaks["baseline"]
    hand = peaks["hand"] - base
    names = {
        "hand": "hand-written PyTorch",
        "trace": "zoo fit, elbo=trace",
        "jit": "zoo fit, elbo=jit (auto)",
    }
    rows = [
        {
            "variant": names[v],
            "peak above baseline (MiB)": round(peaks[v] - base, 1),
            "ratio to hand": round((peaks[v] - base) / hand, 2) if hand > 0 else "n/a",
        }
        for v in VARIANTS[1:]
    ]
    return {
        "title": "vae_digits SVI peak memory (batch 128, fresh process per variant)",
        "notes": f"{steps} steps; baseline process (imports and data only): {base:.0f} MiB.",
        "rows": rows,
    }


if __name__ == "__main__":
    from benchmarks import run_standalone

    run_standalone(run, __doc__)
