"""The Synth-Empathy data flow, top to bottom.

    seeds -> generations -> samples -> discriminated -> scored -> selected -> export -> judged

Each stage reads the previous stage's Parquet dataset from the run folder, streams it
through Ray Data (LLM stages through ``ray.data.llm`` engine pools) and writes its own;
a stage that already has its ``.done.json`` marker is read back instead of recomputed,
so a re-run with the same ``run_id`` resumes after the last finished stage, and a
keyed stage that was interrupted keeps its finished Parquet parts and runs only the
rows (``sample_id``) they do not hold (see :meth:`RunStore.resume`). The
stages are checkpoints rather than one fused stream on purpose: the generator and the
discriminator engines then hold the accelerators one after the other, and a crash
costs at most the stage in progress.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

import pyarrow.compute as pc
from omegaconf import DictConfig
from ray.data.expressions import col

from synth_empathy import report, schemas
from synth_empathy.cluster.ray_init import init_ray
from synth_empathy.config import redacted_yaml
from synth_empathy.models.weights import check_model, resolve_model
from synth_empathy.stages import export
from synth_empathy.stages import selection as diversity
from synth_empathy.stages.discriminator import Discriminator
from synth_empathy.stages.generation import Generation, expand_seeds
from synth_empathy.stages.judge import Judge
from synth_empathy.stages.quality import score_stage
from synth_empathy.stages.turns import turns_stage
from synth_empathy.storage.manifest import new_manifest
from synth_empathy.storage.run_store import RunStore, exclude_ids, new_run_id, storage_options
from synth_empathy.storage.seed_sources import default_seed_path, read_seeds, validate_seed_source

log = logging.getLogger("synth_empathy")


def preflight(cfg: DictConfig) -> RunStore:
    """Every check that can fail on bad input, before Ray starts or a model loads."""
    seeds_path = cfg.seeds.path or default_seed_path()
    validate_seed_source(seeds_path, cfg.seeds.layout, storage_options(seeds_path, cfg.storage))
    store = RunStore(cfg.output, cfg.run_id or new_run_id(), storage_options(cfg.output, cfg.storage))
    store.check_writable()
    models = [cfg.generation.engine.model, cfg.discriminator.engine.model, cfg.quality.embedder]
    for spec in models + ([cfg.judge.engine.model] if cfg.judge.enabled else []):
        check_model(spec)
    return store


def run(cfg: DictConfig) -> dict[str, Any]:
    """Run (or resume) the whole job; returns the report."""
    store = preflight(cfg)
    log.info("run %s -> %s", store.run_id, store.url)
    store.write_bytes("config.yaml", redacted_yaml(cfg).encode())
    manifest = new_manifest(store, cfg)
    init_ray(cfg)
    timings: dict[str, float] = {}
    part_rows = cfg.storage.part_rows

    def stage(name: str, build: Callable[[], None], key: str | None = None) -> None:
        if store.is_done(name):
            log.info("[%s] finished in an earlier attempt; reading it back", name)
            info = store.marker(name)
            timings[name] = info.get("seconds", 0.0)
            manifest["stages"][name] = {**info, "done_earlier": True}
            return
        log.info("[%s] running", name)
        start = time.perf_counter()
        build()
        timings[name] = round(time.perf_counter() - start, 2)
        info = {"seconds": timings[name], **store.verify(name, key)}  # raises on a doubled id
        if key and getattr(store, "salvaged", None):
            info["salvaged"] = store.salvaged
            store.salvaged = None
        store.finish(name, info)
        manifest["stages"][name] = info
        store.write_json("manifest.json", manifest)
        log.info("[%s] done in %.1f s", name, timings[name])

    def keyed(name: str, source: Callable[[], Any], transform: Callable[[Any], Any], schema, llm: bool = False) -> None:
        """A Ray stage keyed by sample_id, resumable row by row (see RunStore.resume)."""

        def build() -> None:
            import ray

            done = store.resume(name)
            ds = source()
            if len(done):
                log.info(
                    "[%s] resuming: %d rows in %d complete parts kept, %d unreadable parts removed",
                    name,
                    len(done),
                    store.salvaged["parts_kept"],
                    store.salvaged["parts_dropped"],
                )
                ds = ds.map_batches(exclude_ids, fn_args=([ray.put(done)],), batch_format="pyarrow")
            if llm:  # parts of at most part_rows rows: the progress a crash keeps
                ds = ds.repartition(target_num_rows_per_block=part_rows, strict=True)
            store.write_dataset(name, transform(ds), schema, resume=True)

        stage(name, build, key="sample_id")

    # 0. Seeds: the dialogues the method starts from.
    def seeds() -> None:
        path = cfg.seeds.path or default_seed_path()
        table = read_seeds(
            path, layout=cfg.seeds.layout, limit=cfg.seeds.limit, storage_options=storage_options(path, cfg.storage)
        )
        store.write_table("seeds", table.to_arrow(), schemas.SEEDS)
        store.write_json("seeds.json", {"path": table.path, "layout": table.layout, "dropped": table.dropped})

    stage("seeds", seeds)

    # 1. Generation: n new multi-round dialogues per seed.
    g = cfg.generation
    keyed(
        "generations",
        lambda: store.read_dataset("seeds").map_batches(
            expand_seeds, fn_kwargs={"samples_per_seed": g.samples_per_seed}, batch_format="numpy"
        ),
        lambda ds: Generation(g.engine, g.sampling, g.min_rounds)(ds, model_path=resolve_model(g.engine.model)),
        schemas.GENERATIONS,
        llm=True,
    )

    # 2. Parse rounds and sample turns: history of k rounds -> the aligned target.
    keyed(
        "samples",
        lambda: store.read_dataset("generations"),
        lambda ds: turns_stage(ds, seed=cfg.seed, turns_cfg=cfg.turns, max_tokens=g.sampling.max_tokens),
        schemas.SAMPLES,
    )

    # 3a. The discriminator answers every sampled history itself.
    d = cfg.discriminator
    keyed(
        "discriminated",
        lambda: store.read_dataset("samples").filter(expr=col("drop_reason").is_null()),
        lambda ds: Discriminator(d.engine, d.sampling, d.system_prompt, d.input_format, schemas.SAMPLE_CARRY)(
            ds, model_path=resolve_model(d.engine.model)
        ),
        schemas.DISCRIMINATED,
        llm=True,
    )

    # 3b. Quality score = 100 x cos(target, discriminator answer); keep >= threshold.
    keyed(
        "scored", lambda: store.read_dataset("discriminated"), lambda ds: score_stage(ds, cfg.quality), schemas.SCORED
    )

    # 4. Diversity: greedy k-center over the kept rows' embeddings.
    def selected() -> None:
        kept = store.read_table("scored", filter=pc.field("kept"))
        chosen, info = diversity.select(kept, cfg.diversity, cfg.seed)
        store.write_table("selected", chosen, schemas.SELECTED)
        store.write_json("selection.json", info)

    stage("selected", selected, key="sample_id")

    # 5. Export the selected set for fine-tuning.
    export.write_selected(store)

    # 6. A judge LLM rates every selected row on naturalness, coherence and empathy.
    j = cfg.judge

    def judged() -> None:
        if store.count_rows("selected") == 0:  # no engine start for nothing to judge
            store.write_table("judged", schemas.JUDGED.empty_table(), schemas.JUDGED)
            return
        store.write_dataset(
            "judged",
            Judge(j.engine, j.sampling, schemas.SELECTED.names, j.constrained)(
                store.read_dataset("selected"), model_path=resolve_model(j.engine.model)
            ),
            schemas.JUDGED,
        )

    if j.enabled:
        stage("judged", judged)

    result = report.write_report(store, cfg, timings)
    manifest.update(counts=result.get("counts", {}), seconds=timings, finished=time.strftime("%Y-%m-%dT%H:%M:%S%z"))
    store.write_json("manifest.json", manifest)
    return result
