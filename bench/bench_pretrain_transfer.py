"""Does pretraining help? The two miniature checks of the pretrain stage on the synthetic world.

    OMP_NUM_THREADS=1 python pretrain/run.py --config configs/pretrain/synthetic_tiny_dino.yaml
    python bench/bench_pretrain_transfer.py [--backbone results/pretrain/synthetic_tiny_dino/backbone.safetensors]
        [--seeds 0 1 2] [--jobs 2] [--skip-finetune]

(a) kNN ReID (``soliderkit.pretrain.knn``: pooled stage-4 features, Market-1501 protocol, no training)
    of the pretrained backbone vs randomly initialised backbones (one per seed, mean).
(b) The same short fine-tune (``configs/finetune/synthetic_tiny_transfer.yaml``, 30 epochs)
    from the pretrained backbone and from random init, for each seed; mAP / rank-1 at every
    validation epoch, the mean over seeds and the pretrained / random ratio.

Fine-tunes run as separate ``finetune/run.py`` processes, ``--jobs`` at a time with one
thread each; their folders go under ``--out`` (default ``results/bench/pretrain_transfer``)
and a summary is written to ``summary.json`` there. Both arms share every setting but
``model.pretrained_model_path`` and are measured in the same run.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch

from soliderkit.backbone import build_backbone
from soliderkit.io import atomic_write_json
from soliderkit.pretrain.knn import knn_reid, load_query_gallery

ROOT = Path(__file__).resolve().parent.parent
IMAGENET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))


def knn_scores(args, splits, checkpoint: str | None, seed: int) -> dict:
    torch.manual_seed(seed)
    backbone = build_backbone(args.arch, img_size=args.size, checkpoint=checkpoint, drop_path_rate=0.0)
    return knn_reid(backbone, splits, size=args.size, mean=IMAGENET[0], std=IMAGENET[1],
                    semantic_weight=args.semantic_weight)


def finetune(args, arm: str, seed: int) -> dict:
    out = Path(args.out) / f"{arm}_seed{seed}"
    pretrained = args.backbone[0] if arm == "pretrained" else "null"
    command = [sys.executable, str(ROOT / "finetune/run.py"), "--config", args.config, f"results_dir={out}",
               f"train.seed={seed}", f"model.pretrained_model_path={pretrained}", f"train.num_epochs={args.epochs}"]
    log = out.with_suffix(".log")
    log.parent.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    with open(log, "w") as stream:
        done = subprocess.run(command, cwd=ROOT, stdout=stream, stderr=subprocess.STDOUT,
                              env={**os.environ, "OMP_NUM_THREADS": "1"})
    if done.returncode != 0:
        raise SystemExit(f"fine-tune {arm} seed {seed} failed (exit {done.returncode}); see {log}")
    evals = [r for r in map(json.loads, (out / "train/log.jsonl").read_text().splitlines()) if "mAP" in r]
    return {"arm": arm, "seed": seed, "seconds": time.perf_counter() - started,
            "by_epoch": {r["epoch"]: {"mAP": r["mAP"], "rank1": r["rank1"]} for r in evals}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbone", nargs="+", default=["results/pretrain/synthetic_tiny_dino/backbone.safetensors"],
                        help="pretrained backbone(s) .safetensors written by pretrain/run.py, e.g. one per "
                             "pretraining seed; all are kNN-scored, the first is fine-tuned")
    parser.add_argument("--world", default="data/synthetic", help="Market-1501-layout synthetic world")
    parser.add_argument("--config", default="configs/finetune/synthetic_tiny_transfer.yaml")
    parser.add_argument("--arch", default="swin_pico_patch4_window7")
    parser.add_argument("--size", type=int, nargs=2, default=(128, 64), metavar=("H", "W"))
    parser.add_argument("--semantic-weight", type=float, default=0.0, help="λ of the kNN features")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=30, help="fine-tune budget of both arms")
    parser.add_argument("--jobs", type=int, default=2, help="fine-tunes run at once (one thread each)")
    parser.add_argument("--out", default="results/bench/pretrain_transfer")
    parser.add_argument("--skip-finetune", action="store_true", help="only the kNN check (a)")
    args = parser.parse_args()
    for path in args.backbone:
        if not Path(path).is_file():
            raise SystemExit(f"--backbone {path} does not exist; run "
                             "`python pretrain/run.py --config configs/pretrain/synthetic_tiny_dino.yaml` first")
    torch.set_num_threads(max(1, os.cpu_count() or 1))

    print(f"(a) kNN ReID on {args.world} at {args.size[0]}x{args.size[1]}, λ={args.semantic_weight}")
    splits = load_query_gallery(args.world)
    random_knn = [knn_scores(args, splits, None, s) for s in args.seeds]
    pretrained_knn = [knn_scores(args, splits, path, args.seeds[0]) for path in args.backbone]
    random_map = float(np.mean([r["mAP"] for r in random_knn]))
    pretrained_map = float(np.mean([r["mAP"] for r in pretrained_knn]))
    best_random = max(r["mAP"] for r in random_knn)
    print("| backbone | kNN mAP | kNN rank-1 |\n|---|---:|---:|")
    for seed, r in zip(args.seeds, random_knn):
        print(f"| random init (seed {seed}) | {r['mAP']:.2f} | {r['rank1']:.2f} |")
    print(f"| random init, mean | {random_map:.2f} | {np.mean([r['rank1'] for r in random_knn]):.2f} |")
    for path, r in zip(args.backbone, pretrained_knn):
        print(f"| pretrained ({path}) | {r['mAP']:.2f} | {r['rank1']:.2f} |")
    above = sum(r["mAP"] > best_random for r in pretrained_knn)
    print(f"pretrained / random kNN mAP (means): {pretrained_map / random_map:.2f}x; "
          f"{above} of {len(pretrained_knn)} pretrained backbone(s) above every random init")
    summary = {"knn": {"random": random_knn, "pretrained": pretrained_knn, "random_mean_mAP": random_map,
                       "pretrained_mean_mAP": pretrained_map, "pretrained_above_every_random": above},
               "backbone": args.backbone, "config": args.config, "epochs": args.epochs, "seeds": args.seeds}

    if not args.skip_finetune:
        jobs = [(arm, s) for s in args.seeds for arm in ("random", "pretrained")]
        print(f"\n(b) fine-tune {args.config}, {args.epochs} epochs, {len(jobs)} runs, {args.jobs} at a time")
        with ThreadPoolExecutor(max_workers=args.jobs) as pool:
            runs = list(pool.map(lambda job: finetune(args, *job), jobs))
        epochs = sorted(runs[0]["by_epoch"])
        print("| arm | seed | " + " | ".join(f"mAP @{e}" for e in epochs) + " | rank-1 (last) |")
        print("|---|---|" + "---:|" * (len(epochs) + 1))
        means = {}
        for arm in ("random", "pretrained"):
            mine = [r for r in runs if r["arm"] == arm]
            for r in mine:
                print(f"| {arm} | {r['seed']} | " + " | ".join(f"{r['by_epoch'][e]['mAP']:.1f}" for e in epochs)
                      + f" | {r['by_epoch'][epochs[-1]]['rank1']:.1f} |")
            means[arm] = {e: float(np.mean([r["by_epoch"][e]["mAP"] for r in mine])) for e in epochs}
            rank1 = float(np.mean([r["by_epoch"][epochs[-1]]["rank1"] for r in mine]))
            print(f"| {arm} | mean | " + " | ".join(f"{means[arm][e]:.1f}" for e in epochs) + f" | {rank1:.1f} |")
        last_map = {(r["arm"], r["seed"]): r["by_epoch"][epochs[-1]]["mAP"] for r in runs}
        wins = sum(last_map["pretrained", s] > last_map["random", s] for s in args.seeds)
        print(f"pretrained / random fine-tune mAP after {epochs[-1]} epochs: "
              f"{means['pretrained'][epochs[-1]] / means['random'][epochs[-1]]:.2f}x "
              f"(pretrained ahead in {wins} of {len(args.seeds)} seeds)")
        summary.update(finetune=runs, finetune_mean_mAP=means)
    atomic_write_json(Path(args.out) / "summary.json", summary)


if __name__ == "__main__":
    main()
