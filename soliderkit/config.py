"""Typed experiment configs: nested dataclasses filled from YAML plus ``key=value`` overrides.

A schema is a tree of ``@dataclass`` classes whose fields carry type hints and defaults.
``load_config`` reads a YAML file, applies dotted command-line overrides, checks every key
and type against the schema, calls each section's ``validate()`` and returns the instance.
Every problem is a ``ConfigError`` naming the dotted key, the value and where it came from.

A file may build on others: a top-level ``_base_: other.yaml`` (or a list of files, merged left
to right) names bases, relative to the naming file's folder, which may have bases themselves.
The file's own keys go on top: mappings merge key by key, any other value (a scalar, a list,
null) replaces the base's whole. ``_base_`` itself is not a config key. Errors name the file that
wrote the offending key, base or child; ``${...}`` references resolve after the merge.

Field helpers for schema modules:

* ``option(default, no_effect="why")`` -- a field with a (possibly mutable) default. When
  ``no_effect`` is given and the user sets the field, one warning line is logged saying so.
* ``require(condition, "field", "message", *related)`` -- used inside ``validate(self)``;
  the loader turns a failure into a ``ConfigError`` with the full key path and source.
* A class attribute ``ALIASES = {"old_name": "new_name"}`` accepts a renamed key.

Warnings go through ``logging`` (logger ``soliderkit.config``), one line each.
"""
from __future__ import annotations

import argparse
import copy
import dataclasses
import difflib
import logging
import os
import re
import types
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin, get_type_hints

import yaml

from soliderkit.cli import HelpFormatter
from soliderkit.io import atomic_write_text

log = logging.getLogger(__name__)

__all__ = [
    "ConfigError", "option", "require", "load_config", "config_to_dict", "format_config",
    "save_resolved_config", "add_config_args", "parse_config_from_args",
]


class ConfigError(ValueError):
    """A bad config: the message names the dotted key, the offending value and its source."""


class _Invalid(Exception):
    """Raised by ``require``; carries field names relative to the section being validated."""

    def __init__(self, keys: tuple[str, ...], message: str):
        super().__init__(message)
        self.keys, self.message = keys, message


def require(condition: bool, key: str, message: str, *related: str) -> None:
    """Inside ``validate(self)``: fail on ``key`` (dotted, relative to self) unless ``condition``.

    ``related`` names other fields the check depends on; the error's source is the first of
    ``key, *related`` that the user set.
    """
    if not condition:
        raise _Invalid((key, *related), message)


def option(default: Any, *, no_effect: str | None = None) -> Any:
    """A dataclass field; mutable defaults (lists, dicts, sections) are copied per instance."""
    metadata = {"no_effect": no_effect} if no_effect else {}
    if isinstance(default, (list, dict, set)) or dataclasses.is_dataclass(default):
        return dataclasses.field(default_factory=lambda: copy.deepcopy(default), metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


# ---------------------------------------------------------------------------------------------
# YAML: the safe loader with two YAML 1.2 habits: only true/false are booleans (so `no`, `on`,
# `yes` stay strings, e.g. `mixed_precision: no`), and `5e-4` is a float (YAML 1.1: a string).

class _Loader(yaml.SafeLoader):
    pass


_BOOL = "tag:yaml.org,2002:bool"
_Loader.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in resolvers if tag != _BOOL]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_Loader.add_implicit_resolver(_BOOL, re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF"))
_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:\d[\d_]*(?:\.[\d_]*)?|\.\d[\d_]*)[eE][-+]?\d+$"),
    list("-+0123456789."),
)


def _parse_yaml(text: str) -> Any:
    return yaml.load(text, Loader=_Loader)  # noqa: S506 -- _Loader is a SafeLoader


def _override_source(text: str) -> str:
    return f"command-line override `{text}`"


