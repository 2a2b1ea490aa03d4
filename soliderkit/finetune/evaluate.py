"""Evaluate a fine-tuned ReID model, or the colour-histogram baseline, on one or more query / gallery targets.

    python finetune/evaluate.py --checkpoint results/finetune/synthetic_tiny/train/model.safetensors \\
        --target data/synthetic [--target msmt17=/data/MSMT17] [--flip] [--re-ranking]
    python finetune/evaluate.py --config configs/finetune/synthetic_tiny.yaml \\
        --checkpoint results/finetune/synthetic_tiny/train/model.safetensors     # the config's dataset folders
    python finetune/evaluate.py --model color-histogram --query data/synthetic/query \\
        --gallery data/synthetic/bounding_box_test          # no training, no config needed

Targets. Each evaluated query / gallery pair is a *target* with a name, and its results go to
their own folder ``<results>/<name>/`` (``metrics.json``, ``config.yaml``, ``cmc_curve.png``,
``sampled_matches.png``), so evaluating one dataset never overwrites another's. ``--target`` (or
the config's ``evaluate.targets`` list) names one per use, as ``[NAME=]ROOT`` (a Market-1501-layout
root with ``query/`` and ``bounding_box_test/``, or an MSMT17 release folder) or
``[NAME=]QUERY_DIR,GALLERY_DIR``; without ``NAME=`` the name comes from the data (the root's
folder name; the folder holding the query and gallery folders). ``--query`` / ``--gallery``
(``evaluate.query_dataset`` / ``test_dataset``) give one more target; with none of these the
``dataset`` folders of the config are the one target (or the MSMT17 release lists when
``dataset.dataset_kind`` is msmt17). Several targets in one call (cross-dataset evaluation, as
torchreid's ``--targets`` and fast-reid's ``DATASETS.TESTS``) load the model once and end with one
summary table, printed and written as ``<results>/summary.json`` and ``summary.md``; the summary
covers every target folder under ``<results>``, this call's and earlier ones'.

Settings. The config (optional for the toolkit's own checkpoints) is the same TAO
ReIdentificationNet spec as training; its ``evaluate`` section is honoured: ``checkpoint``
(``--checkpoint``), ``query_dataset`` / ``test_dataset``, ``results_dir`` (default
``<results_dir>/evaluate``, ``<results_dir>/evaluate_color_histogram`` for the baseline),
``output_cmc_curve_plot`` and ``output_sampled_matches_plot`` (default ``cmc_curve.png`` /
``sampled_matches.png`` in the target's folder; with several targets the target's name is added
to the file name). The toolkit's checkpoints carry their own preprocessing (input size, pixel
mean / std, resize filter, flip averaging, λ); SOLIDER-REID / TAO checkpoints take it from the
config's ``model`` and ``dataset`` sections. ``--flip`` / ``--no-flip`` override flip averaging;
re-ranking comes from ``re_ranking`` (``--re-ranking``); the CMC curve runs to
``max(re_ranking.max_rank, 10)``; batch size and workers from ``dataset``.

Metrics follow the Market-1501 protocol (``soliderkit.reid.metrics``): learned embeddings are
compared by squared euclidean distance after L2 normalisation, colour histograms by cosine
distance. The plain ranking is always reported; the k-reciprocal re-ranked one as well when
enabled.
"""
from __future__ import annotations

import argparse
import json
import random
import re
import sys
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from soliderkit.cli import HelpFormatter
from soliderkit.config import parse_config_from_args, save_resolved_config
from soliderkit.finetune.config import FinetuneConfig, add_neck_feat_argument
from soliderkit.io import atomic_write_json, atomic_write_text, check_writable, refuse_or_move_aside
from soliderkit.reid.color_histogram import color_histogram_features
from soliderkit.reid.datasets import DISTRACTOR_PID, DatasetError, ImageRecord, parse_msmt17, read_market_folder
from soliderkit.reid.embedding import Preprocessing
from soliderkit.reid.evaluation import evaluate_features, extract_embeddings, ranked_gallery
from soliderkit.reid.metrics import RankingResult
from soliderkit.reid.plots import RANKING_LABELS, save_cmc_curve, save_ranked_grid

