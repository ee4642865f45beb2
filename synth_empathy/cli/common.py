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
        if self._subparsers is None:
            return self.parse_intermixed_args(args, namespace)
        return super().parse_args(args, namespace)


def add_config_arguments(p: argparse.ArgumentParser) -> None:
    from synth_empathy.config import preset_names

    p.add_argument("--preset", default="default", help=f"one of: {', '.join(preset_names())}")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides (see `config --docs`)")


def load_with_aliases(args: argparse.Namespace, aliases: dict[str, str]):
    """The config of ``--preset`` and the overrides, with the command's flag aliases applied
    (``aliases``: flag attribute -> config key; a flag given on the command line wins)."""
    from synth_empathy.config import load_config

    extra = [
        f"{key}={_yaml_value(getattr(args, attr))}"
        for attr, key in aliases.items()
        if getattr(args, attr, None) is not None
    ]
    return load_config(args.preset, list(args.overrides) + extra)


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
