"""Match demo: rank the images of a folder against a query image with a ReID checkpoint, as a picture.

    python finetune/match.py --checkpoint results/finetune/synthetic_tiny/train/model.safetensors \\
        --query data/synthetic/query/0007_c1s1_000012_00.jpg --gallery data/synthetic/bounding_box_test \\
        --top-k 10 --output matches.png

Every image under ``--gallery`` (recursively; .jpg, .jpeg, .png) is embedded with the
checkpoint's own preprocessing (``soliderkit.finetune.FeatureExtractor``), compared with each
``--query`` image by the squared euclidean distance of the L2-normalised embeddings (the
distance the evaluation ranks by: 0 = same direction, 4 = opposite), and the ``--top-k`` nearest
are printed (rank, distance, identity, path) and drawn as the ranked-results grid of
``finetune/evaluate.py``, one row per query, written atomically to ``--output``. A query file
that also lies in the gallery folder is left out of its own ranking.

Identities: images named the Market-1501 way (``0007_c1s1_...``) are labelled with their id and
camera, and frames then say same identity (green), other identity (red), distractor (id 0,
amber) or junk (id -1, grey); other names are shown as ``id ?`` in neutral frames.
"""
from __future__ import annotations

import argparse
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from soliderkit.cli import HelpFormatter
from soliderkit.reid.datasets import ImageRecord

_MARKET_NAME = re.compile(r"^(-?\d+)_c(\d+)")
IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png"})

__all__ = ["Match", "identity_record", "rank_gallery", "main"]


@dataclass(frozen=True)
class Match:
    rank: int
    distance: float
    record: ImageRecord


def identity_record(path: str | Path, source: str) -> ImageRecord:
    """An image as a record: pid and 0-based camera from a Market-1501 name, else pid None, camera -1."""
    match = _MARKET_NAME.match(Path(path).name)
    if match:
        return ImageRecord(str(path), int(match.group(1)), int(match.group(2)) - 1, source)
    return ImageRecord(str(path), None, -1, source)  # type: ignore[arg-type]  (identity unknown)


def list_gallery(folders: Sequence[str | Path]) -> list[str]:
    paths = []
    for folder in folders:
        folder = Path(folder)
        if not folder.is_dir():
            raise SystemExit(f"gallery folder not found: {folder}")
        paths += sorted(str(p) for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not paths:
        raise SystemExit(f"no images ({', '.join(sorted(IMAGE_SUFFIXES))}) under {', '.join(map(str, folders))}")
    return paths


def rank_gallery(extractor, queries: Sequence[str], gallery: Sequence[str], top_k: int) -> list[list[Match]]:
    """For each query path, its ``top_k`` nearest gallery images (itself left out), best first."""
    import torch

    from soliderkit.reid.metrics import pairwise_distance

    q = extractor(list(queries))
    g = extractor(list(gallery))
    dist = pairwise_distance(q, g, metric="euclidean", normalize=True).cpu()
    resolved = [Path(p).resolve() for p in gallery]
    out = []
    for row, query in zip(dist, queries):
        self_index = [i for i, p in enumerate(resolved) if p == Path(query).resolve()]
        if self_index:
            row = row.clone()
            row[self_index] = float("inf")
        order = torch.argsort(row, stable=True)[: min(top_k, len(gallery) - len(self_index))]
        out.append([Match(rank, float(row[i]), identity_record(gallery[i], "gallery"))
                    for rank, i in enumerate(order.tolist(), start=1)])
    return out


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python finetune/match.py", description=__doc__.splitlines()[0],
                                     formatter_class=HelpFormatter)
    parser.add_argument("--checkpoint", required=True, metavar="PATH",
                        help="ReID model: the toolkit's model.safetensors (or its folder), or a SOLIDER-REID / TAO "
                             "checkpoint with --config")
    parser.add_argument("--query", required=True, action="append", metavar="IMAGE",
                        help="query image (repeatable: one grid row each)")
    parser.add_argument("--gallery", required=True, action="append", metavar="DIR",
                        help="folder of images to search, recursively (repeatable)")
    parser.add_argument("--top-k", type=int, default=10, metavar="K", help="matches shown per query")
    parser.add_argument("--output", default="matches.png", metavar="PNG", help="the picture to write")
    parser.add_argument("--config", metavar="PATH",
                        help="TAO experiment spec describing a SOLIDER-REID / TAO checkpoint (default: none; the "
                             "toolkit's checkpoints describe themselves)")
    parser.add_argument("--flip", action=argparse.BooleanOptionalAction, default=None,
                        help="flip-average the embeddings (default: as the checkpoint records)")
    parser.add_argument("--batch-size", type=int, default=32, help="images per forward")
    parser.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.top_k < 1:
        parser.error(f"argument --top-k: must be >= 1 (got {args.top_k})")
    for query in args.query:
        if not Path(query).is_file():
            raise SystemExit(f"query image not found: {query}")
    gallery = list_gallery(args.gallery)

    from soliderkit.backbone import CheckpointError
    from soliderkit.finetune.extractor import FeatureExtractor
    from soliderkit.reid.plots import save_ranked_grid

    try:
        extractor = FeatureExtractor(args.checkpoint, args.config, device=args.device, batch_size=args.batch_size,
                                     flip=args.flip, progress=not args.no_progress)
    except (CheckpointError, ValueError) as exc:
        raise SystemExit(f"--checkpoint: {exc}") from None
    for note in extractor.notes:
        print(f"note: {note}")
    print(f"{extractor.checkpoint.name}: {extractor.preprocessing.describe()}; {len(gallery)} gallery images")
    ranked = rank_gallery(extractor, args.query, gallery, args.top_k)

    queries = [identity_record(q, "query") for q in args.query]
    for query, matches in zip(queries, ranked):
        print(f"\nquery {query.path}")
        print(f"{'rank':>4}  {'distance':>8}  {'id':>6}  path")
        for m in matches:
            pid = "?" if m.record.pid is None else str(m.record.pid)
            print(f"{m.rank:>4}  {m.distance:8.4f}  {pid:>6}  {m.record.path}")
    title = (f"top-{args.top_k} matches among {len(gallery)} images of {', '.join(args.gallery)}\n"
             f"{extractor.checkpoint.name}; d = squared euclidean distance of L2-normalised embeddings (0 to 4)")
    save_ranked_grid(args.output, queries, [[m.record for m in row] for row in ranked], title,
                     top_k=max(len(row) for row in ranked), distances=[[m.distance for m in row] for row in ranked])
    print(f"\nwrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
