"""What the shared engine counts per stage, for the driver's progress line.

Kept in the engine's replica (:class:`synth_empathy.engines.server.EngineServer`): each
request names its stage under :data:`STAGE_TAG`, which the replica removes before vLLM
validates the request; the driver reads :meth:`EngineCounters.snapshot` through a Serve
handle (:func:`synth_empathy.executor.progress.served_line` makes the line).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

# The request key that names the stage a request to a shared engine belongs to; the
# engine counts by it and removes it before vLLM sees the request.
STAGE_TAG = "synth_empathy_stage"


class EngineCounters:
    """Requests and generated tokens per stage, kept by the shared engine's replica.

    ``received`` when a request arrives, ``finished`` when its answer (or error) goes
    back; :meth:`snapshot` is what the driver's progress line reads.
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._stages: dict[str, dict[str, Any]] = {}

    def received(self, stage: str, max_tokens: int | None) -> None:
        s = self._stages.setdefault(
            stage, {"received": 0, "answered": 0, "failed": 0, "tokens": 0, "max_tokens": 0, "first": self._clock()}
        )
        s["received"] += 1
        s["max_tokens"] = max(s["max_tokens"], int(max_tokens or 0))

    def finished(self, stage: str, tokens: int | None, failed: bool = False) -> None:
        s = self._stages[stage]
        s["failed" if failed else "answered"] += 1
        s["tokens"] += int(tokens or 0)

    def snapshot(self, stage: str, tokens_in_flight: int | None) -> dict[str, Any] | None:
        """The stage's counts (None before its first request). ``tokens_in_flight``, the
        tokens of the answers still being generated (engine-wide: the stages of a run
        take turns), counts for the stage while it has requests in flight."""
        s = self._stages.get(stage)
        if s is None:
            return None
        busy = s["received"] - s["answered"] - s["failed"]
        return {
            **{k: v for k, v in s.items() if k != "first"},
            "in_flight": busy,
            # None: this vLLM keeps them where the engine does not look (finished answers only)
            "tokens_in_flight": (tokens_in_flight if busy else 0) if tokens_in_flight is not None else None,
            "busy_s": self._clock() - s["first"],
        }
