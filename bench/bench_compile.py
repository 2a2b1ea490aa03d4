"""torch.compile against eager for one training step of each stage, measured back to back.

    python bench/bench_compile.py [--stages finetune pretrain] [--arch pico|T|B] [--dtype no]
                                  [--rounds 5] [--steps 2] [--threads 2] [--device cpu]

Each stage's step is built twice from the same seed by ``bench/gpu_check.py`` (the loops' own
``train_step`` / ``train_one_step`` on random inputs; ``--arch pico``: the tiny sizes of
``gpu_check.py --quick``): once eager, once with ``train.compile``'s ``torch.compile``. The
compiled step's first call (the compilation; inductor with the system C++ compiler on the CPU) is
timed apart; then rounds alternate ``--steps`` eager and ``--steps`` compiled steps, in both
orders, so drift of a shared machine hits both. Printed: the compile time, the median step time of
each, the speed-up, and the two steps' losses.
"""
from __future__ import annotations

import argparse
import importlib.util
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]


def load_gpu_check():
    name = "bench_compile_gpu_check"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, ROOT / "bench/gpu_check.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stages", nargs="+", choices=("finetune", "pretrain"), default=("finetune", "pretrain"))
    parser.add_argument("--arch", choices=("pico", "T", "B"), default="pico",
                        help="pico: the tiny sizes of gpu_check --quick; T / B: the presets' sizes")
    parser.add_argument("--dtype", choices=("no", "bf16", "fp16"), default="no", help="train.mixed_precision")
    parser.add_argument("--mode", default="default", help="torch.compile mode")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=2, help="steps of each variant per round")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)
    if args.rounds < 1 or args.steps < 1:
        parser.error("--rounds and --steps must be at least 1")
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    check = load_gpu_check()
    quick = args.arch == "pico"
    print(f"torch.compile (mode {args.mode}) vs eager, {args.arch} ({'tiny sizes' if quick else 'preset sizes'}), "
          f"{args.dtype}, {args.device}, {args.threads} thread(s); median over {args.rounds} rounds of {args.steps} steps")
    print(f"{'stage':<10}{'compile s':>11}{'eager ms':>10}{'compiled ms':>13}{'speed-up':>10}"
          f"{'eager loss':>12}{'compiled loss':>15}")
    for stage in args.stages:
        make = check.make_finetune_step if stage == "finetune" else check.make_pretrain_step
        built = {compiled: make(args.arch, args.dtype, compiled, device, quick=quick, compile_mode=args.mode)
                 for compiled in (False, True)}
        try:
            losses = {}
            seconds = {}
            for compiled in (False, True):  # first calls: the compilation, the eager warm-up
                torch.manual_seed(0)
                start = time.perf_counter()
                built[compiled].step()
                check.synchronize(device)
                seconds[compiled] = time.perf_counter() - start
                losses[compiled] = built[compiled].loss()
            times: dict[bool, list[float]] = {False: [], True: []}
            for round_index in range(args.rounds):
                for compiled in ((False, True) if round_index % 2 == 0 else (True, False)):
                    start = time.perf_counter()
                    for _ in range(args.steps):
                        built[compiled].step()
                    check.synchronize(device)
                    times[compiled].append((time.perf_counter() - start) / args.steps)
        finally:
            for compiled in (True, False):
                built[compiled].restore()
        eager, compiled = statistics.median(times[False]), statistics.median(times[True])
        print(f"{stage:<10}{seconds[True]:>11.1f}{eager * 1000:>10.1f}{compiled * 1000:>13.1f}"
              f"{eager / compiled:>9.2f}x{losses[False]:>12.6f}{losses[True]:>15.6f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
