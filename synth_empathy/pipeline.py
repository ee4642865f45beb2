"""The Synth-Empathy data flow, top to bottom.

    seeds -> generations -> samples -> discriminated -> scored -> selected -> export

Each stage reads the previous stage's Parquet dataset from the run folder, streams it
through Ray Data (LLM stages through ``ray.data.llm`` engine pools) and writes its own;
a stage that already has its ``.done.json`` marker is read back instead of recomputed,
so a re-run with the same ``run_id`` resumes after the last finished stage. The
stages are checkpoints rather than one fused stream on purpose: the generator and the
discriminator engines then hold the accelerators one after the other, and a crash
costs at most the stage in progress.
"""

from __future__ import annotations

import logging
import os
import time
from typing import Any, Callable, Dict

import pyarrow.compute as pc
from omegaconf import DictConfig, OmegaConf
from ray.data.expressions import col

from synth_empathy import diversity, export, report, schemas
from synth_empathy.discriminator import Discriminator
from synth_empathy.generation import Generation, expand_seeds
from synth_empathy.models import check_model, resolve_model
from synth_empathy.quality import score_stage
from synth_empathy.seeds import default_seed_path, read_seeds, validate_seed_source
from synth_empathy.store import RunStore, new_run_id
from synth_empathy.turns import turns_stage

log = logging.getLogger("synth_empathy")


def preflight(cfg: DictConfig) -> RunStore:
    """Every check that can fail on bad input, before Ray starts or a model loads."""
    validate_seed_source(cfg.seeds.path or default_seed_path(), cfg.seeds.layout)
    for spec in (cfg.generation.engine.model, cfg.discriminator.engine.model, cfg.quality.embedder):
        check_model(spec)
    store = RunStore(cfg.output, cfg.run_id or new_run_id())
    store.check_writable()
    return store


def run(cfg: DictConfig) -> Dict[str, Any]:
    """Run (or resume) the whole job; returns the report."""
    store = preflight(cfg)
    log.info("run %s -> %s", store.run_id, store.url)
    store.write_bytes("config.yaml", OmegaConf.to_yaml(cfg).encode())
    init_ray(cfg)
    timings: Dict[str, float] = {}

    def stage(name: str, build: Callable[[], None]) -> None:
        if store.is_done(name):
            log.info("[%s] finished in an earlier attempt; reading it back", name)
            timings[name] = store.marker(name).get("seconds", 0.0)
            return
        log.info("[%s] running", name)
        start = time.perf_counter()
        build()
        timings[name] = round(time.perf_counter() - start, 2)
        store.finish(name, {"seconds": timings[name], "rows": store.count_rows(name)})
        log.info("[%s] done in %.1f s", name, timings[name])

    # 0. Seeds: the dialogues the method starts from.
    def seeds() -> None:
        table = read_seeds(cfg.seeds.path or default_seed_path(), layout=cfg.seeds.layout, limit=cfg.seeds.limit)
        store.write_table("seeds", table.to_arrow(), schemas.SEEDS)
        store.write_json("seeds.json", {"path": table.path, "layout": table.layout, "dropped": table.dropped})

    stage("seeds", seeds)

    # 1. Generation: n new multi-round dialogues per seed.
    g = cfg.generation
    stage("generations", lambda: store.write_dataset(
        "generations",
        Generation(g.engine, g.sampling, g.min_rounds)(
            store.read_dataset("seeds").map_batches(
                expand_seeds, fn_kwargs={"samples_per_seed": g.samples_per_seed}, batch_format="numpy"),
            model_path=resolve_model(g.engine.model)),
        schemas.GENERATIONS))

    # 2. Parse rounds and sample turns: history of k rounds -> the aligned target.
    stage("samples", lambda: store.write_dataset(
        "samples",
        turns_stage(store.read_dataset("generations"), seed=cfg.seed, turns_cfg=cfg.turns,
                    max_tokens=g.sampling.max_tokens),
        schemas.SAMPLES))

    # 3a. The discriminator answers every sampled history itself.
    d = cfg.discriminator
    stage("discriminated", lambda: store.write_dataset(
        "discriminated",
        Discriminator(d.engine, d.sampling, d.system_prompt, d.input_format, schemas.SAMPLE_CARRY)(
            store.read_dataset("samples").filter(expr=col("drop_reason").is_null()),
            model_path=resolve_model(d.engine.model)),
        schemas.DISCRIMINATED))

    # 3b. Quality score = 100 x cos(target, discriminator answer); keep >= threshold.
    stage("scored", lambda: store.write_dataset(
        "scored", score_stage(store.read_dataset("discriminated"), cfg.quality), schemas.SCORED))

    # 4. Diversity: greedy k-center over the kept rows' embeddings.
    def selected() -> None:
        kept = store.read_table("scored", filter=pc.field("kept"))
        chosen, info = diversity.select(kept, cfg.diversity, cfg.seed)
        store.write_table("selected", chosen, schemas.SELECTED)
        store.write_json("selection.json", info)

    stage("selected", selected)

    # 5. Export the selected set for fine-tuning, and the report.
    export.write_selected(store)
    return report.write_report(store, cfg, timings)


def init_ray(cfg: DictConfig) -> None:
    import ray

    if ray.is_initialized():
        return
    address = cfg.ray.address or os.environ.get("RAY_ADDRESS") or None
    num_cpus = None if address else (cfg.ray.num_cpus or max(4, os.cpu_count() or 1))
    ray.init(address=address, num_cpus=num_cpus,
             include_dashboard=False, log_to_driver=True,
             runtime_env={"env_vars": {"TOKENIZERS_PARALLELISM": "false"}})
