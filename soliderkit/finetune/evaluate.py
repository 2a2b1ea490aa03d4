"""Evaluate a fine-tuned ReID model, or the colour-histogram baseline, on a query / gallery pair.

    python finetune/evaluate.py --config configs/finetune/synthetic_tiny.yaml \\
        --checkpoint results/finetune/synthetic_tiny/train/model.safetensors [--flip] [--re-ranking]
    python finetune/evaluate.py --model color-histogram --query data/synthetic/query \\
        --gallery data/synthetic/bounding_box_test          # no training, no config needed

The config is the same TAO ReIdentificationNet spec as training; its ``evaluate`` section is
honoured: ``checkpoint`` (``--checkpoint``), ``query_dataset`` / ``test_dataset`` (``--query`` /
``--gallery``; default ``dataset.query_dataset_dir`` / ``dataset.test_dataset_dir``),
``results_dir`` (default ``<results_dir>/evaluate``, ``<results_dir>/evaluate_color_histogram``
for the baseline), ``output_cmc_curve_plot`` and ``output_sampled_matches_plot`` (default
``cmc_curve.png`` / ``sampled_matches.png`` in the results folder). The input size comes from
the checkpoint's own model config; pixel mean / std, batch size and workers from ``dataset``;
flip averaging from ``model.with_flip_feature`` (``--flip`` / ``--no-flip``); re-ranking from
``re_ranking`` (``--re-ranking``); the CMC curve runs to ``max(re_ranking.max_rank, 10)``.

Metrics follow the Market-1501 protocol (``soliderkit.reid.metrics``): learned embeddings are
compared by squared euclidean distance after L2 normalisation, colour histograms by cosine
distance. The plain ranking is always reported; the k-reciprocal re-ranked one as well when
enabled. Prints a table, and writes ``metrics.json`` (percent), ``config.yaml`` and the two PNGs.
"""
from __future__ import annotations

import argparse
import random
import sys
from collections import defaultdict
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from soliderkit.backbone import CheckpointError
from soliderkit.config import parse_config_from_args, save_resolved_config
from soliderkit.finetune.config import FinetuneConfig, ModelConfig
from soliderkit.finetune.model import load_reid_model
from soliderkit.io import atomic_write_json
from soliderkit.reid.color_histogram import color_histogram_features
from soliderkit.reid.datasets import DISTRACTOR_PID, DatasetError, ImageRecord, parse_msmt17, read_market_folder
from soliderkit.reid.evaluation import evaluate_features, extract_embeddings, ranked_gallery
from soliderkit.reid.metrics import RankingResult
from soliderkit.reid.plots import RANKING_LABELS, save_cmc_curve, save_ranked_grid

MODELS = ("reid", "color-histogram")
TOP_K = 10


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python finetune/evaluate.py", description=__doc__.splitlines()[0])
    parser.add_argument("--config", metavar="PATH",
                        help="YAML experiment spec (optional: defaults plus the flags below otherwise)")
    parser.add_argument("--model", choices=MODELS, default="reid",
                        help="'reid': a fine-tuned checkpoint (default); 'color-histogram': the "
                             "no-training baseline, needs no checkpoint")
    parser.add_argument("--checkpoint", metavar="PATH",
                        help="model.safetensors written by finetune/run.py (or its folder); "
                             "overrides evaluate.checkpoint")
    parser.add_argument("--query", metavar="DIR", help="query folder; overrides evaluate.query_dataset")
    parser.add_argument("--gallery", metavar="DIR", help="gallery folder; overrides evaluate.test_dataset")
    parser.add_argument("--flip", action=argparse.BooleanOptionalAction, default=None,
                        help="average each embedding with its mirror image's (model.with_flip_feature)")
    parser.add_argument("--re-ranking", action="store_true",
                        help="also report k-reciprocal re-ranking (as re_ranking.re_ranking=true)")
    parser.add_argument("--num-samples", type=int, default=8, metavar="N",
                        help="queries shown in the ranked-results grid (default %(default)s; 0 = no grid)")
    parser.add_argument("--seed", type=int, default=0, help="seed for sampling those queries (default %(default)s)")
    parser.add_argument("--allow-partial", action="store_true",
                        help="load a checkpoint whose keys do not all match (they are listed)")
    parser.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    parser.add_argument("--dry-run", action="store_true",
                        help="check the config, checkpoint and folders, print what would run, and exit")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                        help="dotted config overrides parsed as YAML, e.g. re_ranking.k1=10 "
                             "evaluate.results_dir=results/eval")
    args = parser.parse_intermixed_args(argv)  # overrides may come before or after the flags
    if args.num_samples < 0:
        parser.error(f"argument --num-samples: must be >= 0 (got {args.num_samples})")
    return args


