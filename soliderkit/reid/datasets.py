"""Person re-identification dataset parsers: file names / list files -> image records.

No image is opened here; parsers only turn a dataset's layout into
:class:`ImageRecord` lists for the train / query / gallery splits, following the
conventions of the torchreid and fast-reid Market-1501 and MSMT17 loaders:

* Market-1501 style names ``<pid>_c<camera>...`` (e.g. ``0001_c1s1_000151_00.jpg``):
  pid ``-1`` marks junk images and is dropped everywhere; pid ``0`` marks distractors,
  kept only in the gallery, where evaluation treats them as non-matching entries.
* MSMT17 release lists ``list_{train,val,query,gallery}.txt`` with lines
  ``<relative path> <pid>``; the camera is the third ``_``-separated field of the file
  name (``0000_000_01_0303morning_0015_0.jpg`` -> camera 1). MSMT17 has no distractors:
  pid 0 is an ordinary identity there.
* Cameras are 1-based on disk and 0-based in records. Train pids are relabelled to
  ``0..N-1`` (sorted by original pid); query / gallery keep their original pids.
* Real or synthetic: a Market-style folder may have a ``reid_source.json`` manifest beside
  it (in the folder or in its parent, the dataset root), written by
  ``data_shards/from_tracking.py`` or by hand. ``{"synthetic": true}`` marks every image
  synthetic; a ``sources`` list of ``{"pid_first": a, "pid_last": b, "synthetic": bool}``
  marks ranges of person ids (a converted set can mix real and synthetic sources). Without
  a manifest images are real. The flag feeds the model card's class-distribution table
  (:meth:`ReidSplits.format_card_table`: total / real / synthetic identities, images and
  cameras per subset).
"""
from __future__ import annotations

import json
import os
import re
import warnings
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable

__all__ = [
    "DatasetError",
    "ImageRecord",
    "ReidSplits",
    "DATASET_PARSERS",
    "parse_dataset",
    "parse_market1501",
    "parse_msmt17",
    "parse_three_folders",
    "merge_train_sources",
    "read_market_folder",
    "read_source_manifest",
    "SOURCE_MANIFEST_NAME",
]

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png"})
JUNK_PID = -1
DISTRACTOR_PID = 0

# "<pid>_c<camera>" at the start of a Market-style name; pid may be -1 (junk).
_MARKET_NAME = re.compile(r"^(-?\d+)_c(\d+)")
# Number of example pids quoted in the "query ids missing from gallery" warning.
_EXAMPLES_IN_WARNING = 5
# The real / synthetic manifest of a Market-style dataset folder (see the module docstring).
SOURCE_MANIFEST_NAME = "reid_source.json"


class DatasetError(ValueError):
    """A dataset folder or list file does not have the expected layout or names."""


@dataclass(frozen=True)
class ImageRecord:
    path: str   # root-joined path, absolute if the root was
    pid: int    # train: relabelled 0..N-1; query/gallery: original id (0 = distractor)
    camid: int  # 0-based
    source: str  # dataset name, e.g. "market1501"
    synthetic: bool = False  # rendered, not filmed (``reid_source.json``); the card's table splits on it


