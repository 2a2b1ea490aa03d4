"""Evaluation figures: the CMC curve and the ranked-results grid (PNG, matplotlib Agg).

Figures are built on ``matplotlib.figure.Figure`` directly (no pyplot), so nothing here
touches a display or global state, and files are written atomically.

* :func:`cmc_figure` / :func:`save_cmc_curve`: matching rate against rank, one line per
  ranking (plain, re-ranked), with mAP and rank-1 in the legend.
* :func:`ranked_grid_figure` / :func:`save_ranked_grid`: one row per query, the query
  image followed by its top gallery images, each framed green (same identity), red (another
  identity), amber (a distractor, pid 0) or grey (junk, pid -1), with its identity, camera
  and distance underneath and a legend. Images are read from disk as they are stored, not
  as the network saw them.
"""
from __future__ import annotations

from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
from matplotlib.figure import Figure
from matplotlib.patches import Patch
from matplotlib.ticker import MaxNLocator
from PIL import Image

from soliderkit.io import atomic_path
from soliderkit.reid.datasets import DISTRACTOR_PID, JUNK_PID, ImageRecord
from soliderkit.reid.metrics import RankingResult

TRUE_MATCH_COLOR = "#1a9850"  # green
FALSE_MATCH_COLOR = "#d73027"  # red
QUERY_COLOR = "#3b4cc0"  # blue frame around the query
DISTRACTOR_COLOR = "#f0a30a"  # amber: a gallery distractor (pid 0), neither right nor a wrong person
JUNK_COLOR = "#8c8c8c"  # grey: a junk image (pid -1)
UNKNOWN_COLOR = "#9e9ac8"  # grey-violet: identities not known (the match demo on unnamed images)
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

# What a ranked gallery image is to its query, and how it is framed.
MATCH_KINDS = {
    "same": ("same identity", TRUE_MATCH_COLOR),
    "other": ("other identity", FALSE_MATCH_COLOR),
    "distractor": (f"distractor (id {DISTRACTOR_PID})", DISTRACTOR_COLOR),
    "junk": (f"junk (id {JUNK_PID})", JUNK_COLOR),
    "unknown": ("identity unknown", UNKNOWN_COLOR),
}


def match_kind(query: ImageRecord, gallery: ImageRecord, distractor_pid: int | None = DISTRACTOR_PID) -> str:
    """"same" / "other" identity, "distractor" (gallery pid ``distractor_pid``: Market-1501's 0;
    None for datasets without distractors, e.g. MSMT17) or "junk" (pid -1); "unknown" when the
    query's or the gallery image's identity is not known (pid None)."""
    if gallery.pid is not None and gallery.pid == JUNK_PID:
        return "junk"
    if gallery.pid is not None and distractor_pid is not None and gallery.pid == distractor_pid:
        return "distractor"
    if query.pid is None or gallery.pid is None:
        return "unknown"
    return "same" if gallery.pid == query.pid else "other"


def match_colors(query: ImageRecord, ranked: Sequence[ImageRecord],
                 distractor_pid: int | None = DISTRACTOR_PID) -> list[str]:
    """Frame colour of each ranked gallery image: green same identity, red another identity,
    amber a distractor, grey junk (grey-violet when identities are unknown)."""
    return [MATCH_KINDS[match_kind(query, g, distractor_pid)][1] for g in ranked]


def identity_label(record: ImageRecord, distractor_pid: int | None = DISTRACTOR_PID) -> str:
    """"id 12 · c2", "distractor · c3", "junk · c1", or without the camera when it is unknown (< 0)."""
    if record.pid is None:
        who = "id ?"
    elif distractor_pid is not None and record.pid == distractor_pid:
        who = "distractor"
    elif record.pid == JUNK_PID:
        who = "junk"
    else:
        who = f"id {record.pid}"
    return f"{who} · c{record.camid + 1}" if record.camid is not None and record.camid >= 0 else who


def _load(path: str) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"))