# --- what to evaluate ----------------------------------------------------------------------------

def apply_flags(cfg: FinetuneConfig, args: argparse.Namespace) -> None:
    """Command-line flags win over the config (so the saved config.yaml says what ran)."""
    if args.checkpoint is not None:
        cfg.evaluate.checkpoint = args.checkpoint
    if args.query is not None:
        cfg.evaluate.query_dataset = args.query
    if args.gallery is not None:
        cfg.evaluate.test_dataset = args.gallery
    if args.flip is not None:
        cfg.model.with_flip_feature = args.flip
    if args.re_ranking:
        cfg.re_ranking.re_ranking = True


def results_dir(cfg: FinetuneConfig, model: str) -> Path:
    if cfg.evaluate.results_dir:
        return Path(cfg.evaluate.results_dir)
    return Path(cfg.results_dir) / ("evaluate" if model == "reid" else "evaluate_color_histogram")


def load_query_gallery(cfg: FinetuneConfig) -> tuple[list[ImageRecord], list[ImageRecord]]:
    """Query and gallery records: the ``evaluate`` folders, else the ``dataset`` ones (or the
    MSMT17 release lists when ``dataset.dataset_kind`` is msmt17 and no folder is named)."""
    ev, ds = cfg.evaluate, cfg.dataset
    if ds.dataset_kind == "msmt17" and ev.query_dataset is None and ev.test_dataset is None:
        if not isinstance(ds.train_dataset_dir, str):
            raise SystemExit("config error: dataset_kind=msmt17 needs dataset.train_dataset_dir "
                             "(the MSMT17 release folder) or evaluate.query_dataset / evaluate.test_dataset")
        try:
            splits = parse_msmt17(ds.train_dataset_dir)
        except DatasetError as exc:
            raise SystemExit(f"dataset.train_dataset_dir (msmt17): {exc}") from None
        return splits.query, splits.gallery
    folders = {}
    for split, key, fallback, flag in (("query", "query_dataset", "query_dataset_dir", "--query"),
                                       ("gallery", "test_dataset", "test_dataset_dir", "--gallery")):
        folder, origin = getattr(ev, key), f"evaluate.{key}"
        if folder is None:
            folder, origin = getattr(ds, fallback), f"dataset.{fallback}"
        if folder is None:
            raise SystemExit(f"config error: no {split} folder: pass {flag} DIR or set evaluate.{key} "
                             f"or dataset.{fallback}")
        try:
            folders[split] = read_market_folder(folder, source=Path(folder).name)
        except DatasetError as exc:
            raise SystemExit(f"{split} folder ({origin}): {exc}") from None
    query = [r for r in folders["query"] if r.pid != DISTRACTOR_PID]
    if len(query) < len(folders["query"]):
        print(f"note: {len(folders['query']) - len(query)} distractor image(s) (pid {DISTRACTOR_PID}) "
              "left out of the query set")
    if not query:
        raise SystemExit("the query folder holds no usable query images (only junk / distractors)")
    return query, folders["gallery"]