@dataclass
class ReidSplits:
    train: list[ImageRecord]
    query: list[ImageRecord]
    gallery: list[ImageRecord]
    name: str
    # Gallery pid that marks distractor images (Market: 0); None where every pid is a
    # real person (MSMT17 numbers identities from 0).
    distractor_pid: int | None = DISTRACTOR_PID

    def summary_rows(self) -> list[dict]:
        """One row per split: identities, images, cameras.

        Distractor images count as images but not as an identity (torchreid's summary
        counts them as one extra id, e.g. 751 instead of 750 for the Market gallery).
        """
        rows = []
        subsets = [("train", self.train), ("query", self.query), ("gallery", self.gallery)]
        train_sources = sorted({r.source for r in self.train})
        if len(train_sources) > 1:  # multi-source training: one row per source, then the total
            subsets[0:0] = [(f"train ({source})", [r for r in self.train if r.source == source])
                            for source in train_sources]
            subsets[len(train_sources)] = ("train (total)", self.train)
        for subset, records in subsets:
            rows.append({
                "subset": subset,
                "identities": len({r.pid for r in records if not self._is_distractor(r, subset)}),
                "images": len(records),
                "cameras": len({r.camid for r in records}),
            })
        return rows

    def _is_distractor(self, record: ImageRecord, subset: str) -> bool:
        # Train pids are relabelled 0..N-1, so no train record is a distractor.
        return not subset.startswith("train") and self.distractor_pid is not None and record.pid == self.distractor_pid

    def format_table(self) -> str:
        """Printable statistics table: subset | # identities | # images | # cameras; followed by
        the model card's real / synthetic table (:meth:`format_card_table`) when any image is
        synthetic. Folders of real images only print the first table alone."""
        table = self._format_counts()
        return table + "\n" + self.format_card_table() if self.has_synthetic else table

    def _format_counts(self) -> str:
        header = ("subset", "# identities", "# images", "# cameras")
        body = [(row["subset"], str(row["identities"]), str(row["images"]), str(row["cameras"]))
                for row in self.summary_rows()]
        widths = [max(len(cells[i]) for cells in (header, *body)) for i in range(len(header))]

        def line(cells) -> str:
            first = cells[0].ljust(widths[0])
            rest = [cell.rjust(width) for cell, width in zip(cells[1:], widths[1:])]
            return "| " + " | ".join([first, *rest]) + " |"

        rule = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
        lines = [f"{self.name} statistics:", line(header), rule, *(line(c) for c in body)]
        num_distractors = sum(self._is_distractor(r, "gallery") for r in self.gallery)
        if num_distractors:
            plural = "s" if num_distractors != 1 else ""
            lines.append(f"(gallery images include {num_distractors} distractor image{plural}, "
                         f"pid {self.distractor_pid}, not counted as identities)")
        return "\n".join(lines)

    @property
    def has_synthetic(self) -> bool:
        return any(r.synthetic for r in (*self.train, *self.query, *self.gallery))

    def card_rows(self) -> list[dict]:
        """The model card's class distribution: per subset (train, test = gallery, query, in the
        card's order) identities, images and cameras in total, of real and of synthetic images.

        Identities and cameras of different sources never coincide (multi-source training
        relabels them apart), so real + synthetic = total in every column.
        """
        rows = []
        for subset, split, records in (("train", "train", self.train), ("test", "gallery", self.gallery),
                                       ("query", "query", self.query)):
            row = {"subset": subset}
            for part, chosen in (("total", records), ("real", [r for r in records if not r.synthetic]),
                                 ("synthetic", [r for r in records if r.synthetic])):
                row[f"{part}_identities"] = len({r.pid for r in chosen if not self._is_distractor(r, split)})
                row[f"{part}_images"] = len(chosen)
                row[f"{part}_cameras"] = len({r.camid for r in chosen})
            rows.append(row)
        return rows

    def format_card_table(self) -> str:
        """:meth:`card_rows` laid out as the model card's class-distribution table."""
        parts = ("total", "real", "synthetic")
        header = ["subset"] + [f"no. {part} {what}" for part in parts for what in ("identities", "images", "cameras")]
        keys = [f"{part}_{what}" for part in parts for what in ("identities", "images", "cameras")]
        body = [[row["subset"].capitalize()] + [str(row[k]) for k in keys] for row in self.card_rows()]
        widths = [max(len(cells[i]) for cells in (header, *body)) for i in range(len(header))]

        def line(cells) -> str:
            return "| " + " | ".join([cells[0].ljust(widths[0])] +
                                     [c.rjust(w) for c, w in zip(cells[1:], widths[1:])]) + " |"

        rule = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
        return "\n".join([f"{self.name} class distribution (model card layout):", line(header), rule,
                          *(line(c) for c in body)])


# --------------------------------------------------------------------------------------
# Shared helpers
# --------------------------------------------------------------------------------------

def _relabel_train(records: list[ImageRecord]) -> list[ImageRecord]:
    """Map original train pids to 0..N-1 in sorted order of the original pid."""
    new_label = {pid: label for label, pid in enumerate(sorted({r.pid for r in records}))}
    return [replace(r, pid=new_label[r.pid]) for r in records]