def _framed(ax, image: np.ndarray, color: str, label: str, dashed: bool = False) -> None:
    ax.imshow(image, interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])
    for spine in ax.spines.values():
        spine.set_edgecolor(color)
        spine.set_linewidth(_BORDER)
        if dashed:
            spine.set_linestyle("--")
    ax.set_xlabel(label, fontsize=7, labelpad=2)


def ranked_grid_figure(queries: Sequence[ImageRecord], ranked: Sequence[Sequence[ImageRecord]],
                       title: str, top_k: int | None = None,
                       distances: Sequence[Sequence[float]] | None = None,
                       distractor_pid: int | None = DISTRACTOR_PID) -> Figure:
    """One row per query: the query image, a gap, then ``ranked[i]`` (its nearest gallery
    images, best first). Frames: blue query; green same identity, red other identity, amber
    distractor (pid 0, dashed), grey junk (pid -1, dashed), grey-violet unknown identity. Under
    each image: identity and camera (1-based, as in the file names), and the distance when
    ``distances[i][j]`` (of ``ranked[i][j]``) is given. A legend names the frame colours used."""
    if len(queries) != len(ranked):
        raise ValueError(f"{len(queries)} queries but {len(ranked)} ranked lists")
    if not queries:
        raise ValueError("no queries to show")
    if distances is not None and [len(d) for d in distances] != [len(r) for r in ranked]:
        raise ValueError("distances must give one value per ranked image")
    top_k = top_k or max(len(r) for r in ranked)
    images = {r.path: _load(r.path) for r in [*queries, *(g for row in ranked for g in row[:top_k])]}
    aspect = float(np.median([image.shape[0] / image.shape[1] for image in images.values()]))
    lines = 2 if distances is not None else 1
    cell_height = _CELL_WIDTH * aspect + 0.15 + 0.15 * lines  # room for the labels
    width_ratios = [1.0, 0.3] + [1.0] * top_k
    figure = Figure(figsize=(_CELL_WIDTH * sum(width_ratios) + 0.4, cell_height * len(queries) + 1.2),
                    layout="constrained")
    grid = figure.add_gridspec(len(queries), len(width_ratios), width_ratios=width_ratios)
    used = set()
    for row, (query, gallery) in enumerate(zip(queries, ranked)):
        ax = figure.add_subplot(grid[row, 0])
        _framed(ax, images[query.path], QUERY_COLOR, "query\n" + identity_label(query, distractor_pid))
        if row == 0:
            ax.set_title("query", fontsize=9)
        gallery = list(gallery[:top_k])
        for rank, record in enumerate(gallery, start=1):
            kind = match_kind(query, record, distractor_pid)
            used.add(kind)
            label = identity_label(record, distractor_pid)
            if distances is not None:
                label += f"\nd={float(distances[row][rank - 1]):.3f}"
            ax = figure.add_subplot(grid[row, rank + 1])
            _framed(ax, images[record.path], MATCH_KINDS[kind][1], label, dashed=kind in ("distractor", "junk"))
            if row == 0:
                ax.set_title(str(rank), fontsize=9)
    handles = [Patch(facecolor="none", edgecolor=color, linewidth=2.5,
                     linestyle="--" if kind in ("distractor", "junk") else "-", label=name)
               for kind, (name, color) in MATCH_KINDS.items() if kind in used]
    if handles:
        figure.legend(handles=handles, loc="outside lower center", ncol=len(handles), fontsize=8, frameon=False)
    figure.suptitle(title, fontsize=10)
    return figure


def save_ranked_grid(path: str | Path, queries: Sequence[ImageRecord],
                     ranked: Sequence[Sequence[ImageRecord]], title: str, top_k: int | None = None,
                     distances: Sequence[Sequence[float]] | None = None,
                     distractor_pid: int | None = DISTRACTOR_PID) -> Path:
    return save_figure(ranked_grid_figure(queries, ranked, title, top_k, distances, distractor_pid), path)
