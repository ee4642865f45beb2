"""Method step 0 - the seed dialogues the method starts from.

in:  a seed file (ED CSVs, HF Parquet, ``{context, response}`` JSON/JSONL, the shipped
     dialogues), local or an fsspec URL; readers in :mod:`synth_empathy.stages.seed_sources`
out: ``seed_id, context, response, emotion, source``; dropped seed rows counted by reason
"""

from __future__ import annotations

from typing import Any

import pyarrow as pa

from synth_empathy import schemas
from synth_empathy.stages.contract import StageContract
from synth_empathy.stages.seed_sources import default_seed_path, read_seeds

CONTRACT = StageContract(name="seeds", input=None, requires=(), produces=schemas.SEEDS, key=None)


def seed_path(seeds_cfg: Any) -> str:
    """The seed file of the ``seeds`` section: its ``path``, else the shipped dialogues."""
    return seeds_cfg.path or default_seed_path()


def seed_table(seeds_cfg: Any, storage_options: dict[str, Any]) -> tuple[pa.Table, dict[str, Any]]:
    """The seed pairs of the ``seeds`` section and what reading them dropped (for ``seeds.json``)."""
    path = seed_path(seeds_cfg)
    table = read_seeds(path, layout=seeds_cfg.layout, limit=seeds_cfg.limit, storage_options=storage_options)
    return table.to_arrow(), {"path": table.path, "layout": table.layout, "dropped": table.dropped}
