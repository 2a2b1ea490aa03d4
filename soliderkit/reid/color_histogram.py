"""Colour-histogram ReID baseline: the number any learned model has to beat.

No training.  Each image is described by joint HSV colour histograms of horizontal
stripes, concatenated:

* the image is converted to HSV (PIL, 8 bits per channel) and cut into ``stripes``
  (default 6) equal horizontal bands, roughly head / shoulders / torso / hips / legs / feet,
  so the descriptor keeps coarse vertical layout ("red top over blue trousers");
* each band gets a joint 3-D histogram with ``bins`` = (hue, saturation, value) bins,
  default (8, 8, 8) = 512 bins per band, L1-normalised so every band weighs the same
  whatever its pixel count;
* each L1-normalised band is square-rooted (the Hellinger mapping), which makes the
  cosine similarity of two bands their Bhattacharyya coefficient.  Without it the few
  large background bins dominate the dot product and the person's colours barely count;
* the concatenation is L2-normalised, and query/gallery are compared by cosine distance
  (``1 - q.g``).

Colour histograms are what per-camera white balance, exposure and background changes
break, so this is the floor that the synthetic world (``soliderkit.data.synth``) is
calibrated against.

CLI: ``python -m soliderkit.reid.color_histogram DATA_ROOT [--max-rank 10]`` evaluates a
Market-1501-layout folder with the Market protocol and prints mAP / CMC / mINP.
"""
from __future__ import annotations

import argparse
import sys
from typing import Sequence

import numpy as np
from PIL import Image

from soliderkit.cli import HelpFormatter
from soliderkit.reid.datasets import parse_market1501
from soliderkit.reid.metrics import RankingResult, evaluate_ranking

DEFAULT_BINS = (8, 8, 8)
DEFAULT_STRIPES = 6


def _histogram_of(path: str, bins: tuple[int, int, int], stripes: int) -> np.ndarray:
    try:
        with Image.open(path) as image:
            hsv = np.asarray(image.convert("RGB").convert("HSV"), dtype=np.int64)
    except OSError as error:
        raise OSError(f"cannot read image {path!r}: {error}") from error
    height = hsv.shape[0]
    if height < stripes:
        raise ValueError(f"image {path!r} has {height} rows, fewer than stripes={stripes}")
    hue_bins, sat_bins, val_bins = bins
    # Quantise each channel, then fold (stripe, h, s, v) into one flat bin index.
    h = hsv[..., 0] * hue_bins // 256
    s = hsv[..., 1] * sat_bins // 256
    v = hsv[..., 2] * val_bins // 256
    bins_per_stripe = hue_bins * sat_bins * val_bins
    stripe = (np.arange(height) * stripes // height)[:, None]
    flat = stripe * bins_per_stripe + (h * sat_bins + s) * val_bins + v
    counts = np.bincount(flat.ravel(), minlength=stripes * bins_per_stripe).astype(np.float64)
    per_stripe = counts.reshape(stripes, bins_per_stripe)
    per_stripe /= per_stripe.sum(axis=1, keepdims=True)
    feature = np.sqrt(per_stripe).ravel()
    return feature / np.linalg.norm(feature)


def color_histogram_features(paths: Sequence[str], bins: tuple[int, int, int] = DEFAULT_BINS,
                             stripes: int = DEFAULT_STRIPES) -> np.ndarray:
    """(len(paths), stripes * prod(bins)) float32 matrix of L2-normalised descriptors."""
    bins = tuple(int(b) for b in bins)
    if len(bins) != 3 or any(not 1 <= b <= 256 for b in bins):
        raise ValueError(f"bins must be three integers in 1..256 (hue, saturation, value), got {bins!r}")
    if stripes < 1:
        raise ValueError(f"stripes must be at least 1, got {stripes!r}")
    features = np.zeros((len(paths), stripes * int(np.prod(bins))), dtype=np.float32)
    for row, path in enumerate(paths):
        features[row] = _histogram_of(str(path), bins, stripes)
    return features


def cosine_distance(query_features: np.ndarray, gallery_features: np.ndarray) -> np.ndarray:
    """1 - cosine similarity, for row-wise L2-normalised features."""
    return 1.0 - query_features @ gallery_features.T


def evaluate_color_histogram(data_root: str, max_rank: int = 10, bins=DEFAULT_BINS,
                             stripes: int = DEFAULT_STRIPES) -> RankingResult:
    """Market-protocol metrics of the baseline on the Market-1501-layout folder ``data_root``."""
    splits = parse_market1501(data_root)
    if not splits.query or not splits.gallery:
        raise ValueError(f"{data_root!r} has {len(splits.query)} query and {len(splits.gallery)} "
                         "gallery images; both are needed")
    query_features = color_histogram_features([r.path for r in splits.query], bins, stripes)
    gallery_features = color_histogram_features([r.path for r in splits.gallery], bins, stripes)
    return evaluate_ranking(
        cosine_distance(query_features, gallery_features),
        np.array([r.pid for r in splits.query]), np.array([r.pid for r in splits.gallery]),
        np.array([r.camid for r in splits.query]), np.array([r.camid for r in splits.gallery]),
        max_rank=max_rank,
    )


def format_table(result: RankingResult) -> str:
    """Two-line percent table: mAP, the rank-k CMC points within max_rank, mINP."""
    columns = [("mAP", result.mAP)]
    columns += [(f"rank-{k}", float(result.cmc[k - 1])) for k in (1, 5, 10) if k <= len(result.cmc)]
    columns.append(("mINP", result.mINP))
    header = " | ".join(f"{name:>7}" for name, _ in columns)
    values = " | ".join(f"{100.0 * value:7.2f}" for _, value in columns)
    return f"{header}\n{values}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m soliderkit.reid.color_histogram", formatter_class=HelpFormatter,
        description="Colour-histogram baseline (HSV stripes, cosine distance) on a Market-1501-layout folder.")
    parser.add_argument("data_root", metavar="DATA_ROOT", help="folder with query/ and bounding_box_test/")
    parser.add_argument("--max-rank", type=int, default=10, help="longest CMC rank computed (default %(default)s)")
    args = parser.parse_args(argv)
    if args.max_rank < 1:
        parser.error(f"argument --max-rank: must be at least 1 (got {args.max_rank})")
    try:
        result = evaluate_color_histogram(args.data_root, max_rank=args.max_rank)
    except (OSError, ValueError) as error:  # DatasetError is a ValueError
        parser.error(str(error))
    print(f"colour-histogram baseline on {args.data_root} "
          f"({result.num_valid_queries} valid queries; percent)")
    print(format_table(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
