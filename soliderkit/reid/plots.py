"""Evaluation figures: the CMC curve and the ranked-results grid (PNG, matplotlib Agg).

Figures are built on ``matplotlib.figure.Figure`` directly (no pyplot), so nothing here
touches a display or global state, and files are written atomically.

* :func:`cmc_figure` / :func:`save_cmc_curve`: matching rate against rank, one line per
  ranking (plain, re-ranked), with mAP and rank-1 in the legend.
* :func:`ranked_grid_figure` / :func:`save_ranked_grid`: one row per query, the query
  image followed by its top gallery images, each framed green (same identity) or red
  (another identity or a distractor) with its camera underneath. Images are read from
  disk as they are stored, not as the network saw them.
"""
from __future__ import annotations

from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator
from PIL import Image

from soliderkit.io import atomic_path
from soliderkit.reid.datasets import ImageRecord
from soliderkit.reid.metrics import RankingResult

TRUE_MATCH_COLOR = "#1a9850"  # green
FALSE_MATCH_COLOR = "#d73027"  # red
QUERY_COLOR = "#3b4cc0"  # blue frame around the query
_DPI = 100
_CELL_WIDTH = 0.9  # inches per image column (about 90 pixels at _DPI)
_BORDER = 4.0  # frame line width in points

# Legend labels and line styles of the rankings `soliderkit.reid.evaluation.evaluate_features` returns.
RANKING_LABELS = {"plain": "plain", "re_ranked": "re-ranked"}
_STYLES = {"plain": dict(color="#1f77b4", marker="o"), "re_ranked": dict(color="#ff7f0e", marker="s")}


def save_figure(figure: Figure, path: str | Path) -> Path:
    """Write ``figure`` as a PNG at ``path`` (atomically; parent folders are created)."""
    with atomic_path(path) as tmp:
        figure.savefig(tmp, format="png", dpi=_DPI)
    return Path(path)


# --- CMC curve ------------------------------------------------------------------------------

def cmc_figure(results: Mapping[str, RankingResult], title: str = "CMC curve") -> Figure:
    """Matching rate (%) at ranks 1..max_rank, one line per entry of ``results``."""
    figure = Figure(figsize=(6.4, 4.4), layout="constrained")
    ax = figure.add_subplot()
    for name, result in results.items():
        ranks = np.arange(1, result.max_rank + 1)
        label = (f"{RANKING_LABELS.get(name, name)}: mAP {100 * result.mAP:.1f}%, "
                 f"rank-1 {100 * result.cmc[0]:.1f}%")
        ax.plot(ranks, 100.0 * np.asarray(result.cmc), label=label, linewidth=1.8, markersize=4,
                **_STYLES.get(name, {}))
    ax.set_xlabel("rank")
    ax.set_ylabel("matching rate (%)  [true match within the top k]")
    ax.set_ylim(0, 101)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True, nbins=12))
    ax.set_xlim(left=0.5)
    ax.grid(True, alpha=0.3)
    ax.legend(loc="lower right")
    ax.set_title(title, fontsize=10)
    return figure


def save_cmc_curve(path: str | Path, results: Mapping[str, RankingResult], title: str = "CMC curve") -> Path:
    return save_figure(cmc_figure(results, title), path)


# --- ranked-results grid ---------------------------------------------------------------------

def match_colors(query: ImageRecord, ranked: Sequence[ImageRecord]) -> list[str]:
    """Frame colour of each ranked gallery image: green for the query's identity, red otherwise."""
    return [TRUE_MATCH_COLOR if g.pid == query.pid else FALSE_MATCH_COLOR for g in ranked]


def _load(path: str) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"))


def _framed(ax, image: np.ndarray, color: str, label: str) -> None:
    ax.imshow(image, interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])
    for spine in ax.spines.values():
        spine.set_edgecolor(color)
        spine.set_linewidth(_BORDER)
    ax.set_xlabel(label, fontsize=8, labelpad=2)


def ranked_grid_figure(queries: Sequence[ImageRecord], ranked: Sequence[Sequence[ImageRecord]],
                       title: str, top_k: int | None = None) -> Figure:
    """One row per query: the query image, a gap, then ``ranked[i]`` (its nearest gallery
    images, best first). Frames: blue query, green true match, red false match; camera ids
    (1-based, as in the file names) under each image."""
    if len(queries) != len(ranked):
        raise ValueError(f"{len(queries)} queries but {len(ranked)} ranked lists")
    if not queries:
        raise ValueError("no queries to show")
    top_k = top_k or max(len(r) for r in ranked)
    images = {r.path: _load(r.path) for r in [*queries, *(g for row in ranked for g in row[:top_k])]}
    aspect = float(np.median([image.shape[0] / image.shape[1] for image in images.values()]))
    cell_height = _CELL_WIDTH * aspect + 0.3  # room for the camera label
    width_ratios = [1.0, 0.3] + [1.0] * top_k
    figure = Figure(figsize=(_CELL_WIDTH * sum(width_ratios) + 0.4, cell_height * len(queries) + 0.9),
                    layout="constrained")
    grid = figure.add_gridspec(len(queries), len(width_ratios), width_ratios=width_ratios)
    for row, (query, gallery) in enumerate(zip(queries, ranked)):
        ax = figure.add_subplot(grid[row, 0])
        _framed(ax, images[query.path], QUERY_COLOR, f"query c{query.camid + 1}")
        if row == 0:
            ax.set_title("query", fontsize=9)
        gallery = list(gallery[:top_k])
        for rank, (record, color) in enumerate(zip(gallery, match_colors(query, gallery)), start=1):
            ax = figure.add_subplot(grid[row, rank + 1])
            _framed(ax, images[record.path], color, f"c{record.camid + 1}")
            if row == 0:
                ax.set_title(str(rank), fontsize=9)
    figure.suptitle(title, fontsize=10)
    return figure


def save_ranked_grid(path: str | Path, queries: Sequence[ImageRecord],
                     ranked: Sequence[Sequence[ImageRecord]], title: str, top_k: int | None = None) -> Path:
    return save_figure(ranked_grid_figure(queries, ranked, title, top_k), path)