def _drop_distractors(records: list[ImageRecord], split: str, origin: str,
                      distractor_pid: int) -> list[ImageRecord]:
    kept = [r for r in records if r.pid != distractor_pid]
    dropped = len(records) - len(kept)
    if dropped:
        warnings.warn(
            f"{origin}: dropped {dropped} distractor image(s) (pid {distractor_pid}) from the "
            f"{split} split; distractors are only meaningful in the gallery")
    return kept


def _require_nonempty(records: list[ImageRecord], split: str, origin: str) -> None:
    if not records:
        raise DatasetError(f"{origin}: no usable images for the {split} split "
                           "(after dropping junk / distractor images)")


def _warn_query_ids_missing_from_gallery(query: list[ImageRecord], gallery: list[ImageRecord],
                                         name: str) -> None:
    missing = sorted({r.pid for r in query} - {r.pid for r in gallery})
    if missing:
        examples = ", ".join(str(pid) for pid in missing[:_EXAMPLES_IN_WARNING])
        more = ", ..." if len(missing) > _EXAMPLES_IN_WARNING else ""
        subject = "query identity never appears" if len(missing) == 1 else "query identities never appear"
        warnings.warn(
            f"{name}: {len(missing)} {subject} in the gallery (e.g. pid {examples}{more}); "
            "evaluation will skip those queries")


def _build_splits(train, query, gallery, name: str, origins: tuple[str, str, str],
                  distractor_pid: int | None) -> ReidSplits:
    """Common post-processing: distractor policy, emptiness checks, relabelling, warnings."""
    train_origin, query_origin, gallery_origin = origins
    if distractor_pid is not None:
        train = _drop_distractors(train, "train", train_origin, distractor_pid)
        query = _drop_distractors(query, "query", query_origin, distractor_pid)
    for records, split, origin in ((train, "train", train_origin), (query, "query", query_origin),
                                   (gallery, "gallery", gallery_origin)):
        _require_nonempty(records, split, origin)
    _warn_query_ids_missing_from_gallery(query, gallery, name)
    return ReidSplits(train=_relabel_train(train), query=query, gallery=gallery, name=name,
                      distractor_pid=distractor_pid)


# --------------------------------------------------------------------------------------
# Market-1501 style: three folders of "<pid>_c<camera>..." images
# --------------------------------------------------------------------------------------

def _list_images(folder: Path) -> list[str]:
    """Sorted image file names in ``folder``; other files are ignored silently."""
    if not folder.is_dir():
        raise DatasetError(f"image folder not found: {folder}")
    with os.scandir(folder) as entries:
        names = sorted(e.name for e in entries
                       if e.is_file() and os.path.splitext(e.name)[1].lower() in IMAGE_EXTENSIONS)
    if not names:
        raise DatasetError(
            f"no images ({', '.join(sorted(IMAGE_EXTENSIONS))}) in folder: {folder}")
    return names


def _parse_market_name(file_name: str, folder: Path) -> tuple[int, int]:
    """(pid, 1-based camera) from ``<pid>_c<camera>...``."""
    match = _MARKET_NAME.match(file_name)
    if match is None:
        raise DatasetError(
            f"cannot parse person id and camera from {folder / file_name}: "
            "expected a name like '0001_c1s1_000151_00.jpg' (<pid>_c<camera>...)")
    pid, camera = int(match.group(1)), int(match.group(2))
    if pid < JUNK_PID:
        raise DatasetError(f"invalid person id {pid} in {folder / file_name} (expected >= -1)")
    if camera < 1:
        raise DatasetError(f"invalid camera c{camera} in {folder / file_name}: cameras are numbered from 1")
    return pid, camera


