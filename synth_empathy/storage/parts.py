"""How many rows go into one Parquet part of an LLM stage.

A part is the unit a crash keeps: the rows of a part that was not finished when the
driver died are run again, so smaller parts lose less work. Every part is also one object
in the store, and a resume reads the footer and the id column of each: at 64 rows per part
a million-seed ``paper`` run (5 samples each) writes about 78,000 objects per stage.

``storage.part_rows=auto`` sizes parts by the stage instead of by a fixed count: about
``storage.parts_per_stage`` parts (1,000 by default), never fewer rows than one engine
batch, never more estimated bytes than ``storage.part_bytes``. The work a crash can lose is
then a share of the stage rather than a number of rows: the parts in flight (at most two
per engine replica, two waiting and those being written: :mod:`synth_empathy.storage.backpressure`)
out of ``parts_per_stage``, well under 1 % of
a stage for the GPU presets' replica counts, while a 5M-row stage writes about a thousand
objects and its resume reads a thousand footers. benchmarks/README.md ("A million seeds")
has the measured cost per part.

Pure: no Ray, no I/O.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

# A row's bytes before the engine answers it: the stage's input (a seed's context and
# reply, a sampled history) is a few KiB at most in the method's data.
INPUT_ROW_BYTES = 2048
# An answer's bytes per token it may have: about 4 characters of English per token.
BYTES_PER_TOKEN = 4


def row_bytes(max_tokens: int | None) -> int:
    """Estimated bytes of one output row of an LLM stage whose answers have at most ``max_tokens``."""
    return INPUT_ROW_BYTES + BYTES_PER_TOKEN * int(max_tokens or 0)


def rows_per_part(rows: int, *, batch_size: int, parts: int, part_bytes: int, bytes_per_row: int) -> int:
    """Rows per part for a stage of ``rows`` rows (see the module docstring)."""
    by_count = math.ceil(max(rows, 1) / parts)
    by_bytes = max(1, part_bytes // max(bytes_per_row, 1))
    return max(1, min(max(by_count, batch_size), by_bytes))


def part_rows(storage: Any, section: Any) -> int | Callable[[int], int]:
    """``storage.part_rows`` for the LLM stage configured by ``section`` (its ``engine`` and
    ``sampling``): the number as given, or for ``auto`` a function of the rows to do."""
    if storage.part_rows != "auto":
        return int(storage.part_rows)
    batch = section.engine.batch_size

    def sized(rows: int) -> int:
        return rows_per_part(
            rows,
            batch_size=batch,
            parts=storage.parts_per_stage,
            part_bytes=storage.part_bytes,
            bytes_per_row=row_bytes(section.sampling.max_tokens),
        )

    return sized