def resolve_checkpoint(path: str | None) -> Path:
    if path is None:
        raise SystemExit("no checkpoint: pass --checkpoint PATH (a model.safetensors written by "
                         "finetune/run.py) or set evaluate.checkpoint, or use --model color-histogram")
    path = Path(path)
    if path.is_dir() and (path / "model.safetensors").is_file():
        path = path / "model.safetensors"
    if not path.is_file():
        raise SystemExit(f"checkpoint not found: {path}")
    return path


# --- features ------------------------------------------------------------------------------------

def load_model(checkpoint: Path, device: torch.device, model_cfg: ModelConfig,
               allow_partial: bool = False) -> tuple[torch.nn.Module, ModelConfig]:
    """A toolkit model.safetensors rebuilds itself; SOLIDER-REID / TAO files use the config's model section."""
    try:
        model, model_cfg, _ = load_reid_model(checkpoint, model_cfg, allow_partial=allow_partial)
    except CheckpointError as exc:
        raise SystemExit(f"checkpoint: {exc}") from None
    return model.to(device), model_cfg


def model_features(model: torch.nn.Module, model_cfg: ModelConfig, cfg: FinetuneConfig, query, gallery,
                   device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """(query, gallery) embeddings, at the checkpoint's own input size."""
    kwargs = dict(size=(model_cfg.input_height, model_cfg.input_width), mean=cfg.dataset.pixel_mean,
                  std=cfg.dataset.pixel_std, batch_size=cfg.dataset.val_batch_size, device=device,
                  flip=cfg.model.with_flip_feature, num_workers=cfg.dataset.num_workers)
    return (extract_embeddings(model, query, desc="query", **kwargs),
            extract_embeddings(model, gallery, desc="gallery", **kwargs))


def histogram_features(records: Sequence[ImageRecord], batch: int, desc: str) -> np.ndarray:
    chunks = [color_histogram_features([r.path for r in records[i:i + batch]])
              for i in tqdm(range(0, len(records), batch), desc=desc, leave=False)]
    return np.concatenate(chunks)


# --- reporting -----------------------------------------------------------------------------------

def format_table(results: dict[str, RankingResult]) -> str:
    """Markdown table in percent, one row per ranking: mAP, rank-1/5/10, mINP."""
    columns = [("mAP", "mAP"), ("rank-1", "rank1"), ("rank-5", "rank5"), ("rank-10", "rank10"), ("mINP", "mINP")]
    lines = ["| ranking   | " + " | ".join(f"{name:>7}" for name, _ in columns) + " |",
             "|-----------|" + "|".join("-" * 8 + ":" for _ in columns) + "|"]
    for name, result in results.items():
        percent = result.as_percent_dict()
        cells = [f"{percent[key]:7.2f}" if key in percent else f"{'-':>7}" for _, key in columns]
        lines.append(f"| {RANKING_LABELS[name]:<9} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def sample_queries(query: Sequence[ImageRecord], gallery: Sequence[ImageRecord], count: int, seed: int) -> list[int]:
    """``count`` query indices (sorted), drawn among queries that have a true match in the
    gallery under another camera (the ones the metrics count)."""
    cameras = defaultdict(set)
    for g in gallery:
        cameras[g.pid].add(g.camid)
    valid = [i for i, q in enumerate(query) if cameras[q.pid] - {q.camid}]
    return sorted(random.Random(seed).sample(valid, min(count, len(valid))))


def save_sampled_matches(path: Path, dist_rows: np.ndarray, ranking: str, samples: list[int],
                         query: Sequence[ImageRecord], gallery: Sequence[ImageRecord], name: str) -> None:
    """The ranked-results grid of the sampled queries (``dist_rows``: their distance rows)."""
    shown = [query[i] for i in samples]
    ranked = ranked_gallery(dist_rows, [q.pid for q in shown], [q.camid for q in shown],
                            [g.pid for g in gallery], [g.camid for g in gallery], TOP_K)
    title = (f"{name}: top-{TOP_K} gallery matches of {len(shown)} sampled queries ({ranking} ranking)\n"
             "green = same identity, red = other identity or distractor; the query identity's images "
             "from the query camera are left out (Market-1501 protocol)")
    save_ranked_grid(path, shown, [[gallery[j] for j in r] for r in ranked], title, top_k=TOP_K)


def metrics_record(results: dict[str, RankingResult], **fields) -> dict:
    """metrics.json: the plain metrics at top level (as training writes them), re-ranked below."""
    plain = results["plain"]
    record = {**fields, **plain.as_percent_dict(), "num_valid_queries": plain.num_valid_queries,
              "num_skipped_queries": plain.num_skipped_queries}
    if "re_ranked" in results:
        record["re_ranked"] = results["re_ranked"].as_percent_dict()
    return record


# --- main ----------------------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    cfg = parse_config_from_args(FinetuneConfig, args)
    apply_flags(cfg, args)
    out_dir = results_dir(cfg, args.model)
    cmc_path = Path(cfg.evaluate.output_cmc_curve_plot or out_dir / "cmc_curve.png")
    grid_path = Path(cfg.evaluate.output_sampled_matches_plot or out_dir / "sampled_matches.png")
    rr = cfg.re_ranking
    re_ranking = {"k1": rr.k1, "k2": rr.k2, "lambda_value": rr.lambda_value} if rr.re_ranking else None
    max_rank = max(rr.max_rank, TOP_K)

    checkpoint = None
    if args.model == "reid":
        checkpoint = resolve_checkpoint(cfg.evaluate.checkpoint)
    elif cfg.evaluate.checkpoint is not None:
        print(f"note: --model color-histogram ignores the checkpoint {cfg.evaluate.checkpoint}")
    query, gallery = load_query_gallery(cfg)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if args.model == "reid":
        model, model_cfg = load_model(checkpoint, device, cfg.model, allow_partial=args.allow_partial)
        model_name, metric, flip = model_cfg.backbone, "euclidean", cfg.model.with_flip_feature
        name = f"{model_name} ({checkpoint.name})"
        how = f"input {model_cfg.input_height}x{model_cfg.input_width}{', flip averaging' if flip else ''}, "
    else:
        model_name, metric, flip, name, how = "color-histogram", "cosine", None, "colour-histogram baseline", ""
    print(f"evaluating {name} on {len(query)} query / {len(gallery)} gallery images "
          f"({how}{'with' if re_ranking else 'no'} re-ranking) -> {out_dir}")
    if args.dry_run:
        return 0

    if args.model == "reid":
        q_feats, g_feats = model_features(model, model_cfg, cfg, query, gallery, device)
    else:
        batch = cfg.dataset.val_batch_size
        q_feats, g_feats = histogram_features(query, batch, "query"), histogram_features(gallery, batch, "gallery")

    samples = sample_queries(query, gallery, args.num_samples, args.seed)
    results, rows = evaluate_features(q_feats, g_feats, query, gallery, metric=metric, max_rank=max_rank,
                                      re_ranking=re_ranking, keep_rows=samples)
    plain = results["plain"]
    print(f"{name}: {plain.num_valid_queries} valid queries ({plain.num_skipped_queries} skipped: "
          f"no true match under another camera), {len(gallery)} gallery images; percent")
    print(format_table(results))

    save_resolved_config(cfg, out_dir)
    save_cmc_curve(cmc_path, results, f"CMC curve: {name}\n{plain.num_valid_queries} queries, "
                                      f"{len(gallery)} gallery images")
    if samples:
        shown = "re_ranked" if "re_ranked" in rows else "plain"  # the ranking the user asked for
        save_sampled_matches(grid_path, rows[shown], RANKING_LABELS[shown], samples, query, gallery, name)
    metrics = metrics_record(results, model=model_name, checkpoint=str(checkpoint) if checkpoint else None,
                             metric=metric, flip=flip, num_query=len(query), num_gallery=len(gallery))
    atomic_write_json(out_dir / "metrics.json", metrics)
    print(f"wrote {out_dir / 'metrics.json'}, {cmc_path}{f', {grid_path}' if samples else ''}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
