"""Method step 0 - the seed dialogues the method starts from.

in:  a seed file (ED CSVs, HF Parquet, ``{context, response}`` JSON/JSONL, the shipped
     dialogues), local or an fsspec URL; readers in :mod:`synth_empathy.stages.seed_sources`
out: ``seed_id, context, response, emotion, source``; dropped seed rows counted by reason
"""

from __future__ import annotations

from typing import Any

from synth_empathy import schemas
from synth_empathy.stages.contract import StageContract
from synth_empathy.stages.seed_sources import SeedBatches, default_seed_path

CONTRACT = StageContract(name="seeds", input=None, requires=(), produces=schemas.SEEDS, key=None)


def seed_path(seeds_cfg: Any) -> str:
    """The seed file of the ``seeds`` section: its ``path``, else the shipped dialogues."""
    return seeds_cfg.path or default_seed_path()


def seed_batches(seeds_cfg: Any, storage_options: dict[str, Any]) -> SeedBatches:
    """The seed pairs of the ``seeds`` section, a part at a time (iterate once); afterwards
    :func:`seeds_info` says what reading them dropped."""
    path = seed_path(seeds_cfg)
    return SeedBatches(path, layout=seeds_cfg.layout, limit=seeds_cfg.limit, storage_options=storage_options)


def seeds_info(batches: SeedBatches) -> dict[str, Any]:
    """What ``seeds.json`` records: where the seeds came from and what was dropped, by reason."""
    return {"path": batches.path, "layout": batches.layout, "dropped": batches.dropped}