MODELS = ("reid", "color-histogram")
TOP_K = 10
SUMMARY_JSON, SUMMARY_MD = "summary.json", "summary.md"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
EPILOG = """examples:
  python finetune/evaluate.py --checkpoint results/finetune/x/train/model.safetensors --target data/synthetic
  python finetune/evaluate.py --checkpoint M --target market=/data/market1501 --target msmt17=/data/MSMT17_V1
  python finetune/evaluate.py --checkpoint M --target mine=crops/query,crops/gallery --re-ranking
  python finetune/evaluate.py --config configs/finetune/solider_reid_market1501_swin_tiny.yaml --checkpoint M.pth   # SOLIDER-REID (TAO: card_market1501_swin_tiny.yaml)
"""


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python finetune/evaluate.py", description=__doc__.splitlines()[0],
                                     epilog=EPILOG, formatter_class=HelpFormatter)
    parser.add_argument("--config", metavar="PATH",
                        help="YAML experiment spec (default: none, i.e. the defaults plus the flags below; needed "
                             "for SOLIDER-REID / TAO checkpoints)")
    parser.add_argument("--model", choices=MODELS, default="reid",
                        help="'reid': a fine-tuned checkpoint; 'color-histogram': the no-training baseline, needs "
                             "no checkpoint")
    parser.add_argument("--checkpoint", metavar="PATH",
                        help="model.safetensors written by finetune/run.py (or its folder), or a SOLIDER-REID / TAO "
                             "checkpoint with --config (default: evaluate.checkpoint)")
    parser.add_argument("--target", action="append", metavar="[NAME=]ROOT|QUERY_DIR,GALLERY_DIR",
                        help="a dataset to evaluate on, repeatable: a Market-1501-layout root or MSMT17 release "
                             "folder, or a query and a gallery folder; NAME (default: from the data) names its "
                             "results folder (default: evaluate.targets)")
    parser.add_argument("--query", metavar="DIR", help="query folder of one more target (default: "
                                                       "evaluate.query_dataset, else dataset.query_dataset_dir)")
    parser.add_argument("--gallery", metavar="DIR", help="gallery folder of that target (default: "
                                                         "evaluate.test_dataset, else dataset.test_dataset_dir)")
    parser.add_argument("--flip", action=argparse.BooleanOptionalAction, default=None,
                        help="average each embedding with its mirror image's (default: as the checkpoint "
                             "records, model.with_flip_feature at training)")
    add_neck_feat_argument(parser)
    parser.add_argument("--re-ranking", action="store_true",
                        help="also report k-reciprocal re-ranking (as re_ranking.re_ranking=true)")
    parser.add_argument("--num-samples", type=int, default=8, metavar="N",
                        help="queries shown in each target's ranked-results grid (0 = no grid)")
    parser.add_argument("--seed", type=int, default=0, help="seed for sampling those queries")
    parser.add_argument("--allow-partial", action="store_true",
                        help="load a checkpoint whose keys do not all match (they are listed)")
    parser.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    parser.add_argument("--overwrite", action="store_true",
                        help="evaluate again a target that already has results here (the old folder is moved aside)")
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
    if args.target:
        cfg.evaluate.targets = list(args.target)
    if args.re_ranking:
        cfg.re_ranking.re_ranking = True


def results_dir(cfg: FinetuneConfig, model: str) -> Path:
    if cfg.evaluate.results_dir:
        return Path(cfg.evaluate.results_dir)
    return Path(cfg.results_dir) / ("evaluate" if model == "reid" else "evaluate_color_histogram")