def read_source_manifest(folder) -> Callable[[int], bool]:
    """``pid -> synthetic?`` for a Market-style folder, from the ``reid_source.json`` in the
    folder or in its parent (see the module docstring); every pid is real without one."""
    folder = Path(folder)
    for candidate in (folder / SOURCE_MANIFEST_NAME, folder.parent / SOURCE_MANIFEST_NAME):
        if candidate.is_file():
            break
    else:
        return lambda pid: False
    try:
        manifest = json.loads(candidate.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise DatasetError(f"{candidate}: not a readable JSON manifest ({exc})") from None
    if not isinstance(manifest, dict):
        raise DatasetError(f"{candidate}: expected a JSON object with 'synthetic' and/or 'sources'")
    default = manifest.get("synthetic", False)
    if not isinstance(default, bool):
        raise DatasetError(f"{candidate}: 'synthetic' must be true or false, got {default!r}")
    ranges = []
    for index, entry in enumerate(manifest.get("sources", [])):
        try:
            first, last, flag = int(entry["pid_first"]), int(entry["pid_last"]), entry["synthetic"]
        except (KeyError, TypeError, ValueError):
            raise DatasetError(f"{candidate}: sources[{index}] needs integer 'pid_first', 'pid_last' "
                               "and a boolean 'synthetic'") from None
        if not isinstance(flag, bool) or first > last:
            raise DatasetError(f"{candidate}: sources[{index}]: 'synthetic' must be a boolean and "
                               "pid_first <= pid_last")
        ranges.append((first, last, flag))

    def is_synthetic(pid: int) -> bool:
        for first, last, flag in ranges:
            if first <= pid <= last:
                return flag
        return default

    return is_synthetic


def read_market_folder(folder, source: str) -> list[ImageRecord]:
    """Records of one folder of Market-style named images (junk pid -1 dropped), each marked
    real or synthetic by the folder's ``reid_source.json`` (real without one)."""
    folder = Path(folder)
    is_synthetic = read_source_manifest(folder)
    records = []
    for file_name in _list_images(folder):
        pid, camera = _parse_market_name(file_name, folder)
        if pid == JUNK_PID:
            continue
        records.append(ImageRecord(str(folder / file_name), pid, camera - 1, source, is_synthetic(pid)))
    return records


def parse_folders(train_dirs, query_dir, gallery_dir, name: str) -> ReidSplits:
    """Market-style named images in explicitly named folders (TAO's ``dataset`` section).

    ``train_dirs`` is one folder or a list of them; several folders are trained on together
    with identities and cameras kept apart (:func:`merge_train_sources`), each record's
    ``source`` naming the dataset folder it came from. ``query_dir`` / ``gallery_dir`` may
    likewise be lists of the same length, paired in order (query i is matched against gallery
    i's identities): each pair's pids and cameras are shifted past the previous pairs' so two
    datasets' pid 1 stay two people, distractors (pid 0) stay distractors. One folder each
    keeps the original pids, as before.
    """
    single = isinstance(train_dirs, (str, os.PathLike))
    train_dirs = [Path(train_dirs)] if single else [Path(d) for d in train_dirs]
    sources = []
    for index, folder in enumerate(train_dirs):
        source = name if single else _source_name(folder, index, train_dirs)
        records = _drop_distractors(read_market_folder(folder, source), "train", str(folder),
                                    DISTRACTOR_PID)
        _require_nonempty(records, "train", str(folder))
        sources.append(records)
    query, gallery = _read_eval_pairs(query_dir, gallery_dir, name)
    _warn_query_ids_missing_from_gallery(query, gallery, name)
    return ReidSplits(train=merge_train_sources(sources), query=query, gallery=gallery, name=name,
                      distractor_pid=DISTRACTOR_PID)


def _read_eval_pairs(query_dirs, gallery_dirs, name: str) -> tuple[list[ImageRecord], list[ImageRecord]]:
    """Query and gallery records of one folder pair, or of several pairs kept apart."""
    single = isinstance(query_dirs, (str, os.PathLike)) and isinstance(gallery_dirs, (str, os.PathLike))
    query_dirs = [query_dirs] if isinstance(query_dirs, (str, os.PathLike)) else list(query_dirs)
    gallery_dirs = [gallery_dirs] if isinstance(gallery_dirs, (str, os.PathLike)) else list(gallery_dirs)
    if len(query_dirs) != len(gallery_dirs):
        raise DatasetError(f"{len(query_dirs)} query folder(s) but {len(gallery_dirs)} gallery folder(s): "
                           "query and gallery folders are paired in order, one pair per dataset")
    query: list[ImageRecord] = []
    gallery: list[ImageRecord] = []
    pid_offset = camera_offset = 0
    folders = [Path(q) for q in query_dirs]
    for index, (query_dir, gallery_dir) in enumerate(zip(query_dirs, gallery_dirs)):
        source = name if single else _source_name(Path(query_dir), index, folders)
        pair_query = _drop_distractors(read_market_folder(query_dir, source), "query", str(query_dir),
                                       DISTRACTOR_PID)
        pair_gallery = read_market_folder(gallery_dir, source)
        _require_nonempty(pair_query, "query", str(query_dir))
        _require_nonempty(pair_gallery, "gallery", str(gallery_dir))
        if not single:
            def shift(r: ImageRecord) -> ImageRecord:
                pid = r.pid if r.pid == DISTRACTOR_PID else r.pid + pid_offset
                return replace(r, pid=pid, camid=r.camid + camera_offset)
            pair_query, pair_gallery = [shift(r) for r in pair_query], [shift(r) for r in pair_gallery]
            pid_offset = max(r.pid for r in pair_query + pair_gallery)
            camera_offset = max(r.camid for r in pair_query + pair_gallery) + 1
        query += pair_query
        gallery += pair_gallery
    return query, gallery


def _source_name(folder: Path, index: int, folders: list[Path]) -> str:
    """The dataset folder's name (parent of the train folder), made unique among the sources."""
    names = [f.resolve().parent.name for f in folders]
    base = names[index] or str(folder)
    return base if names.count(names[index]) == 1 else f"{base}#{index + 1}"


def parse_three_folders(root, train_dir: str = "train", query_dir: str = "query",
                        gallery_dir: str = "test", name: str | None = None) -> ReidSplits:
    """Parse a dataset stored as three folders of Market-style named images under ``root``.

    ``name`` defaults to the root folder's name; it becomes every record's ``source``.
    """
    root = Path(root)
    return parse_folders(root / train_dir, root / query_dir, root / gallery_dir,
                         name or root.resolve().name)


def parse_market1501(root, train_dir: str = "bounding_box_train", query_dir: str = "query",
                     gallery_dir: str = "bounding_box_test", name: str = "market1501") -> ReidSplits:
    """Parse Market-1501 (``root`` holds bounding_box_train / query / bounding_box_test)."""
    return parse_three_folders(root, train_dir, query_dir, gallery_dir, name)


def merge_train_sources(sources: list[list[ImageRecord]]) -> list[ImageRecord]:
    """Union of several training sets with identities and cameras kept apart.

    Each source's pids are relabelled to a contiguous block after the previous source's
    (so the same number in two datasets never names one person), and its cameras are
    offset the same way (camera 1 of Market-1501 is not camera 1 of another set).
    """
    merged: list[ImageRecord] = []
    pid_offset = camera_offset = 0
    for records in sources:
        records = _relabel_train(records)
        merged += [replace(r, pid=r.pid + pid_offset, camid=r.camid + camera_offset) for r in records]
        pid_offset += len({r.pid for r in records})
        camera_offset += max(r.camid for r in records) + 1
    return merged


# --------------------------------------------------------------------------------------
# MSMT17 release: list files + image folders
# --------------------------------------------------------------------------------------

# Image folders per release: V1 is the common one; V2 (blurred faces) renames them.
_MSMT17_IMAGE_FOLDERS = (("train", "test"), ("mask_train_v2", "mask_test_v2"))
_MSMT17_RELEASE_FOLDERS = ("MSMT17_V1", "MSMT17_V2")


def _locate_msmt17(root: Path) -> tuple[Path, Path, Path]:
    """(folder holding list_*.txt, train image folder, test image folder)."""
    candidates = [root] + [root / release for release in _MSMT17_RELEASE_FOLDERS]
    base = next((c for c in candidates if (c / "list_train.txt").is_file()), None)
    if base is None:
        raise DatasetError(
            f"MSMT17 list files not found: expected list_train.txt in {root} or in "
            f"{' / '.join(str(root / r) for r in _MSMT17_RELEASE_FOLDERS)}")
    for train_name, test_name in _MSMT17_IMAGE_FOLDERS:
        if (base / train_name).is_dir() and (base / test_name).is_dir():
            return base, base / train_name, base / test_name
    expected = " or ".join(f"{a}/ + {b}/" for a, b in _MSMT17_IMAGE_FOLDERS)
    raise DatasetError(f"MSMT17 image folders not found in {base}: expected {expected}")


def _parse_msmt17_camera(relative_path: str) -> int | None:
    """1-based camera from an MSMT17 file name, or None if the name has no such field."""
    fields = Path(relative_path).name.split("_")
    if len(fields) < 3 or not fields[2].isdigit():
        return None
    return int(fields[2])


def _read_msmt17_list(list_file: Path, image_folder: Path, source: str) -> list[ImageRecord]:
    if not list_file.is_file():
        raise DatasetError(f"MSMT17 list file not found: {list_file}")
    records = []
    with open(list_file, encoding="utf-8") as lines:
        for line_number, line in enumerate(lines, start=1):
            fields = line.split()
            if not fields:
                continue  # blank lines (e.g. a trailing newline) carry nothing
            where = f"{list_file}, line {line_number}"
            if len(fields) != 2 or not fields[1].lstrip("-").isdigit():
                raise DatasetError(f"{where}: expected '<relative image path> <pid>', got {line.strip()!r}")
            relative_path, pid = fields[0], int(fields[1])
            if pid < 0:
                raise DatasetError(f"{where}: negative person id {pid}")
            camera = _parse_msmt17_camera(relative_path)
            if camera is None:
                raise DatasetError(
                    f"{where}: cannot read the camera from {relative_path!r} (expected names like "
                    "'0000_000_01_0303morning_0015_0.jpg', camera = third '_' field)")
            if camera < 1:
                raise DatasetError(f"{where}: invalid camera {camera} in {relative_path!r}: cameras are numbered from 1")
            records.append(ImageRecord(str(image_folder / relative_path), pid, camera - 1, source))
    if not records:
        raise DatasetError(f"MSMT17 list file has no entries: {list_file}")
    return records


def parse_msmt17(root, name: str = "msmt17") -> ReidSplits:
    """Parse the MSMT17 release (V1 ``train``/``test`` folders, or V2 ``mask_*_v2``).

    ``root`` is the release folder holding ``list_*.txt``, or its parent containing
    ``MSMT17_V1`` / ``MSMT17_V2``. Train = list_train + list_val: the val list holds
    held-out images of the *same* training identities (1,041 ids, 32,621 images in all),
    so both share one id space and are relabelled together. Image existence is not
    checked (126k stat calls); a missing file surfaces when it is loaded.
    """
    base, train_folder, test_folder = _locate_msmt17(Path(root))
    train = (_read_msmt17_list(base / "list_train.txt", train_folder, name)
             + _read_msmt17_list(base / "list_val.txt", train_folder, name))
    query = _read_msmt17_list(base / "list_query.txt", test_folder, name)
    gallery = _read_msmt17_list(base / "list_gallery.txt", test_folder, name)
    origins = (f"{base / 'list_train.txt'} + list_val.txt", str(base / "list_query.txt"),
               str(base / "list_gallery.txt"))
    # MSMT17 has no distractor images: pid 0 is an ordinary identity there.
    return _build_splits(train, query, gallery, name, origins, distractor_pid=None)


# --------------------------------------------------------------------------------------
# Registry
# --------------------------------------------------------------------------------------

DATASET_PARSERS: dict[str, Callable[..., ReidSplits]] = {
    "market1501": parse_market1501,
    "msmt17": parse_msmt17,
    "three_folders": parse_three_folders,
}


def parse_dataset(kind: str, root, **kwargs) -> ReidSplits:
    """Parse a dataset by kind name; ``kwargs`` go to the parser (folder names, name)."""
    try:
        parser = DATASET_PARSERS[kind]
    except KeyError:
        known = ", ".join(sorted(DATASET_PARSERS))
        raise DatasetError(f"unknown dataset kind {kind!r}; known kinds: {known}") from None
    return parser(root, **kwargs)
