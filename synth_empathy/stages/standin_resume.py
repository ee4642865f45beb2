"""A resume must not mix a stand-in's rows and a real model's in one stage.

A stand-in engine or embedder (:mod:`synth_empathy.core.standin`) is a benchmark instrument;
its rows are shapes, not model output. A run folder whose ``config.yaml`` names a stand-in
for a model, resumed with a real one (or the other way round), would add rows of the other
kind to every stage that model already wrote: :func:`check` refuses that with one line,
before Ray starts.
"""

from __future__ import annotations

from omegaconf import DictConfig, OmegaConf

from synth_empathy.errors import BadInputError
from synth_empathy.stages import calibration, discriminator, generation, judge, quality

# The tables each model's answers or vectors are in: what a resume would add rows to.
STANDIN_TABLES = {
    "generation.engine.model": [generation.CONTRACT.name],
    "discriminator.engine.model": [discriminator.CONTRACT.name, calibration.ANSWERS.name],
    "judge.engine.model": [judge.CONTRACT.name],
    "quality.embedder": [quality.CONTRACT.name, calibration.SCORES.name],
}


def check(store, cfg: DictConfig) -> None:
    """A resume must not mix a stand-in's rows (:mod:`synth_empathy.core.standin`) and a
    real model's in one stage: where the run folder's config.yaml names a stand-in and
    the new config a real model (or the other way round) for a stage that already has
    parts, a one-line :class:`BadInputError`."""
    import yaml

    from synth_empathy.core.standin import is_standin

    try:
        with store.fs.open(store.path("config.yaml"), "r") as f:
            old = yaml.safe_load(f) or {}
    except FileNotFoundError:
        return  # a new run
    new = OmegaConf.to_container(cfg, resolve=True)
    for key, tables in STANDIN_TABLES.items():
        was, now = OmegaConf.select(OmegaConf.create(old), key), OmegaConf.select(OmegaConf.create(new), key)
        if was is None or is_standin(was) == is_standin(now):
            continue
        for table in tables:
            if store.is_done(table) or store.parts(table):
                raise BadInputError(
                    f"run {store.run_id}: {table} holds rows from {key}={was!r}, now {now!r}; a resume would mix "
                    "stand-in and real rows in one stage: use a new run_id"
                )