@dataclass
class Target:
    """One evaluated query / gallery pair and where it came from."""

    name: str
    query: list[ImageRecord]
    gallery: list[ImageRecord]
    source: dict  # {"root": ...} or {"query": ..., "gallery": ...} (+ "kind")
    origin: str  # the flag or config key that named it
    distractor_pid: int | None = DISTRACTOR_PID


def safe_name(text: str) -> str:
    """A folder name from data: letters, digits, '.', '_', '-' kept, anything else '_'."""
    name = re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("._-")
    return name or "target"


def name_from_folders(query_dir: str, gallery_dir: str) -> str:
    """The folder holding both (``data/synthetic`` for ``data/synthetic/{query,bounding_box_test}``),
    else the two parents' names joined (``a_b``)."""
    q, g = Path(query_dir).resolve(), Path(gallery_dir).resolve()
    if q.parent == g.parent:
        return safe_name(q.parent.name or q.name)
    return safe_name(f"{q.parent.name or q.name}_{g.parent.name or g.name}")


def parse_target(text: str) -> tuple[str | None, str | None, str | None]:
    """``[NAME=]ROOT`` or ``[NAME=]QUERY_DIR,GALLERY_DIR`` -> (name, root, None) or (name, query, gallery)."""
    name, sep, rest = text.partition("=")
    if not sep or not _NAME.match(name):
        name, rest = None, text  # no name (a path may hold '=' itself)
    if not rest.strip():
        raise SystemExit(f"--target {text!r}: expected [NAME=]ROOT or [NAME=]QUERY_DIR,GALLERY_DIR")
    if "," in rest:
        query, _, gallery = rest.partition(",")
        if not query.strip() or not gallery.strip() or "," in gallery:
            raise SystemExit(f"--target {text!r}: expected [NAME=]QUERY_DIR,GALLERY_DIR (two folders)")
        return name, query.strip(), gallery.strip()
    return name, rest.strip(), None


def _read_pair(query_dir: str, gallery_dir: str, origin_query: str, origin_gallery: str
               ) -> tuple[list[ImageRecord], list[ImageRecord]]:
    folders = {}
    for split, folder, origin in (("query", query_dir, origin_query), ("gallery", gallery_dir, origin_gallery)):
        try:
            folders[split] = read_market_folder(folder, source=Path(folder).name)
        except DatasetError as exc:
            raise SystemExit(f"{split} folder ({origin}): {exc}") from None
    query = [r for r in folders["query"] if r.pid != DISTRACTOR_PID]
    if len(query) < len(folders["query"]):
        print(f"note: {len(folders['query']) - len(query)} distractor image(s) (pid {DISTRACTOR_PID}) "
              f"left out of the query set {query_dir}")
    if not query:
        raise SystemExit(f"query folder ({origin_query}): {query_dir} holds no usable query images "
                         "(only junk / distractors)")
    if not folders["gallery"]:
        raise SystemExit(f"gallery folder ({origin_gallery}): {gallery_dir} holds no gallery images")
    return query, folders["gallery"]


def _msmt17_target(name: str | None, root: str, origin: str) -> Target:
    try:
        splits = parse_msmt17(root)
    except DatasetError as exc:
        raise SystemExit(f"{origin}: {exc}") from None
    return Target(name or safe_name(Path(root).resolve().name), splits.query, splits.gallery,
                  {"root": str(root), "kind": "msmt17"}, origin, distractor_pid=None)


def _root_target(name: str | None, root: str, origin: str) -> Target:
    path = Path(root)
    if not path.is_dir():
        raise SystemExit(f"{origin}: dataset folder not found: {root}")
    if (path / "query").is_dir() and (path / "bounding_box_test").is_dir():
        query, gallery = _read_pair(str(path / "query"), str(path / "bounding_box_test"), origin, origin)
        return Target(name or safe_name(path.resolve().name), query, gallery,
                      {"root": str(root), "kind": "market1501"}, origin)
    if any((path / sub / "list_query.txt").is_file() for sub in ("", "MSMT17_V1", "MSMT17_V2")):
        return _msmt17_target(name, root, origin)
    raise SystemExit(f"{origin}: {root} is neither a Market-1501-layout root (query/ + bounding_box_test/) nor an "
                     "MSMT17 release folder (list_query.txt); name the folders as QUERY_DIR,GALLERY_DIR")


