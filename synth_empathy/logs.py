"""The job's log format: one line per event, time and the project's name first (the same
in a terminal, a Ray job's log and a Ray Train worker's)."""

from __future__ import annotations

import logging


def setup_logging() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s synth-empathy %(message)s", datefmt="%H:%M:%S")
