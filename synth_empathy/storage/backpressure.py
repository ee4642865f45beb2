"""What may wait unwritten: at most a few finished blocks between two map operators.

Ray Data pushes back on an operator only by object-store bytes: each operator's share of
the store's budget, gigabytes on a small node. An LLM stage's answers are small, so a
fast engine (the stand-in, a GPU engine on short answers) can run far ahead of the tasks
that write its parts: at 1M seeds 266,000 answers (~130 MB, far under the budget) waited
in the store at the kill, and were computed again on resume (benchmarks/README.md, "A
million seeds through every stage").

:class:`QueuedBlocksPolicy` adds a count to Ray Data's own policies: a map operator
takes a new input only while fewer than :data:`QUEUED_BLOCKS` of its finished output
blocks wait for the map operator after it. Between the engine and the written files an
answered row is then in one of: a task running or queued at an engine actor (Ray Data
keeps ``max_tasks_in_flight_per_actor`` of them, 2 by default), one of the
``QUEUED_BLOCKS`` waiting blocks, or a write task running - the parts in flight, which
is what a kill may cost. When the writes keep up (the engine is the slow side, as a GPU
engine usually is) nothing waits and the policy never holds anything back; when they
do not, the writes set the pace either way, and the engine waits instead of its answers.

A block is a part in the LLM stages (:meth:`RunStore.write_dataset` writes one part per
block; ``storage.part_rows`` cuts the input into blocks of that many rows), so the bound
in rows is ``(replicas x 2 + QUEUED_BLOCKS + write tasks) x part_rows`` at worst.

Only a map operator feeding map operators is held: a map takes its input a bundle at a
time, so the hold never waits on an operator that needs all its input first (a sort, a
shuffle), and blocks already handed to an operator (its bundler) are not counted.
Ray Data's policy interface is internal (``ray.data._internal``, read in Ray 2.60);
``tests/storage/test_backpressure.py`` runs it against the installed Ray.
"""

from __future__ import annotations

from typing import Any

from ray.data._internal.execution.backpressure_policy import (
    ENABLED_BACKPRESSURE_POLICIES,
    ENABLED_BACKPRESSURE_POLICIES_CONFIG_KEY,
    BackpressurePolicy,
)
from ray.data._internal.execution.operators.map_operator import MapOperator

# Finished blocks that may wait for the next map operator. One keeps the next operator fed
# when a task of it ends; two leave room for a block arriving while one is taken.
QUEUED_BLOCKS = 2


class QueuedBlocksPolicy(BackpressurePolicy):
    """A map operator feeding map operators takes a new input only while fewer than
    :data:`QUEUED_BLOCKS` of its output blocks wait for them."""

    @property
    def name(self) -> str:
        return "QueuedBlocks"

    def can_add_input(self, op: Any) -> bool:
        deps = op.output_dependencies
        if not isinstance(op, MapOperator) or not deps or not all(isinstance(d, MapOperator) for d in deps):
            return True
        return self._topology[op].total_enqueued_output_blocks() < QUEUED_BLOCKS


def bound_queued_blocks(ds: Any) -> Any:
    """``ds`` with :class:`QueuedBlocksPolicy` beside Ray Data's own policies, for every
    execution of it (the setting lives in the dataset's context, shared by the datasets
    derived from it; other datasets keep Ray Data's defaults)."""
    policies = ds.context.get_config(ENABLED_BACKPRESSURE_POLICIES_CONFIG_KEY, ENABLED_BACKPRESSURE_POLICIES)
    if QueuedBlocksPolicy not in policies:
        ds.context.set_config(ENABLED_BACKPRESSURE_POLICIES_CONFIG_KEY, [*policies, QueuedBlocksPolicy])
    return ds