def _single(folder, key: str):
    if isinstance(folder, list):
        if len(folder) != 1:
            raise SystemExit(f"config error: {key} lists {len(folder)} folders; pair --query with --gallery "
                             "explicitly, or use --target for each pair")
        return folder[0]
    return folder


def resolve_targets(cfg: FinetuneConfig) -> list[Target]:
    """Every target to evaluate, records loaded (so a bad folder stops before anything runs)."""
    ev, ds = cfg.evaluate, cfg.dataset
    targets: list[Target] = []
    if ev.query_dataset is not None or ev.test_dataset is not None:
        query = ev.query_dataset or _single(ds.query_dataset_dir, "dataset.query_dataset_dir")
        gallery = ev.test_dataset or _single(ds.test_dataset_dir, "dataset.test_dataset_dir")
        origins = ("evaluate.query_dataset" if ev.query_dataset else "dataset.query_dataset_dir",
                   "evaluate.test_dataset" if ev.test_dataset else "dataset.test_dataset_dir")
        for split, folder, flag, key in (("query", query, "--query", "query_dataset"),
                                         ("gallery", gallery, "--gallery", "test_dataset")):
            if folder is None:
                raise SystemExit(f"config error: no {split} folder: pass {flag} DIR or set evaluate.{key}")
        targets.append(Target(name_from_folders(query, gallery), *_read_pair(query, gallery, *origins),
                              {"query": str(query), "gallery": str(gallery)}, " / ".join(origins)))
    for i, text in enumerate(ev.targets):
        origin = f"evaluate.targets[{i}] = {text!r}"
        name, first, second = parse_target(text)
        if second is None:
            targets.append(_root_target(name, first, origin))
        else:
            targets.append(Target(name or name_from_folders(first, second), *_read_pair(first, second, origin, origin),
                                  {"query": first, "gallery": second}, origin))
    if not targets:
        targets += _dataset_targets(cfg)
    seen: dict[str, int] = {}
    for target in targets:  # names are folders: make them unique in call order
        count = seen.get(target.name, 0)
        seen[target.name] = count + 1
        if count:
            target.name = f"{target.name}-{count + 1}"
    return targets


def _dataset_targets(cfg: FinetuneConfig) -> list[Target]:
    """The config's ``dataset`` folders (or MSMT17 release lists) as the target(s): one per query /
    gallery pair when ``dataset.query_dataset_dir`` / ``test_dataset_dir`` are paired lists."""
    ds = cfg.dataset
    if ds.dataset_kind == "msmt17":
        if not isinstance(ds.train_dataset_dir, str):
            raise SystemExit("config error: dataset_kind=msmt17 needs dataset.train_dataset_dir "
                             "(the MSMT17 release folder), or pass --target / --query and --gallery")
        return [_msmt17_target(None, ds.train_dataset_dir, "dataset.train_dataset_dir (msmt17)")]
    for split, key, flag in (("query", "query_dataset_dir", "--query"), ("gallery", "test_dataset_dir", "--gallery")):
        if getattr(ds, key) is None:
            raise SystemExit(f"config error: no {split} folder: pass --target DATASET_ROOT, or {flag} DIR, or set "
                             f"evaluate.{'query' if split == 'query' else 'test'}_dataset or dataset.{key}")
    queries, galleries = ds.query_dataset_dir, ds.test_dataset_dir
    if isinstance(queries, list) or isinstance(galleries, list):  # paired lists: one target per pair
        queries = queries if isinstance(queries, list) else [queries]
        galleries = galleries if isinstance(galleries, list) else [galleries]
        keys = [(f"dataset.query_dataset_dir[{i}]", f"dataset.test_dataset_dir[{i}]") for i in range(len(queries))]
    else:
        queries, galleries = [queries], [galleries]
        keys = [("dataset.query_dataset_dir", "dataset.test_dataset_dir")]
    return [Target(name_from_folders(query, gallery), *_read_pair(query, gallery, *origins),
                   {"query": str(query), "gallery": str(gallery)}, " / ".join(origins))
            for query, gallery, origins in zip(queries, galleries, keys)]


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

