"""The Synth-Empathy data flow, top to bottom.

    seeds -> generations -> samples -> discriminated -> scored -> selected -> export -> judged
                                        calibration (human replies) -> T -^

Each stage (a module of :mod:`synth_empathy.stages`) declares the table it reads, the
columns it requires and the schema it writes; the :class:`StageRunner` checks the
contract before anything starts, streams the input through Ray Data (LLM stages through
``ray.data.llm`` engine pools), and keeps the bookkeeping: a stage with its
``.done.json`` marker is read back instead of recomputed, and an interrupted keyed
stage keeps its finished Parquet parts and runs only the rows they do not hold. The
stages are checkpoints rather than one fused stream on purpose: the generator and the
discriminator engines then hold the accelerators one after the other, and a crash costs
at most the stage in progress. Stages that run the same model with the same engine
settings share one engine (``ray.engines``; the embedded default's three).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

import pyarrow as pa
from omegaconf import DictConfig
from ray.data.expressions import col

from synth_empathy import report
from synth_empathy.cluster.ray_init import init_ray
from synth_empathy.cluster.ray_init import started_here as ray_started_here
from synth_empathy.config import redacted_yaml
from synth_empathy.engines import shared as shared_engine
from synth_empathy.errors import BadInputError
from synth_empathy.executor.runner import StageRunner
from synth_empathy.models.weights import check_model, resolve_model
from synth_empathy.stages import (
    calibration,
    dataset_card,
    discriminator,
    export,
    generation,
    judge,
    judge_validation,
    quality,
    seeds,
    selection,
    standin_resume,
    turns,
)
from synth_empathy.stages.seed_sources import validate_seed_source
from synth_empathy.storage import parts
from synth_empathy.storage.manifest import new_manifest
from synth_empathy.storage.run_store import RunStore, new_run_id, storage_options

log = logging.getLogger(__name__)


def preflight(cfg: DictConfig) -> tuple[RunStore, pa.Table | None]:
    """Every check that can fail on bad input, before Ray starts or a model loads; returns
    the run's store and the calibration's reference dialogues (None when it does not calibrate).

    A run folder that the output check made is removed again when a later check fails,
    so a run that never started leaves nothing behind.
    """
    seeds_path = seeds.seed_path(cfg.seeds)
    validate_seed_source(seeds_path, cfg.seeds.layout, storage_options(seeds_path, cfg.storage))
    references = None
    if cfg.calibration.enabled:  # too few reference dialogues fails here, not after generation
        references = calibration.reference_table(cfg)
    store = RunStore(cfg.output, cfg.run_id or new_run_id(), storage_options(cfg.output, cfg.storage))
    made_here = store.local and not store.fs.exists(store.root)  # object stores get only the probe
    shared_engine.check(cfg)
    store.check_writable()
    try:
        models = [cfg.generation.engine.model, cfg.discriminator.engine.model, cfg.quality.embedder]
        for spec in models + ([cfg.judge.engine.model] if cfg.judge.enabled else []):
            check_model(spec)
        if validates_judge(cfg):  # too few reference dialogues: one line now, not after the run
            judge_validation.load_references(cfg)
        standin_resume.check(store, cfg)
    except BadInputError:
        if made_here:
            store.fs.rm(store.root, recursive=True)
        raise
    return store, references


def validates_judge(cfg: DictConfig) -> bool:
    return bool(cfg.judge.enabled and cfg.judge.validate)


def run(cfg: DictConfig) -> dict[str, Any]:
    """Run (or resume) the whole job; returns the report."""
    store, references = preflight(cfg)
    try:
        init_ray(cfg)  # before the first write: a run the cluster check refuses leaves no folder
    except BadInputError:
        if store.local and store.fs.exists(store.root) and not store.fs.ls(store.root):
            store.fs.rm(store.root, recursive=True)  # only what preflight made; a resumed run keeps its folder
        raise
    log.info("run %s -> %s", store.run_id, store.url)
    store.write_bytes("config.yaml", redacted_yaml(cfg).encode())
    manifest = new_manifest(store, cfg)
    runner = StageRunner(store, manifest, cfg.ray.progress_interval_s)
    # LLM stages with equal engine sections share one engine, started before the first
    # stage and stopped when the run ends, however it ends (on a cluster it would hold its GPUs).
    with shared_engine.SharedEngines(cfg, ray_ends_with_us=ray_started_here()) as engines:
        return _stages(cfg, store, manifest, runner, engines, references)


def calibrate(
    cfg: DictConfig, store: RunStore, runner: StageRunner, references: pa.Table, llm: Callable[[], dict]
) -> dict[str, Any]:
    """Step 3a': the discriminator answers human reference dialogues as it answers the
    samples; their scores against the true reply and the foils give the AUCs and T
    (``calibration.json``). ``llm()`` gives the discriminator's engine arguments (asked only
    when answers are still to come: a finished calibration starts no engine). Also
    ``synth-empathy calibrate``."""
    runner.table(calibration.REFERENCES, lambda: references)
    runner.keyed(
        calibration.ANSWERS,
        lambda ds, carry: calibration.answers_stage(ds, cfg, carry, **llm()),
        part_rows=parts.part_rows(cfg.storage, cfg.discriminator),
    )

    def scores():
        table = calibration.score_references(store.read_table(calibration.ANSWERS.name), cfg)
        store.write_table(calibration.SCORES.name, table, calibration.SCORES.produces)
        store.write_json(calibration.RESULT, calibration.summarize(table, cfg))

    runner.run(calibration.SCORES.name, scores)
    result = store.read_json(calibration.RESULT)
    log.info("[calibration] %s", calibration.one_line(result))
    for warning in result["warnings"]:
        log.warning("[calibration] %s", warning)
    return result


def _stages(
    cfg: DictConfig,
    store: RunStore,
    manifest,
    runner: StageRunner,
    engines: shared_engine.SharedEngines,
    references: pa.Table | None,
) -> dict[str, Any]:
    """The method's steps in order (each a checkpointed stage)."""

    def llm(stage: str, section) -> dict[str, Any]:
        """The engine arguments of an LLM stage: its model, and its shared engine if any."""
        path = resolve_model(section.engine.model)
        return dict(model_path=path, served=engines.for_stage(stage, section.engine, path))

    # A shared engine boots (tens of seconds on a small CPU) while the seeds are read, if a generation
    # or discriminator stage is still to run.
    to_run = {
        "generation": [generation.CONTRACT],
        "discriminator": [discriminator.CONTRACT] + ([calibration.ANSWERS] if references is not None else []),
    }
    pending = [stage for stage, contracts in to_run.items() if not all(store.is_done(c.name) for c in contracts)]
    engines.start_early(pending, lambda engine: resolve_model(engine.model))

    # 0. Seeds: the dialogues the method starts from.
    def seed_parts():  # read and written a part at a time: a million seeds never sit in the driver
        batches = seeds.seed_batches(cfg.seeds, storage_options(seeds.seed_path(cfg.seeds), cfg.storage))
        yield from batches
        store.write_json("seeds.json", seeds.seeds_info(batches))

    runner.parts(seeds.CONTRACT, seed_parts)

    # 1. Generation: n new multi-round dialogues per seed.
    g = cfg.generation
    runner.keyed(
        generation.CONTRACT,
        lambda ds, carry: generation.generation_stage(ds, g, carry, **llm("generation", g)),
        prepare=lambda ds: generation.expand_stage(ds, g),  # one row per seed and sample, with its id
        part_rows=parts.part_rows(cfg.storage, g),  # rows per Parquet part: the progress a crash keeps
        engine_progress=engines.progress("generation"),
    )

    # 2. Parse rounds and sample turns: history of k rounds -> the aligned target.
    runner.keyed(
        turns.CONTRACT,
        lambda ds, carry: turns.turns_stage(ds, seed=cfg.seed, turns_cfg=cfg.turns, max_tokens=g.sampling.max_tokens),
    )

    # 3a. The discriminator answers every sampled history itself.
    d = cfg.discriminator
    runner.keyed(
        discriminator.CONTRACT,
        lambda ds, carry: discriminator.discriminator_stage(ds, d, carry, **llm("discriminator", d)),
        where=col("drop_reason").is_null(),
        part_rows=parts.part_rows(cfg.storage, d),
        engine_progress=engines.progress("discriminator"),
    )

    # 3a'. Calibration: the discriminator answers human dialogues too; how well the score tells
    # their true reply from foils, and T (quality.threshold=auto: the score a share of them reach).
    threshold = cfg.quality.threshold
    if references is not None:
        result = calibrate(cfg, store, runner, references, lambda: llm("discriminator", d))
        threshold = result["threshold"]
        manifest["calibration"] = calibration.manifest_entry(result)
        store.write_bytes("config.yaml", calibration.resolved_config_yaml(cfg, result).encode())

    # 3b. Quality score = 100 x cos(target, discriminator answer); keep >= threshold T.
    runner.keyed(quality.CONTRACT, lambda ds, carry: quality.score_stage(ds, cfg.quality, threshold))

    # 4. Diversity: greedy k-center over the kept rows' embeddings (only ids and
    # embeddings are read whole; the selected rows are written by streaming the scored parts).
    def selected():
        store.write_json("selection.json", selection.select_stage(store, cfg.diversity, cfg.seed))

    runner.run(selection.CONTRACT.name, selected, key=selection.CONTRACT.key)

    # 5. Export the selected set for fine-tuning.
    start = time.perf_counter()
    counts = export.write_selected(store)
    log.info("[export] %d rows in %.1f s", counts[export.ALPACA], time.perf_counter() - start)

    # 6. A judge LLM rates every selected row on naturalness, coherence and empathy.
    j = cfg.judge
    if validates_judge(cfg):
        # 6a. First the judge itself is measured: human replies against degraded ones, through
        # the engine the judge stage uses (a criterion that fails is a warning; the run goes on).
        judge_references = judge_validation.load_references(cfg)
        judge_validation.run_validation(runner, store, cfg, judge_references, lambda: llm("judge", j))
    if j.enabled:
        no_rows = store.count_rows("selected") == 0  # no engine start for nothing to judge
        runner.keyed(
            judge.CONTRACT,
            lambda ds, carry: judge.judge_stage(ds, j, carry, **llm("judge", j)),
            source=(lambda salvage: None) if no_rows else None,
            part_rows=parts.part_rows(cfg.storage, j),
            engine_progress=judge.row_progress(engines.progress("judge")),
        )

    result = report.write_report(store, cfg, runner.timings)
    dataset_card.write_dataset_card(store, cfg, result)  # the run folder is a dataset repository
    log.info("dataset card: %s/README.md", store.url)
    manifest.update(
        counts=result.get("counts", {}), seconds=runner.timings, finished=time.strftime("%Y-%m-%dT%H:%M:%S%z")
    )
    store.write_json("manifest.json", manifest)
    return result