def _read_file(path: Path) -> dict:
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found")
    try:
        data = _parse_yaml(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of keys, got {type(data).__name__}")
    return data


def _mark(data: Mapping, prefix: str, source: str, sources: dict[str, str]) -> None:
    """Record ``source`` for every key path in ``data``."""
    for k, v in data.items():
        key = f"{prefix}.{k}" if prefix else str(k)
        sources[key] = source
        if isinstance(v, Mapping):
            _mark(v, key, source, sources)


BASE_KEY = "_base_"


def _bases(data: dict, path: Path) -> list[str]:
    """Pop ``_base_`` from a file's top level: the base file names, in merge order."""
    value = data.pop(BASE_KEY, None)
    if value is None:
        return []
    names = [value] if isinstance(value, str) else value
    if not isinstance(names, list) or not all(isinstance(n, str) and n.strip() for n in names):
        raise ConfigError(f"{path}: {BASE_KEY}={_show(value)}: expected a file path or a list of file paths")
    return names


def _forget(sources: dict[str, str], key: str) -> None:
    """Drop the recorded source of ``key`` and of every key below it."""
    for k in [k for k in sources if k == key or k.startswith(key + ".")]:
        del sources[k]


def _merge_tracked(dst: dict, src: Mapping, prefix: str, dst_sources: dict[str, str],
                   src_sources: Mapping[str, str]) -> None:
    """Merge ``src`` into ``dst``: mappings key by key, anything else replaces the old value whole.
    Every key path written takes its source from ``src_sources``; a replaced subtree's are dropped.
    Mappings are rebuilt, never shared, so later merges cannot reach into a base's data."""
    for k, v in src.items():
        key = f"{prefix}.{k}" if prefix else str(k)
        if isinstance(v, Mapping):
            if not isinstance(dst.get(k), dict):
                _forget(dst_sources, key)
                dst[k] = {}
            dst_sources[key] = src_sources[key]
            _merge_tracked(dst[k], v, key, dst_sources, src_sources)
        else:
            _forget(dst_sources, key)
            dst[k] = v
            dst_sources[key] = src_sources[key]


def _read_tree(path: Path, chain: tuple[tuple[Path, str], ...] = ()) -> tuple[dict, dict[str, str]]:
    """Read ``path`` with its ``_base_`` files merged in: the raw mapping, and for every dotted key
    the file that wrote the value it holds. ``chain`` is the (resolved, shown) files naming this one."""
    data = _read_file(path)
    names = _bases(data, path)
    own: dict[str, str] = {}
    _mark(data, "", str(path), own)
    chain = (*chain, (path.resolve(), str(path)))
    raw: dict = {}
    sources: dict[str, str] = {}
    for i, name in enumerate(names):
        where = f"{BASE_KEY}[{i}]" if len(names) > 1 else BASE_KEY
        target = Path(os.path.normpath(path.parent / name))
        resolved = [r for r, _ in chain]
        if target.resolve() in resolved:
            loop = [shown for _, shown in chain[resolved.index(target.resolve()):]] + [str(target)]
            raise ConfigError(f"{path}: {where}={name!r}: the bases form a cycle: {' -> '.join(loop)}")
        if not target.is_file():
            raise ConfigError(f"{path}: {where}={name!r}: base file not found (looked for {target})")
        base_raw, base_sources = _read_tree(target, chain)
        _merge_tracked(raw, base_raw, "", sources, base_sources)
    _merge_tracked(raw, data, "", sources, own)
    return raw, sources


def _merge(dst: dict, src: Mapping) -> None:
    for k, v in src.items():
        if isinstance(dst.get(k), dict) and isinstance(v, Mapping):
            _merge(dst[k], v)
        else:
            dst[k] = v


def _apply_override(raw: dict, text: str, sources: dict[str, str]) -> None:
    src = _override_source(text)
    key, sep, value_text = text.partition("=")
    key = key.strip()
    if not sep or not key or any(not p for p in key.split(".")):
        raise ConfigError(f"{src}: expected KEY=VALUE with a dotted KEY, e.g. section.key=5")
    try:
        value = _parse_yaml(value_text)
    except yaml.YAMLError as e:
        raise ConfigError(f"{src}: cannot parse the value {value_text!r}: {e}") from None
    parts = key.split(".")
    node = raw
    for i, part in enumerate(parts[:-1]):
        child = node.get(part)
        if child is None:
            child = node[part] = {}
            sources[".".join(parts[: i + 1])] = src
        elif not isinstance(child, dict):
            raise ConfigError(f"{src}: `{'.'.join(parts[: i + 1])}` is not a section "
                              f"(it holds {child!r}), so `{key}` cannot be set")
        node = child
    old = node.get(parts[-1])
    if isinstance(old, dict) and isinstance(value, dict):
        _merge(old, value)  # `train.optim={name: SGD}` updates the section, keeping other keys
    else:
        node[parts[-1]] = value
    sources[key] = src
    if isinstance(value, Mapping):
        _mark(value, key, src, sources)


# ---------------------------------------------------------------------------------------------
# `${dotted.key}` references, as TAO specs write them (e.g. `results_dir: ${results_dir}/train`).

_REF = re.compile(r"\$\{([^}]*)\}")


def _interpolate(raw: dict, schema_cls: type, sources: dict[str, str]) -> None:
    """Replace references in string values in place; a value that is exactly one reference takes
    the referenced value (any type). Unset keys resolve to their schema default."""
    def default(path: str) -> Any:
        try:
            return config_to_dict(_lookup(schema_cls(), path))
        except (AttributeError, TypeError):  # no such key, or the schema has required fields
            raise KeyError(path) from None

    def get(path: str, at: str, seen: frozenset[str]) -> Any:
        where = sources.get(at, "defaults")
        if path in seen:
            raise ConfigError(f"{where}: {at}: `${{{path}}}` refers back to itself")
        node: Any = raw
        try:
            for part in path.split("."):
                node = node[part]
        except (KeyError, TypeError):
            try:
                node = default(path)
            except KeyError:
                raise ConfigError(f"{where}: {at}: `${{{path}}}` names no config key") from None
        return resolve(node, path, seen | {path})

    def resolve(value: Any, at: str, seen: frozenset[str]) -> Any:
        if isinstance(value, str) and "${" in value:
            whole = _REF.fullmatch(value)
            if whole:
                return get(whole.group(1).strip(), at, seen)
            return _REF.sub(lambda m: str(get(m.group(1).strip(), at, seen)), value)
        if isinstance(value, dict):
            return {k: resolve(v, f"{at}.{k}" if at else str(k), seen | {f"{at}.{k}" if at else str(k)})
                    for k, v in value.items()}
        if isinstance(value, list):
            return [resolve(v, at, seen) for v in value]
        return value

    raw.update(resolve(raw, "", frozenset()))


# ---------------------------------------------------------------------------------------------
# Building the dataclass tree.

class _Ctx:
    def __init__(self, root: type, sources: dict[str, str], warn: bool):
        self.root, self.sources, self.warn = root, sources, warn

    def source(self, key: str) -> str:
        """Where ``key`` (or its nearest enclosing key) was set; 'defaults' if nowhere."""
        while key:
            if key in self.sources:
                return self.sources[key]
            key = re.sub(r"(\[\d+\]|\.?[^.\[]+)$", "", key)
        return "defaults"

    def fail(self, key: str, value: Any, problem: str) -> ConfigError:
        return ConfigError(f"{self.source(key)}: {key}={_show(value)}: {problem}")


def _show(value: Any) -> str:
    """A value as the user would write it in YAML (strings quoted, so '' and 'no' stay visible)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_show(v) for v in value) + "]"
    if isinstance(value, Mapping):
        return "{" + ", ".join(f"{k}: {_show(v)}" for k, v in value.items()) + "}"
    return repr(value)


def _all_keys(cls: type, prefix: str = "") -> list[str]:
    keys, hints = [], get_type_hints(cls)
    for f in dataclasses.fields(cls):
        key = f"{prefix}.{f.name}" if prefix else f.name
        keys.append(key)
        tp = hints[f.name]
        if dataclasses.is_dataclass(tp):
            keys += _all_keys(tp, key)
    return keys


def _unknown_key(cls: type, key: str, name: str, ctx: _Ctx) -> ConfigError:
    names = [f.name for f in dataclasses.fields(cls)]
    close = difflib.get_close_matches(name, names, n=1)
    section = key.rpartition(".")[0]
    if close:
        hint = f"did you mean `{section + '.' if section else ''}{close[0]}`?"
    else:
        everywhere = [k for k in _all_keys(ctx.root) if k.rpartition(".")[2] == name]
        everywhere = everywhere or difflib.get_close_matches(key, _all_keys(ctx.root), n=1)
        hint = (f"did you mean `{everywhere[0]}`?" if everywhere else
                f"valid keys{' in `' + section + '`' if section else ''}: {', '.join(names)}")
    return ConfigError(f"{ctx.source(key)}: unknown key `{key}`; {hint}")


def _build(cls: type, raw: Mapping, prefix: str, ctx: _Ctx) -> Any:
    hints = get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    aliases: dict[str, str] = getattr(cls, "ALIASES", {})
    kwargs: dict[str, Any] = {}
    for k, value in raw.items():
        given = str(k)
        key = f"{prefix}.{given}" if prefix else given
        name = aliases.get(given, given)
        if name not in fields:
            raise _unknown_key(cls, key, given, ctx)
        if name != given:
            new_key = f"{prefix}.{name}" if prefix else name
            if name in raw:
                raise ConfigError(f"{ctx.source(key)}: `{key}` and `{new_key}` are the same setting; give only one")
            if ctx.warn:
                log.warning("%s: %s is the older name of %s; read as %s", ctx.source(key), key, new_key, new_key)
        why = fields[name].metadata.get("no_effect")
        if why and ctx.warn:
            log.warning("%s: %s has no effect: %s", ctx.source(key), key, why)
        kwargs[name] = _convert(value, hints[name], key, ctx)
    for name, f in fields.items():
        if name not in kwargs and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            key = f"{prefix}.{name}" if prefix else name
            raise ConfigError(f"{ctx.source(prefix)}: required key `{key}` is missing")
    return cls(**kwargs)


def _describe(tp: Any) -> str:
    origin, args = get_origin(tp), get_args(tp)
    if origin in (Union, types.UnionType):
        return " or ".join("null" if a is type(None) else _describe(a) for a in args)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in args)
    if origin in (list, tuple) or tp in (list, tuple):
        if origin is tuple and args and args[-1] is not Ellipsis:
            return f"a list of {len(args)} items ({', '.join(_describe(a) for a in args)})"
        plural = {bool: "booleans", int: "integers", float: "numbers", str: "strings"}
        elem = args[0] if args else Any
        return f"a list of {plural.get(elem, 'items: ' + _describe(elem))}"
    if dataclasses.is_dataclass(tp):
        return "a mapping (section)"
    return {bool: "a boolean (true/false)", int: "an integer", float: "a number",
            str: "a string"}.get(tp, getattr(tp, "__name__", str(tp)))


def _convert(value: Any, tp: Any, key: str, ctx: _Ctx) -> Any:
    origin, args = get_origin(tp), get_args(tp)
    if tp is Any:
        return value
    if dataclasses.is_dataclass(tp):
        if value is None:  # an empty section (`model:` with nothing under it)
            value = {}
        if not isinstance(value, Mapping):
            raise ctx.fail(key, value, "expected a mapping (section) of keys")
        return _build(tp, value, key, ctx)
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        for a in args:
            if a is not type(None):
                try:
                    return _convert(value, a, key, ctx)
                except ConfigError:
                    continue
        raise ctx.fail(key, value, f"expected {_describe(tp)}")
    if origin is Literal:
        for choice in args:
            if value == choice and type(value) is type(choice):
                return choice
        raise ctx.fail(key, value, f"must be one of {', '.join(repr(a) for a in args)}")
    if tp is bool or tp is str:
        if not isinstance(value, tp):
            raise ctx.fail(key, value, f"expected {_describe(tp)}, got {type(value).__name__}")
        return value
    if tp is int or tp is float:
        ok = isinstance(value, int) or (tp is float and isinstance(value, float))
        if not ok or isinstance(value, bool):
            raise ctx.fail(key, value, f"expected {_describe(tp)}, got {type(value).__name__}")
        return tp(value)
    if origin in (list, tuple) or tp in (list, tuple):
        if not isinstance(value, Sequence) or isinstance(value, str):
            raise ctx.fail(key, value, f"expected {_describe(tp)}, got {type(value).__name__}")
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(value) != len(args):
                raise ctx.fail(key, value, f"expected {_describe(tp)}, got {len(value)} items")
            return tuple(_convert(v, a, f"{key}[{i}]", ctx) for i, (v, a) in enumerate(zip(value, args)))
        elem = args[0] if args else Any
        items = [_convert(v, elem, f"{key}[{i}]", ctx) for i, v in enumerate(value)]
        return tuple(items) if (origin is tuple or tp is tuple) else items
    if origin is dict or tp is dict:
        if not isinstance(value, Mapping):
            raise ctx.fail(key, value, f"expected a mapping, got {type(value).__name__}")
        vtype = args[1] if args else Any
        return {str(k): _convert(v, vtype, f"{key}.{k}", ctx) for k, v in value.items()}
    raise TypeError(f"schema error: unsupported annotation {tp!r} for `{key}`")


def _lookup(obj: Any, dotted: str) -> Any:
    for part in dotted.split("."):
        obj = getattr(obj, part)
    return obj


def _validate_tree(obj: Any, prefix: str, ctx: _Ctx) -> None:
    """Validate children before parents, so cross-section checks see valid sections."""
    for f in dataclasses.fields(obj):
        child = getattr(obj, f.name)
        if dataclasses.is_dataclass(child):
            _validate_tree(child, f"{prefix}.{f.name}" if prefix else f.name, ctx)
    validate = getattr(obj, "validate", None)
    if validate is None:
        return
    try:
        validate()
    except _Invalid as e:
        keys = [f"{prefix}.{k}" if prefix else k for k in e.keys]
        # a key written somewhere names its own file, before one only inside a written section
        user_set = [k for k in keys if k in ctx.sources] or [k for k in keys if ctx.source(k) != "defaults"]
        where = ctx.source(user_set[0]) if user_set else "defaults"
        raise ConfigError(f"{where}: {keys[0]}={_show(_lookup(obj, e.keys[0]))}: {e.message}") from None


def load_config(schema_cls: type, path: str | Path | None = None, overrides: Sequence[str] = (),
                *, warn_no_effect: bool = True) -> Any:
    """Build ``schema_cls`` from the YAML at ``path`` (optional; its ``_base_`` files merged
    in) and ``key=value`` overrides.

    Raises ``ConfigError`` for unknown keys, wrong types and impossible values. Logs one
    warning line per set field marked ``no_effect`` (unless ``warn_no_effect`` is False,
    e.g. when re-reading a resolved config that lists every field).
    """
    raw: dict = {}
    sources: dict[str, str] = {}
    if path is not None:
        raw, sources = _read_tree(Path(path))
    if isinstance(overrides, str):
        overrides = [overrides]
    for text in overrides:
        _apply_override(raw, text, sources)
    _interpolate(raw, schema_cls, sources)
    ctx = _Ctx(schema_cls, sources, warn_no_effect)
    cfg = _build(schema_cls, raw, "", ctx)
    _validate_tree(cfg, "", ctx)
    return cfg


def config_from_dict(schema_cls: type, data: Mapping, source: str) -> Any:
    """Build and validate ``schema_cls`` from an in-memory mapping (e.g. a config stored in a
    checkpoint's metadata); ``source`` names where it came from in error messages."""
    raw = copy.deepcopy(dict(data))
    sources: dict[str, str] = {}
    _mark(raw, "", source, sources)
    ctx = _Ctx(schema_cls, sources, False)
    cfg = _build(schema_cls, raw, "", ctx)
    _validate_tree(cfg, "", ctx)
    return cfg


# ---------------------------------------------------------------------------------------------
# Output.

def config_to_dict(cfg: Any) -> Any:
    """Plain dicts/lists/scalars (tuples become lists), in schema field order."""
    if dataclasses.is_dataclass(cfg) and not isinstance(cfg, type):
        return {f.name: config_to_dict(getattr(cfg, f.name)) for f in dataclasses.fields(cfg)}
    if isinstance(cfg, (list, tuple)):
        return [config_to_dict(v) for v in cfg]
    if isinstance(cfg, dict):
        return {k: config_to_dict(v) for k, v in cfg.items()}
    return cfg


class _Dumper(yaml.SafeDumper):
    pass


def _represent_list(dumper: yaml.SafeDumper, data: list) -> yaml.Node:
    flat = all(not isinstance(v, (list, dict)) for v in data)  # lists of scalars go on one line
    return dumper.represent_sequence("tag:yaml.org,2002:seq", data, flow_style=flat)


_Dumper.add_representer(list, _represent_list)


def format_config(cfg: Any) -> str:
    """The config as YAML text: block-style sections, lists of scalars inline; a field marked
    ``no_effect`` carries a ``# no effect: why`` comment, so the file never presents it as active."""
    text = yaml.dump(config_to_dict(cfg), Dumper=_Dumper, sort_keys=False, default_flow_style=False,
                     width=1000, allow_unicode=True)
    if dataclasses.is_dataclass(cfg) and not isinstance(cfg, type):
        text = _annotate(text, _no_effect_fields(type(cfg)))
    return text


def _no_effect_fields(cls: type, prefix: str = "") -> dict[str, str]:
    """Dotted key -> why, for every field of the schema marked ``no_effect``."""
    found, hints = {}, get_type_hints(cls)
    for f in dataclasses.fields(cls):
        key = f"{prefix}.{f.name}" if prefix else f.name
        if f.metadata.get("no_effect"):
            found[key] = f.metadata["no_effect"]
        if dataclasses.is_dataclass(hints[f.name]):
            found.update(_no_effect_fields(hints[f.name], key))
    return found


_YAML_KEY = re.compile(r"^( *)([A-Za-z_][\w.-]*):(?: |$)")


def _annotate(text: str, notes: Mapping[str, str]) -> str:
    """Append ``  # no effect: why`` to the block-style YAML lines of the keys in ``notes``."""
    if not notes:
        return text
    lines, stack = [], []  # stack: (indent, key) of the enclosing mappings
    for line in text.splitlines():
        match = _YAML_KEY.match(line)
        if match:
            indent = len(match.group(1))
            while stack and stack[-1][0] >= indent:
                stack.pop()
            stack.append((indent, match.group(2)))
            why = notes.get(".".join(key for _, key in stack))
            if why:
                line += f"  # no effect: {why}"
        lines.append(line)
    return "\n".join(lines) + "\n"


def save_resolved_config(cfg: Any, results_dir: str | Path) -> Path:
    """Write ``results_dir/config.yaml`` atomically; loading it back gives an equal config."""
    target = Path(results_dir) / "config.yaml"
    header = ("# Resolved configuration: every field, defaults included.\n"
              "# Load with load_config(..., warn_no_effect=False) to skip no-effect notices.\n")
    atomic_write_text(target, header + format_config(cfg))
    return target


# ---------------------------------------------------------------------------------------------
# Command line.

FINETUNE_OVERRIDE_EXAMPLES = "train.num_epochs=5 dataset.pixel_mean=[0.5,0.5,0.5] model.pretrained_model_path=null"


def add_config_args(parser: argparse.ArgumentParser, examples: str = FINETUNE_OVERRIDE_EXAMPLES, *,
                    config_required: bool = True, config_help: str | None = None) -> argparse.ArgumentParser:
    """Add ``--config PATH`` (required unless ``config_required=False``), ``--dry-run`` and
    positional ``KEY=VALUE`` overrides.

    ``examples`` are overrides of the script's own schema, shown in ``--help``. A parser built
    with argparse's plain formatter gets the toolkit's (``soliderkit.cli.HelpFormatter``: the
    description as written, each option's default shown)."""
    if parser.formatter_class is argparse.HelpFormatter:
        parser.formatter_class = HelpFormatter
    if config_help is None:
        config_help = "YAML experiment spec" + ("" if config_required else " (default: none; the schema's defaults "
                                                                           "plus KEY=VALUE overrides)")
    parser.add_argument("--config", required=config_required, metavar="PATH", help=config_help)
    parser.add_argument("--dry-run", action="store_true",
                        help="load and validate the config, print the resolved result, and exit")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                        help=f"dotted overrides parsed as YAML, e.g. {examples}")
    return parser


def parse_config_from_args(schema_cls: type, args: argparse.Namespace) -> Any:
    """Load the config named by parsed ``args``; a ConfigError exits with a one-line message."""
    try:
        return load_config(schema_cls, args.config, args.overrides)
    except ConfigError as e:
        raise SystemExit(f"config error: {e}") from None