def model_features(model: torch.nn.Module, pre: Preprocessing, cfg: FinetuneConfig, target: Target,
                   device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """(query, gallery) embeddings with the checkpoint's preprocessing."""
    kwargs = dict(size=pre.input_size, mean=pre.pixel_mean, std=pre.pixel_std, interpolation=pre.interpolation,
                  flip=pre.flip, batch_size=cfg.dataset.val_batch_size, device=device,
                  num_workers=cfg.dataset.num_workers)
    return (extract_embeddings(model, target.query, desc=f"{target.name} query", **kwargs),
            extract_embeddings(model, target.gallery, desc=f"{target.name} gallery", **kwargs))


def histogram_features(records: Sequence[ImageRecord], batch: int, desc: str) -> np.ndarray:
    chunks = [color_histogram_features([r.path for r in records[i:i + batch]])
              for i in tqdm(range(0, len(records), batch), desc=desc, leave=False)]
    return np.concatenate(chunks)


# --- reporting -----------------------------------------------------------------------------------

COLUMNS = [("mAP", "mAP"), ("rank-1", "rank1"), ("rank-5", "rank5"), ("rank-10", "rank10"), ("mINP", "mINP")]


def format_table(results: dict[str, RankingResult]) -> str:
    """Markdown table in percent, one row per ranking: mAP, rank-1/5/10, mINP."""
    lines = ["| ranking   | " + " | ".join(f"{name:>7}" for name, _ in COLUMNS) + " |",
             "|-----------|" + "|".join("-" * 8 + ":" for _ in COLUMNS) + "|"]
    for name, result in results.items():
        percent = result.as_percent_dict()
        cells = [f"{percent[key]:7.2f}" if key in percent else f"{'-':>7}" for _, key in COLUMNS]
        lines.append(f"| {RANKING_LABELS[name]:<9} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def format_summary(records: Sequence[dict]) -> str:
    """Markdown table over targets (metrics.json records), one row per target and ranking."""
    width = max([len("target")] + [len(r["target"]) for r in records])
    lines = [f"| {'target':<{width}} | queries | gallery | ranking   | "
             + " | ".join(f"{name:>7}" for name, _ in COLUMNS) + " |",
             f"|{'-' * (width + 2)}|--------:|--------:|-----------|" + "|".join("-" * 8 + ":" for _ in COLUMNS) + "|"]
    for record in records:
        rankings = [("plain", record)] + ([("re_ranked", record["re_ranked"])] if "re_ranked" in record else [])
        for ranking, values in rankings:
            cells = [f"{values[key]:7.2f}" if key in values else f"{'-':>7}" for _, key in COLUMNS]
            lines.append(f"| {record['target']:<{width}} | {record.get('num_valid_queries', 0):>7} | "
                         f"{record.get('num_gallery', 0):>7} | {RANKING_LABELS[ranking]:<9} | "
                         + " | ".join(cells) + " |")
    return "\n".join(lines)


def write_summary(out_dir: Path) -> tuple[Path, Path, list[dict]]:
    """``summary.json`` / ``summary.md`` over every ``<out_dir>/<target>/metrics.json``."""
    records = []
    for path in sorted(out_dir.glob("*/metrics.json")):
        try:
            record = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            continue  # not ours, or half-written by someone else: left out
        if isinstance(record, dict) and "mAP" in record:
            records.append({"target": path.parent.name, **{k: v for k, v in record.items() if k != "target"}})
    models = sorted({f"{r.get('model')} ({r.get('checkpoint')})" if r.get("checkpoint") else str(r.get("model"))
                     for r in records})
    atomic_write_json(out_dir / SUMMARY_JSON, {"targets": records})
    text = (f"# Evaluation summary ({len(records)} target(s); percent, Market-1501 protocol)\n\n"
            + "".join(f"model: {m}\n" for m in models) + "\n" + format_summary(records) + "\n")
    atomic_write_text(out_dir / SUMMARY_MD, text)
    return out_dir / SUMMARY_JSON, out_dir / SUMMARY_MD, records


def sample_queries(query: Sequence[ImageRecord], gallery: Sequence[ImageRecord], count: int, seed: int) -> list[int]:
    """``count`` query indices (sorted), drawn among queries that have a true match in the
    gallery under another camera (the ones the metrics count)."""
    cameras = defaultdict(set)
    for g in gallery:
        cameras[g.pid].add(g.camid)
    valid = [i for i, q in enumerate(query) if cameras[q.pid] - {q.camid}]
    return sorted(random.Random(seed).sample(valid, min(count, len(valid))))


def save_sampled_matches(path: Path, dist_rows: np.ndarray, ranking: str, samples: list[int],
                         query: Sequence[ImageRecord], gallery: Sequence[ImageRecord], name: str,
                         distractor_pid: int | None = DISTRACTOR_PID) -> None:
    """The ranked-results grid of the sampled queries (``dist_rows``: their distance rows)."""
    shown = [query[i] for i in samples]
    ranked = ranked_gallery(dist_rows, [q.pid for q in shown], [q.camid for q in shown],
                            [g.pid for g in gallery], [g.camid for g in gallery], TOP_K)
    distances = [np.asarray(row)[order] for row, order in zip(dist_rows, ranked)]
    title = (f"{name}: top-{TOP_K} gallery matches of {len(shown)} sampled queries ({ranking} ranking, "
             "d = distance)\nthe query identity's images from the query camera are left out (Market-1501 protocol)")
    save_ranked_grid(path, shown, [[gallery[j] for j in r] for r in ranked], title, top_k=TOP_K,
                     distances=distances, distractor_pid=distractor_pid)


def metrics_record(results: dict[str, RankingResult], **fields) -> dict:
    """metrics.json: the plain metrics at top level (as training writes them), re-ranked below."""
    plain = results["plain"]
    record = {**fields, **plain.as_percent_dict(), "num_valid_queries": plain.num_valid_queries,
              "num_skipped_queries": plain.num_skipped_queries}
    if "re_ranked" in results:
        record["re_ranked"] = results["re_ranked"].as_percent_dict()
    return record


def _plot_path(configured: str | None, out: Path, default_name: str, target: str, several: bool) -> Path:
    if not configured:
        return out / default_name
    path = Path(configured)
    return path.with_name(f"{path.stem}_{target}{path.suffix}") if several else path


# --- main ----------------------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    cfg = parse_config_from_args(FinetuneConfig, args)
    apply_flags(cfg, args)
    out_dir = results_dir(cfg, args.model)
    rr = cfg.re_ranking
    re_ranking = {"k1": rr.k1, "k2": rr.k2, "lambda_value": rr.lambda_value} if rr.re_ranking else None
    max_rank = max(rr.max_rank, TOP_K)

    checkpoint = None
    if args.model == "reid":
        checkpoint = resolve_checkpoint(cfg.evaluate.checkpoint)
    elif cfg.evaluate.checkpoint is not None:
        print(f"note: --model color-histogram ignores the checkpoint {cfg.evaluate.checkpoint}")
    targets = resolve_targets(cfg)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    pre = None
    if args.model == "reid":
        from soliderkit.finetune.extractor import config_given, load_for_cli  # imports the model code (timm)

        loaded = load_for_cli(checkpoint, cfg, config_given=config_given(args),
                              allow_partial=args.allow_partial, config_key="checkpoint", flip=args.flip,
                              neck_feat=args.neck_feat)
        model, pre = loaded.model.to(device), loaded.preprocessing
        # The saved config.yaml says what ran: the checkpoint's model section and preprocessing.
        cfg.model = loaded.model_config
        cfg.model.with_flip_feature = pre.flip
        cfg.dataset.pixel_mean, cfg.dataset.pixel_std = list(pre.pixel_mean), list(pre.pixel_std)
        cfg.dataset.test_interpolation = pre.interpolation
        model_name, metric, flip = loaded.model_config.backbone, "euclidean", pre.flip
        name = f"{model_name} ({checkpoint.name})"
        how = f"{pre.describe()}, "
    else:
        model_name, metric, flip, name, how = "color-histogram", "cosine", None, "colour-histogram baseline", ""
    several = len(targets) > 1
    print(f"evaluating {name} ({how}{'with' if re_ranking else 'no'} re-ranking) on {len(targets)} target(s) "
          f"-> {out_dir}")
    for target in targets:
        print(f"  {target.name}: {len(target.query)} query / {len(target.gallery)} gallery images "
              f"({target.origin}) -> {out_dir / target.name}")
    if args.dry_run:
        return 0
    tool = "finetune/evaluate.py"
    check_writable(out_dir, tool)
    refuse_or_move_aside([out_dir / t.name for t in targets if (out_dir / t.name / "metrics.json").exists()],
                         args.overwrite, tool)

    records = []
    for target in targets:
        out = out_dir / target.name
        if args.model == "reid":
            q_feats, g_feats = model_features(model, pre, cfg, target, device)
        else:
            batch = cfg.dataset.val_batch_size
            q_feats = histogram_features(target.query, batch, f"{target.name} query")
            g_feats = histogram_features(target.gallery, batch, f"{target.name} gallery")
        samples = sample_queries(target.query, target.gallery, args.num_samples, args.seed)
        results, rows = evaluate_features(q_feats, g_feats, target.query, target.gallery, metric=metric,
                                          max_rank=max_rank, re_ranking=re_ranking, keep_rows=samples)
        plain = results["plain"]
        print(f"\n{target.name} — {name}: {plain.num_valid_queries} valid queries ({plain.num_skipped_queries} "
              f"skipped: no true match under another camera), {len(target.gallery)} gallery images; percent")
        print(format_table(results))

        cmc_path = _plot_path(cfg.evaluate.output_cmc_curve_plot, out, "cmc_curve.png", target.name, several)
        grid_path = _plot_path(cfg.evaluate.output_sampled_matches_plot, out, "sampled_matches.png", target.name,
                               several)
        save_resolved_config(cfg, out)
        save_cmc_curve(cmc_path, results, f"CMC curve: {name} on {target.name}\n{plain.num_valid_queries} queries, "
                                          f"{len(target.gallery)} gallery images")
        if samples:
            shown = "re_ranked" if "re_ranked" in rows else "plain"  # the ranking the user asked for
            save_sampled_matches(grid_path, rows[shown], RANKING_LABELS[shown], samples, target.query,
                                 target.gallery, f"{target.name} — {name}", target.distractor_pid)
        metrics = metrics_record(results, target=target.name, data=target.source, model=model_name,
                                 checkpoint=str(checkpoint) if checkpoint else None, metric=metric, flip=flip,
                                 preprocessing=pre.as_dict() if pre is not None else None,
                                 num_query=len(target.query), num_gallery=len(target.gallery))
        atomic_write_json(out / "metrics.json", metrics)
        records.append(metrics)
        print(f"wrote {out / 'metrics.json'}, {cmc_path}{f', {grid_path}' if samples else ''}")

    summary_json, summary_md, everything = write_summary(out_dir)
    if several:
        print(f"\nsummary of this call ({len(records)} targets; percent):")
        print(format_summary(records))
    earlier = len(everything) - len(records)
    print(f"wrote {summary_json} and {summary_md} ({len(everything)} target(s)"
          f"{f', {earlier} from earlier calls' if earlier > 0 else ''})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
