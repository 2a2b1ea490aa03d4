"""Embeddings of a dataset split or of any image folder: TAO-style JSON, .npy + index, or Parquet.

    python finetune/inference.py --checkpoint results/finetune/x/train/model.safetensors --image-dir DIR \
        [--output-file F] [--format json|npy|parquet] [--batch-size N] [--device cpu|cuda]
    python finetune/inference.py --config configs/finetune/card_market1501_swin_tiny.yaml \
        --checkpoint results/finetune/card_market1501_swin_tiny/train/model.safetensors \
        [--image-dir DIR ...] [--split all|query|gallery] [key=value ...]

The toolkit's own checkpoints record their model and preprocessing (input size, pixel mean / std,
resize filter, flip averaging), so ``--checkpoint`` and ``--image-dir`` are enough; SOLIDER-REID /
TAO checkpoints are rebuilt from the config's ``model`` section, with the ``dataset`` section's
mean / std (``soliderkit.finetune.extractor.load_for_embedding``). Reads the TAO ``inference``
section (``checkpoint``, ``results_dir``, ``output_file``, ``query_dataset``, ``test_dataset``; unset
folders fall back to ``dataset.query_dataset_dir`` / ``test_dataset_dir``). Without ``--image-dir`` the query and then the gallery folder are
embedded, as TAO does; ``--split`` picks one. Every image file (.jpg, .jpeg, .png) under each
folder is embedded, in sorted path order, whatever its name (junk and distractor images
included): the output has exactly one entry per image, and the tool checks that it does.

Output (``--format``, else the extension of the output file; default JSON):

* ``.json``: TAO's list of ``{"img_path": ..., "embedding": [...]}``, for every image (TAO
  itself keeps only the last batch), written batch by batch to a temporary file that replaces
  the target only when complete.
* ``.npy``: a float32 (N, D) array, plus ``<stem>.index.json`` with the image paths in row order.
* ``.parquet``: columns ``img_path`` (string) and ``embedding`` (fixed-size list of float32),
  one row group per batch.

The embedding is the model's eval-mode output (``model.neck_feat``; the flip average when the
checkpoint's preprocessing says so, ``model.with_flip_feature`` at training), not L2-normalised.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import numpy as np

from soliderkit.cli import HelpFormatter
from soliderkit.config import add_config_args, parse_config_from_args
from soliderkit.finetune.config import FinetuneConfig, add_neck_feat_argument
from soliderkit.io import atomic_path, atomic_write_json, check_writable, refuse_or_move_aside
from soliderkit.reid.image_check import readable_only

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png"})
FORMATS = {".json": "json", ".npy": "npy", ".parquet": "parquet", ".pq": "parquet"}
CONFIG_HELP = ("TAO experiment spec (optional for the toolkit's own checkpoints, which record their model and "
               "preprocessing; needed for SOLIDER-REID / TAO checkpoints and for the dataset folders; default: none)")
EPILOG = ("examples:\n"
          "  python finetune/inference.py --checkpoint results/finetune/x/train/model.safetensors "
          "--image-dir crops/ --output-file emb.npy\n"
          "  python finetune/inference.py --config configs/finetune/card_market1501_swin_tiny.yaml --checkpoint M.pth")


def list_images(folder: str | Path) -> list[str]:
    """Every image file under ``folder`` (recursively), sorted by path."""
    folder = Path(folder)
    if not folder.is_dir():
        raise SystemExit(f"image folder not found: {folder}")
    return sorted(str(p) for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def resolve_format(output_file: Path, requested: str | None) -> str:
    by_suffix = FORMATS.get(output_file.suffix.lower())
    if requested is not None and by_suffix is not None and requested != by_suffix:
        raise SystemExit(f"--format {requested} does not match the output file {output_file} ({by_suffix})")
    if requested is None and by_suffix is None:
        raise SystemExit(f"cannot tell the format of {output_file}: use a .json/.npy/.parquet name or --format")
    return requested or by_suffix


def index_path(npy_file: Path) -> Path:
    return npy_file.with_name(npy_file.stem + ".index.json")


def write_embeddings(target: str | Path, fmt: str, chunks: Iterable[tuple[Sequence[str], np.ndarray]],
                     total: int) -> int:
    """Stream (paths, embeddings) chunks into ``target``; return the number of rows written.

    The file appears only when complete (temporary file + rename); a count different from
    ``total`` is an error and leaves nothing behind.
    """
    target = Path(target)
    with atomic_path(target) as tmp:
        if fmt == "json":
            count = _write_json(tmp, chunks)
        elif fmt == "npy":
            count, paths = _write_npy(tmp, chunks, total)
        elif fmt == "parquet":
            count = _write_parquet(tmp, chunks)
        else:
            raise ValueError(f"unknown output format {fmt!r}")
        if count != total:
            raise RuntimeError(f"wrote {count} embeddings for {total} images; {target} not written")
    if fmt == "npy":
        atomic_write_json(index_path(target), {"img_path": paths, "rows": count, "embeddings": target.name})
    return count


def _write_json(tmp: Path, chunks) -> int:
    count = 0
    with open(tmp, "w", encoding="utf-8") as f:
        f.write("[")
        for paths, embeddings in chunks:
            for path, embedding in zip(paths, embeddings):
                f.write(",\n" if count else "\n")
                f.write(json.dumps({"img_path": path, "embedding": embedding.tolist()}))
                count += 1
        f.write("\n]\n" if count else "]\n")
    return count


def _write_npy(tmp: Path, chunks, total: int) -> tuple[int, list[str]]:
    array, count, paths = None, 0, []
    for chunk_paths, embeddings in chunks:
        if array is None:
            array = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32, shape=(total, embeddings.shape[1]))
        if count + len(chunk_paths) > total:
            raise RuntimeError(f"more than the {total} expected embeddings")
        array[count:count + len(chunk_paths)] = embeddings
        count += len(chunk_paths)
        paths.extend(chunk_paths)
    if array is None:
        np.save(tmp, np.zeros((0, 0), dtype=np.float32))
    else:
        array.flush()
        del array
    return count, paths


def _write_parquet(tmp: Path, chunks) -> int:
    import pyarrow as pa
    import pyarrow.parquet as pq

    writer, count = None, 0
    try:
        for paths, embeddings in chunks:
            dim = embeddings.shape[1]
            values = pa.array(np.ascontiguousarray(embeddings, dtype=np.float32).reshape(-1))
            table = pa.table({"img_path": pa.array(list(paths), pa.string()),
                              "embedding": pa.FixedSizeListArray.from_arrays(values, dim)})
            if writer is None:
                writer = pq.ParquetWriter(str(tmp), table.schema)
            writer.write_table(table)
            count += len(paths)
    finally:
        if writer is not None:
            writer.close()
    if writer is None:
        pq.write_table(pa.table({"img_path": pa.array([], pa.string())}), str(tmp))
    return count


def embed_images(model, paths: Sequence[str], preprocessing, *, batch_size: int, device, num_workers: int = 0,
                 progress: bool = True) -> Iterator[tuple[list[str], np.ndarray]]:
    """Yield (paths, float32 embeddings) one batch at a time, in the order of ``paths``, with
    ``preprocessing`` (a ``soliderkit.reid.embedding.Preprocessing``: size, mean, std, resize
    filter, flip); ``model`` is moved to ``device``."""
    from soliderkit.reid.embedding import ImageInputs, iter_embeddings

    model.eval().to(device)
    batches = iter_embeddings(model, ImageInputs(paths, preprocessing.transform()), batch_size=batch_size,
                              device=device, flip=preprocessing.flip, num_workers=num_workers, progress=progress)
    for indices, embedding in batches:
        yield [paths[i] for i in indices.tolist()], embedding.numpy()


def main(argv: list[str] | None = None) -> int:
    parser = add_config_args(
        argparse.ArgumentParser(prog="python finetune/inference.py", description=__doc__.splitlines()[0],
                                epilog=EPILOG, formatter_class=HelpFormatter),
        config_required=False, config_help=CONFIG_HELP)
    parser.add_argument("--checkpoint", metavar="PATH",
                        help="fine-tuned model: the toolkit's model.safetensors (or its folder), SOLIDER-REID or "
                             "TAO .pth (these need --config); default: inference.checkpoint")
    parser.add_argument("--image-dir", action="append", metavar="DIR",
                        help="embed every image under DIR instead of the dataset split (repeatable; default: "
                             "the query / gallery folders of the config)")
    parser.add_argument("--split", choices=["all", "query", "gallery"], default="all",
                        help="dataset split(s) to embed when no --image-dir is given (default: all = query + gallery)")
    parser.add_argument("--output-file", metavar="PATH",
                        help="embeddings file (default: inference.output_file, else "
                             "<results_dir>/inference/embeddings.<format>)")
    parser.add_argument("--format", choices=["json", "npy", "parquet"],
                        help="output format (default: from the output file's extension, else json)")
    parser.add_argument("--batch-size", type=int, help="images per forward (default: dataset.val_batch_size)")
    parser.add_argument("--num-workers", type=int, help="data-loading workers (default: dataset.num_workers)")
    parser.add_argument("--device", help="torch device (default: cuda when available, else cpu)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_neck_feat_argument(parser)
    parser.add_argument("--allow-partial", action="store_true",
                        help="load a checkpoint whose keys do not all match (missing/unexpected keys are listed)")
    parser.add_argument("--skip-unreadable", action="store_true",
                        help="leave out (and count) images that cannot be read instead of stopping")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace an existing output file (the old one is moved aside, not deleted)")
    args = parser.parse_args(argv)
    cfg = parse_config_from_args(FinetuneConfig, args)

    checkpoint = args.checkpoint or cfg.inference.checkpoint
    if checkpoint is None:
        raise SystemExit("config error: inference.checkpoint is not set (or pass --checkpoint)")
    if args.image_dir:
        folders = args.image_dir
    else:
        query = cfg.inference.query_dataset or cfg.dataset.query_dataset_dir
        gallery = cfg.inference.test_dataset or cfg.dataset.test_dataset_dir
        wanted = {"all": [("query", query), ("gallery", gallery)], "query": [("query", query)],
                  "gallery": [("gallery", gallery)]}[args.split]
        missing = [name for name, folder in wanted if folder is None]
        if missing:
            raise SystemExit(f"config error: no {' / '.join(missing)} folder: set inference.query_dataset / "
                             "inference.test_dataset (or dataset.*_dataset_dir), or pass --image-dir")
        folders = [f for _, folder in wanted for f in (folder if isinstance(folder, list) else [folder])]
    out_dir = Path(cfg.inference.results_dir or Path(cfg.results_dir) / "inference")
    default_name = f"embeddings.{args.format or 'json'}"
    output = Path(args.output_file or cfg.inference.output_file or out_dir / default_name)
    fmt = resolve_format(output, args.format)
    paths = [p for folder in folders for p in list_images(folder)]
    if not paths:
        raise SystemExit(f"no images ({', '.join(sorted(IMAGE_SUFFIXES))}) under {', '.join(map(str, folders))}")
    if args.dry_run:
        print(f"would embed {len(paths)} images from {', '.join(map(str, folders))} with {checkpoint} -> "
              f"{output} ({fmt})")
        return 0
    tool = "finetune/inference.py"
    check_writable(output.parent, tool)
    outputs = [output] + ([index_path(output)] if fmt == "npy" else [])
    refuse_or_move_aside(outputs, args.overwrite, tool)
    dropped = readable_only(paths, skip=args.skip_unreadable, what=", ".join(map(str, folders)),
                            fix="pass --skip-unreadable", progress=not args.no_progress)
    paths = [p for p in paths if p not in dropped]
    if not paths:
        raise SystemExit(f"{tool}: no readable images left")

    import torch

    from soliderkit.finetune.extractor import config_given, load_for_cli

    loaded = load_for_cli(checkpoint, cfg, config_given=config_given(args),
                          allow_partial=args.allow_partial, config_key="inference.checkpoint",
                          neck_feat=args.neck_feat)
    model = loaded.model
    print(f"embedding with {loaded.checkpoint.name}: {loaded.preprocessing.describe()}")
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    chunks = embed_images(model, paths, loaded.preprocessing,
                          batch_size=args.batch_size or cfg.dataset.val_batch_size, device=device,
                          num_workers=cfg.dataset.num_workers if args.num_workers is None else args.num_workers,
                          progress=not args.no_progress)
    count = write_embeddings(output, fmt, chunks, total=len(paths))
    extra = f" (+ {index_path(output).name})" if fmt == "npy" else ""
    print(f"wrote {count} embeddings of dimension {model.embedding_dim} to {output}{extra}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
