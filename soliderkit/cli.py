"""What every command-line tool of the toolkit shares: the ``--help`` layout.

:class:`HelpFormatter` keeps the description's own line breaks (usage examples stay readable)
and shows each option's default, as argparse's ``ArgumentDefaultsHelpFormatter`` does, except
where the help text already says what the default is (``default: from the checkpoint``) or
where a default says nothing: an on/off flag that is off unless given, a required argument.

    parser = argparse.ArgumentParser(description=..., formatter_class=HelpFormatter)

:func:`help_problems` lists the options of a parser whose help is missing or does not show a
default; the test suite runs it over every tool.
"""
from __future__ import annotations

import argparse

__all__ = ["HelpFormatter", "help_problems"]


def _needs_default(action: argparse.Action) -> bool:
    """Whether ``action``'s help should say what happens when it is not given."""
    if action.default is argparse.SUPPRESS or isinstance(action, (argparse._HelpAction, argparse._VersionAction)):
        return False
    if action.required:
        return False
    if not action.option_strings:  # positional: only optional ones (?, *) have a default worth naming
        return action.nargs in (argparse.OPTIONAL, argparse.ZERO_OR_MORE) and action.default not in (None, [])
    if action.nargs == 0 and not isinstance(action, argparse.BooleanOptionalAction):
        # store_true / store_false / store_const / count: off unless given
        return action.default not in (None, False, 0) and not isinstance(action, argparse._StoreFalseAction)
    return True


class HelpFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """Description kept as written; ``(default: X)`` appended unless the help already names a default."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if "%(default)" in text or "default" in text.lower() or not _needs_default(action):
            return text
        return text + " (default: %(default)s)"


def help_problems(parser: argparse.ArgumentParser, name: str = "") -> list[str]:
    """Options of ``parser`` without help text, or whose help does not show their default."""
    formatter = parser._get_formatter()  # noqa: SLF001 -- argparse has no public per-action help
    where = name or parser.prog
    problems = []
    for action in parser._actions:  # noqa: SLF001
        if isinstance(action, argparse._HelpAction) or action.help == argparse.SUPPRESS:
            continue
        label = "/".join(action.option_strings) or action.dest
        if not (action.help or "").strip():
            problems.append(f"{where}: {label} has no help text")
            continue
        shown = formatter._expand_help(action)  # noqa: SLF001
        if _needs_default(action) and "default" not in shown.lower():
            problems.append(f"{where}: {label} does not show its default ({action.default!r}): {shown!r}")
    return problems
