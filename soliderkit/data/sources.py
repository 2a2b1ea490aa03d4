"""Image sources for shard building: list every image of SRC in a fixed order, read its bytes.

Three kinds of SRC (``detect_source_kind`` picks one; ``--source-kind`` overrides it):

* ``tree``: a folder of any depth holding ``.jpg``/``.jpeg``/``.png``/``.webp`` files
  (extension case ignored; hidden files and folders, whose names start with ``.``, are
  skipped). A Market-1501-style folder is a tree: every file name of the form
  ``<pid>_c<camera>...`` (``0001_c1s1_000151_00.jpg``) gets ``pid`` and ``camera``
  labels, as written on disk (camera 1-based; pid -1 = junk, 0 = distractor).
* ``list``: a text file with one image path per line, relative to ``root`` (default: the
  list's folder) unless absolute, optionally followed by whitespace and an integer
  identity label (MSMT17's ``list_train.txt`` layout). Blank lines and lines starting
  with ``#`` are ignored. Market-style file names get labels as in a tree; an explicit
  label column wins for ``pid``.
* ``lmdb``: an LMDB database (a folder holding ``data.mdb``, or a single ``.mdb`` file)
  whose values are encoded images, as LUPerson is distributed (ASCII keys, raw JPEG
  bytes). Keys wrapped in double underscores (``__keys__``, ``__len__``) are metadata
  other LMDB writers add and are ignored.

Listing order is the sorted relative path (tree), the line order (list) or the LMDB key
order (byte-wise), so a re-run plans the same shards from the same source.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

__all__ = [
    "IMAGE_EXTENSIONS",
    "SOURCE_KINDS",
    "ImageSource",
    "SourceError",
    "SourceItem",
    "close_lmdb_environments",
    "detect_source_kind",
    "labels_from_name",
    "looks_like_image",
]

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".webp"})
SOURCE_KINDS = ("tree", "list", "lmdb")

# "<pid>_c<camera>" at the start of a Market-1501-style name (pid may be -1: junk).
_MARKET_NAME = re.compile(r"^(-?\d+)_c(\d+)")
# How many LMDB values are sniffed before declaring that a database holds no images.
_LMDB_SNIFF_VALUES = 32


class SourceError(ValueError):
    """SRC is missing, empty or not a kind of image source this module reads."""


class SourceItem(NamedTuple):
    """One image of a source. Kept small: a LUPerson-sized listing holds millions."""

    name: str                  # relative path, list entry or LMDB key: shown in reports and metadata
    size: int                  # encoded bytes (from stat or the LMDB value), for shard planning
    key: bytes | None = None   # the raw LMDB key (names of non-UTF-8 keys are hex)
    label: int | None = None   # identity label from a list file's second column


@dataclass(frozen=True)
class ListingProblem:
    """An entry of SRC that could not even be listed (missing file, unreadable folder)."""

    name: str
    reason: str


def labels_from_name(name: str) -> dict:
    """``{"pid": int, "camera": int}`` for a Market-1501-style file name, else ``{}``."""
    match = _MARKET_NAME.match(os.path.basename(name))
    if match is None:
        return {}
    return {"pid": int(match.group(1)), "camera": int(match.group(2))}


def looks_like_image(data: bytes) -> bool:
    """Cheap magic-number test for JPEG, PNG and WebP (no decoding)."""
    return (data[:3] == b"\xff\xd8\xff" or data[:8] == b"\x89PNG\r\n\x1a\n"
            or (data[:4] == b"RIFF" and data[8:12] == b"WEBP"))


def _is_lmdb(path: Path) -> bool:
    return (path.is_dir() and (path / "data.mdb").is_file()) or (path.is_file() and path.suffix == ".mdb")


def detect_source_kind(path: str | os.PathLike) -> str:
    """``lmdb`` for an LMDB folder/file, ``tree`` for any other folder, ``list`` for a text file."""
    path = Path(path)
    if not path.exists():
        raise SourceError(f"SRC not found: {path}")
    if _is_lmdb(path):
        return "lmdb"
    if path.is_dir():
        return "tree"
    return "list"


# Per-process cache of open LMDB environments: an environment must not cross a fork, so
# each worker process opens its own on first read.
_LMDB_ENVIRONMENTS: dict[tuple[int, str], object] = {}


def close_lmdb_environments() -> None:
    """Close this process's LMDB environments; call before forking workers.

    py-lmdb refuses to open a path that its (inherited) registry says is already open, so
    a child forked while the parent holds an environment could not open its own.
    """
    for cache_key in [key for key in _LMDB_ENVIRONMENTS if key[0] == os.getpid()]:
        _LMDB_ENVIRONMENTS.pop(cache_key).close()


def _open_lmdb(path: Path):
    import lmdb

    cache_key = (os.getpid(), str(path))
    env = _LMDB_ENVIRONMENTS.get(cache_key)
    if env is None:
        try:
            # lock=False: a read-only consumer must work on a read-only copy of the data.
            env = lmdb.open(str(path), readonly=True, lock=False, readahead=False,
                            subdir=path.is_dir(), max_readers=512)
        except lmdb.Error as exn:
            raise SourceError(f"cannot open LMDB database {path}: {exn}") from exn
        _LMDB_ENVIRONMENTS[cache_key] = env
    return env


@dataclass(frozen=True)
class ImageSource:
    """Where images come from; small and picklable, so build workers receive a copy.

    ``list_items()`` returns the images in their fixed order plus the entries that could
    not be listed; ``read(item)`` returns an image's encoded bytes exactly as stored.
    """

    kind: str
    path: Path
    root: Path   # what relative list entries are resolved against (the folder itself for a tree)

    @classmethod
    def open(cls, path: str | os.PathLike, kind: str = "auto",
             root: str | os.PathLike | None = None) -> "ImageSource":
        path = Path(path).expanduser().resolve()
        if not path.exists():
            raise SourceError(f"SRC not found: {path}")
        if kind == "auto":
            kind = detect_source_kind(path)
        if kind not in SOURCE_KINDS:
            raise SourceError(f"unknown source kind {kind!r} (expected one of {', '.join(SOURCE_KINDS)})")
        if kind == "tree" and not path.is_dir():
            raise SourceError(f"SRC {path} is a file, but source kind 'tree' needs a folder")
        if kind == "list" and not path.is_file():
            raise SourceError(f"SRC {path} is a folder, but source kind 'list' needs a text file")
        if kind == "lmdb" and not _is_lmdb(path):
            raise SourceError(f"SRC {path} is not an LMDB database (no data.mdb inside, not a .mdb file)")
        if root is not None and kind != "list":
            raise SourceError("--root only applies to a file-list SRC")
        if kind == "list":
            root_path = Path(root).expanduser().resolve() if root is not None else path.parent
            if not root_path.is_dir():
                raise SourceError(f"list root folder not found: {root_path}")
        else:
            root_path = path if kind == "tree" else path.parent
        return cls(kind=kind, path=path, root=root_path)

    # ------------------------------------------------------------------ listing

    def list_items(self) -> tuple[list[SourceItem], list[ListingProblem]]:
        """All images in build order, and the entries that could not be listed."""
        if self.kind == "tree":
            items, problems = self._list_tree()
        elif self.kind == "list":
            items, problems = self._list_file()
        else:
            items, problems = self._list_lmdb()
        if not items:
            detail = f" ({len(problems)} entries could not be read)" if problems else ""
            what = {"tree": "no .jpg/.jpeg/.png/.webp files", "list": "no image paths",
                    "lmdb": "no entries"}[self.kind]
            raise SourceError(f"empty source: {self.path} has {what}{detail}")
        return items, problems

    def _list_tree(self) -> tuple[list[SourceItem], list[ListingProblem]]:
        items: list[SourceItem] = []
        problems: list[ListingProblem] = []
        pending = [self.path]
        while pending:
            folder = pending.pop()
            try:
                entries = list(os.scandir(folder))
            except OSError as exn:
                problems.append(ListingProblem(self._relative(folder), f"cannot list folder: {exn.strerror or exn}"))
                continue
            for entry in entries:
                if entry.name.startswith("."):
                    continue  # hidden files (._x.jpg resource forks, editor temp files) are not images
                try:
                    if entry.is_dir():
                        pending.append(Path(entry.path))
                    elif os.path.splitext(entry.name)[1].lower() in IMAGE_EXTENSIONS:
                        items.append(SourceItem(self._relative(entry.path), entry.stat().st_size))
                except OSError as exn:  # a dangling symlink, a file removed while listing
                    problems.append(ListingProblem(self._relative(entry.path), f"cannot stat: {exn.strerror or exn}"))
        items.sort(key=lambda item: item.name)
        return items, problems

    def _relative(self, path) -> str:
        return Path(path).relative_to(self.path).as_posix()

    def _list_file(self) -> tuple[list[SourceItem], list[ListingProblem]]:
        items: list[SourceItem] = []
        problems: list[ListingProblem] = []
        try:
            lines = self.path.read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as exn:
            raise SourceError(f"cannot read file list {self.path}: {exn}") from exn
        for line in lines:
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            name, label = line, None
            parts = line.rsplit(maxsplit=1)
            if len(parts) == 2 and re.fullmatch(r"-?\d+", parts[1]):
                name, label = parts[0], int(parts[1])
            try:
                size = self.resolve(name).stat().st_size
            except OSError as exn:
                problems.append(ListingProblem(name, f"cannot stat: {exn.strerror or exn}"))
                continue
            items.append(SourceItem(name, size, label=label))
        return items, problems

    def _list_lmdb(self) -> tuple[list[SourceItem], list[ListingProblem]]:
        env = _open_lmdb(self.path)
        items: list[SourceItem] = []
        sniffed_images = sniffed = 0
        # buffers=True: sizes come from the value headers without copying millions of images.
        with env.begin(buffers=True) as txn:
            for key, value in txn.cursor():
                key = bytes(key)
                if key.startswith(b"__") and key.endswith(b"__"):
                    continue
                if sniffed < _LMDB_SNIFF_VALUES:
                    sniffed += 1
                    sniffed_images += looks_like_image(bytes(value[:12]))
                try:
                    name = key.decode("utf-8")
                except UnicodeDecodeError:
                    name = "0x" + key.hex()
                items.append(SourceItem(name, len(value), key=key))
        close_lmdb_environments()  # the listing process may fork build workers next
        if sniffed and not sniffed_images:
            raise SourceError(f"LMDB database {self.path} holds no encoded images: none of its first "
                              f"{sniffed} values is a JPEG, PNG or WebP file")
        return items, []

    # ------------------------------------------------------------------ reading

    def resolve(self, name: str) -> Path:
        path = Path(name)
        return path if path.is_absolute() else self.root / path

    def read(self, item: SourceItem) -> bytes:
        """The image's bytes as stored. Raises ``OSError`` (file) or ``KeyError`` (LMDB)."""
        if self.kind == "lmdb":
            with _open_lmdb(self.path).begin() as txn:
                data = txn.get(item.key)
            if data is None:
                raise KeyError(f"LMDB key {item.name!r} disappeared")
            return data
        return self.resolve(item.name).read_bytes()

    def labels(self, item: SourceItem) -> dict:
        """Labels kept in the sample metadata (empty for LMDB sources)."""
        if self.kind == "lmdb":
            return {}
        labels = labels_from_name(item.name)
        if item.label is not None:
            labels["pid"] = item.label
        return labels
