"""Embeddings per second on CPU: ONNX Runtime against PyTorch eager, same model, same threads.

For each model (default: the pico Swin used by the tests and Swin-T, both at 256x128 with
the model-card head: reduction to 256 + BNNeck, random weights) the ReID model is exported
with ``soliderkit.finetune.export.export_onnx`` (the graph ``finetune/export.py`` writes), both runtimes
are warmed up, then each runs ``--batch``-image forwards for at least ``--seconds`` (and at
least ``--min-iters`` times); the table gives embeddings/s and the speed-up, plus the max
abs difference between the two outputs on the timed batch.

    .venv/bin/python bench/bench_onnx.py                       # pico + Swin-T, batch 8, all cores
    .venv/bin/python bench/bench_onnx.py --threads 1 --models swin_tiny_patch4_window7_224
    .venv/bin/python bench/bench_onnx.py --padded-windows      # the graph with SOLIDER's padded windows

``--padded-windows`` exports (and runs in PyTorch) the attention over SOLIDER's padded windows
instead of over the real tokens (``set_window_packing(False)``; the same function, a different
graph), to compare the two graphs' speed in a runtime.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from soliderkit.backbone.swin import set_window_packing  # noqa: E402
from soliderkit.finetune.config import ModelConfig  # noqa: E402
from soliderkit.finetune.export import INPUT_NAME, OUTPUT_NAME, export_onnx  # noqa: E402
from soliderkit.finetune.model import build_reid_model  # noqa: E402

MODELS = ("swin_pico_patch4_window7", "swin_tiny_patch4_window7_224")


def timed(run, seconds: float, min_iters: int) -> tuple[float, int]:
    run()  # warm-up (allocations, ORT's first-run graph work)
    run()
    iters, start = 0, time.perf_counter()
    while iters < min_iters or time.perf_counter() - start < seconds:
        run()
        iters += 1
    return time.perf_counter() - start, iters


def bench(arch: str, args) -> dict:
    import onnxruntime as ort

    torch.manual_seed(0)
    cfg = ModelConfig(backbone=arch, input_height=args.height, input_width=args.width, reduce_feat_dim=True,
                      feat_dim=256, pretrained_model_path=None)
    model = build_reid_model(cfg, num_classes=751).eval()
    set_window_packing(model, not args.padded_windows)
    images = torch.randn(args.batch, 3, args.height, args.width)
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "model.onnx")
        export_onnx(model, path, input_size=(args.height, args.width))
        options = ort.SessionOptions()
        options.intra_op_num_threads = args.threads
        options.inter_op_num_threads = 1
        session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
        feed = {INPUT_NAME: images.numpy()}

        def run_ort():
            return session.run([OUTPUT_NAME], feed)[0]

        def run_torch():
            with torch.inference_mode():
                return model(images)

        ort_s, ort_n = timed(run_ort, args.seconds, args.min_iters)
        torch_s, torch_n = timed(run_torch, args.seconds, args.min_iters)
        diff = float(np.abs(run_ort() - run_torch().numpy()).max())
    params = sum(p.numel() for p in model.parameters()) / 1e6
    return {"arch": arch, "params": params, "ort": ort_n * args.batch / ort_s,
            "torch": torch_n * args.batch / torch_s, "diff": diff}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=list(MODELS), help="backbone archs to measure")
    parser.add_argument("--batch", type=int, default=8, help="images per forward")
    parser.add_argument("--height", type=int, default=256)
    parser.add_argument("--width", type=int, default=128)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(),
                        help="intra-op threads for both runtimes (default: torch's default)")
    parser.add_argument("--seconds", type=float, default=5.0, help="minimum timed seconds per runtime")
    parser.add_argument("--min-iters", type=int, default=3, help="minimum timed forwards per runtime")
    parser.add_argument("--padded-windows", action="store_true",
                        help="attention over SOLIDER's padded windows instead of the real tokens only")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    print(f"CPU: {os.cpu_count()} logical cores, {args.threads} threads; batch {args.batch}, "
          f"{args.height}x{args.width}; torch {torch.__version__}; "
          f"attention over {'padded windows' if args.padded_windows else 'the real tokens'}")
    print(f"{'model':<30} {'params (M)':>10} {'PyTorch emb/s':>14} {'ORT emb/s':>10} {'speed-up':>9} {'max|diff|':>10}")
    for arch in args.models:
        r = bench(arch, args)
        print(f"{r['arch']:<30} {r['params']:>10.2f} {r['torch']:>14.1f} {r['ort']:>10.1f} "
              f"{r['ort'] / r['torch']:>8.2f}x {r['diff']:>10.2e}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
