"""What a stage declares: the table it reads, the columns it requires, the schema it writes.

The runner (:mod:`synth_empathy.executor.runner`) checks ``requires`` against the input
table's schema before anything starts (an engine start is a minute on a CPU; a missing
column should cost a second), derives the columns the stage carries through unchanged
from the input, and casts every batch to ``produces`` before it is written.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import pyarrow as pa

from synth_empathy.errors import StageInputError


@dataclass(frozen=True)
class StageContract:
    name: str  # the stage's table (folder) in the run
    input: str | None  # the run table it reads; None when its input comes from outside the run
    requires: tuple[str, ...]  # input columns the stage reads
    produces: pa.Schema  # the schema of every part it writes
    key: str | None = "sample_id"  # unique row id, the unit of resume; None: not keyed
    makes: tuple[str, ...] = ()  # output columns the stage makes before its core runs (ids), carried like input
    tokens: str | None = None  # the column counting generated tokens (LLM stages): progress and tokens/s

    def check(self, columns: Sequence[str], where: str) -> None:
        """One-line error when ``columns`` (the input's) lack what the stage reads."""
        missing = [c for c in self.requires if c not in columns]
        if missing:
            raise StageInputError(
                f"stage {self.name!r}: {where} lacks the column(s) {', '.join(missing)} it needs "
                f"(has: {', '.join(columns) or 'none'})"
            )

    def carried(self, columns: Sequence[str]) -> tuple[str, ...]:
        """Output columns that come from the input unchanged, in the output's order."""
        have = set(columns) | set(self.makes)
        return tuple(c for c in self.produces.names if c in have)
