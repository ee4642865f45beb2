"""Command-line entry points: one module per ``synth-empathy`` command."""

from synth_empathy.cli.main import main

__all__ = ["main"]
