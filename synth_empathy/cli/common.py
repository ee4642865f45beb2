"""What every command shares: the config arguments, and the bad-input exit.

Every command takes ``--preset NAME`` and ``key=value`` overrides of the one config
schema (:mod:`synth_empathy.config`); its own flags are aliases for config keys. Every
command ends a :class:`~synth_empathy.errors.BadInputError` with one ``error:`` line on
stderr and exit code 2.
"""

from __future__ import annotations

import argparse
import functools
import sys
from collections.abc import Callable

from synth_empathy.errors import BadInputError, ConfigError

EXIT_BAD_INPUT = 2


class Parser(argparse.ArgumentParser):
    """An argument parser whose errors are bad input (one line, exit 2), not argparse's usage dump."""

    def error(self, message: str):
        raise ConfigError(f"{self.prog}: {message}")

    def parse_args(self, args=None, namespace=None):
        # key=value overrides may come after flags (`evaluate OUT --limit 4 k=v`): plain
        # parse_args gives every positional out in one go and then refuses the late ones.
        # Intermixed parsing cannot pass the rest on (`submit ... -- ARGS`): those parse plainly.
        passes_on = any(a.nargs in (argparse.REMAINDER, argparse.PARSER) for a in self._actions)
        if self._subparsers is None and not passes_on:
            return self.parse_intermixed_args(args, namespace)
        return super().parse_args(args, namespace)


def positive(text: str) -> float:
    """An argparse ``type``: a number > 0 (NaN and inf are refused)."""
    try:
        x = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number > 0, got {text!r}") from None
    if not 0 < x < float("inf"):
        raise argparse.ArgumentTypeError(f"must be a number > 0, got {text}")
    return x


def add_config_arguments(p: argparse.ArgumentParser) -> None:
    from synth_empathy.config import preset_names

    p.add_argument("--preset", default="default", help=f"one of: {', '.join(preset_names())}")
    # default=[]: without one argparse lists key=value among the missing required arguments
    p.add_argument(
        "overrides", nargs="*", default=[], metavar="key=value", help="config overrides (see `config --docs`)"
    )


def load_with_aliases(args: argparse.Namespace, aliases: dict[str, str]):
    """The config of ``--preset`` and the overrides, with the command's flag aliases applied
    (``aliases``: flag attribute -> config key; a flag given on the command line wins)."""
    from synth_empathy.config import load_config

    given = {attr: key for attr, key in aliases.items() if getattr(args, attr, None) is not None}
    extra = [f"{key}={_yaml_value(getattr(args, attr))}" for attr, key in given.items()]
    try:
        return load_config(args.preset, list(args.overrides) + extra)
    except ConfigError as e:
        # name the flag the user typed, not only the config key it stands for
        flag = next((a for a, key in given.items() if str(e).startswith(key + " ") or f"'{key}'" in str(e)), None)
        if flag is None:
            raise
        raise ConfigError(f"--{flag.replace('_', '-')}: {e}") from None


def _yaml_value(v) -> str:
    return "null" if v is None else str(v).lower() if isinstance(v, bool) else str(v)


def exits_on_bad_input(fn: Callable[..., int]) -> Callable[..., int]:
    """Turn a :class:`BadInputError` into one ``error:`` line and exit code 2."""

    @functools.wraps(fn)
    def wrapper(*a, **kw) -> int:
        try:
            return fn(*a, **kw)
        except BadInputError as e:
            print(f"error: {e}", file=sys.stderr)
            return EXIT_BAD_INPUT

    return wrapper
