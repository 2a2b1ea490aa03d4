"""Peak memory of one training forward + backward with and without gradient checkpointing.

    python bench/bench_grad_checkpointing.py [--arch swin_base_patch4_window7_224] [--size 256 128]
                                             [--batch 8] [--repeats 2] [--threads 2]

``model.grad_checkpointing`` (both stages) recomputes each Swin stage's blocks during backward
instead of keeping their activations. Each measurement runs in a fresh interpreter (Linux): the
peak RSS (``VmHWM``) is reset after the model is built, so the peak is that of the step; on and off
alternate. Printed per setting: the median peak RSS of the step, the part of it above the RSS
right after the model was built (activations, gradients, the allocator's working set), the step
time, and the ratios on / off.
"""
from __future__ import annotations

import json
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from soliderkit.benchmarking import backbone_bench_parser, parse_bench_args  # noqa: E402

CHILD = r"""
import json, sys, time
import torch
sys.path.insert(0, {root!r})
from soliderkit.backbone import build_backbone

def status(key):
    for line in open("/proc/self/status"):
        if line.startswith(key + ":"):
            return int(line.split()[1])

torch.set_num_threads({threads})
torch.manual_seed(0)
model = build_backbone({arch!r}, img_size={size!r}, grad_checkpointing={on!r}).train()
images = torch.randn({batch}, 3, *{size!r})
with open("/proc/self/clear_refs", "w") as f:  # reset the high-water mark (VmHWM) left by the imports
    f.write("5")
built = status("VmRSS")
start = time.perf_counter()
model(images, semantic_weight=0.2).pooled.sum().backward()
print(json.dumps({{"peak_kib": status("VmHWM"), "built_kib": built, "seconds": time.perf_counter() - start}}))
"""


def measure(args, on: bool) -> dict:
    code = CHILD.format(root=str(ROOT), threads=args.threads, arch=args.arch, size=tuple(args.size), on=on,
                        batch=args.batch)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"measurement failed:\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    parser = backbone_bench_parser(__doc__.splitlines()[0], arch="swin_base_patch4_window7_224", size=(256, 128),
                                   batch=8, repeats=2, repeats_help="fresh interpreters per setting", device=False)
    args = parse_bench_args(parser, argv)

    runs: dict[bool, list[dict]] = {False: [], True: []}
    for round_index in range(args.repeats):
        for on in ((False, True) if round_index % 2 == 0 else (True, False)):
            runs[on].append(measure(args, on))

    def median(on: bool, key: str) -> float:
        return statistics.median(r[key] for r in runs[on])

    def above(on: bool) -> float:
        return statistics.median(r["peak_kib"] - r["built_kib"] for r in runs[on])

    print(f"{args.arch} at {args.size[0]}x{args.size[1]}, batch {args.batch}, CPU, {args.threads} thread(s), "
          f"forward + backward, median of {args.repeats} fresh process(es)")
    print(f"{'grad checkpointing':<20}{'peak RSS MiB':>14}{'above model MiB':>17}{'seconds':>10}")
    for on in (False, True):
        print(f"{'on' if on else 'off':<20}{median(on, 'peak_kib') / 1024:>14.0f}{above(on) / 1024:>17.0f}"
              f"{median(on, 'seconds'):>10.2f}")
    print(f"on / off: peak RSS {median(True, 'peak_kib') / median(False, 'peak_kib'):.3f}, "
          f"above the model {above(True) / max(above(False), 1):.3f}, "
          f"time {median(True, 'seconds') / median(False, 'seconds'):.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
