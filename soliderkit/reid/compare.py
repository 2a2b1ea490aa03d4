"""Print one results table: the colour-histogram baseline next to trained runs.

    python -m soliderkit.reid.compare DATA_ROOT [NAME=path/to/metrics.json ...]

Used by ``make demo``; each ``metrics.json`` is what ``finetune/run.py`` writes (percent).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from soliderkit.cli import HelpFormatter
from soliderkit.reid.color_histogram import evaluate_color_histogram

COLUMNS = ("mAP", "rank1", "rank5", "rank10", "mINP")


def format_rows(rows: list[tuple[str, dict]]) -> str:
    width = max(len(name) for name, _ in rows)
    header = f"{'model':<{width}} | " + " | ".join(f"{c:>7}" for c in COLUMNS) + " | mAP / baseline"
    baseline = rows[0][1]["mAP"]
    lines = [header, "-" * len(header)]
    for name, m in rows:
        ratio = f"{m['mAP'] / baseline:.2f}x" if baseline > 0 else "n/a"
        lines.append(f"{name:<{width}} | " + " | ".join(f"{m[c]:7.2f}" for c in COLUMNS) + f" | {ratio:>14}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m soliderkit.reid.compare", description=__doc__.splitlines()[0],
                                     formatter_class=HelpFormatter)
    parser.add_argument("data_root", help="Market-1501-layout folder (query/, bounding_box_test/)")
    parser.add_argument("runs", nargs="*", metavar="NAME=METRICS_JSON", help="trained runs to list")
    args = parser.parse_args(argv)
    rows = [("colour histogram (no training)", evaluate_color_histogram(args.data_root).as_percent_dict())]
    for item in args.runs:
        name, sep, path = item.partition("=")
        if not sep or not Path(path).is_file():
            parser.error(f"expected NAME=path/to/metrics.json with an existing file, got {item!r}")
        rows.append((name, json.loads(Path(path).read_text())))
    print(f"results on {args.data_root} (Market-1501 protocol, percent)")
    print(format_rows(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
