"""``synth-empathy calibrate OUTPUT``: the quality score checked against human replies, alone.

    synth-empathy calibrate OUTPUT [--data FILE] [--limit N] [--model SPEC] [key=value ...]

The calibration step of ``synth-empathy run`` (method step 3a', :mod:`synth_empathy.stages.calibration`)
without a run: the discriminator (``discriminator.*``, ``--model`` for its engine's model)
answers the reference dialogues (``calibration.data``, else the seed file), and each answer is
scored with the quality stage's embedder against the true reply and three foils. ``OUTPUT``
receives the three calibration stages (resumable like every stage), ``calibration.json`` (T,
the AUCs, the percentiles) and ``calibration.md``; the same table is printed. Use it to see
whether a discriminator (a trained one, another embedder) tells fitting replies from misfits
before spending a run on it, and which T a share of human replies reaches.
"""

from __future__ import annotations

import argparse

from synth_empathy.cli.common import Parser, add_config_arguments, exits_on_bad_input, load_with_aliases
from synth_empathy.logs import setup_logging


def to_markdown(result: dict) -> str:
    from synth_empathy.stages.calibration import markdown_lines

    return "\n".join(["# Calibration against human replies", "", *markdown_lines(result, shares=True), ""])


def _parser() -> argparse.ArgumentParser:
    p = Parser(prog="synth-empathy calibrate", description=__doc__.split("\n\n")[0].strip("`"))
    p.add_argument("output", help="output folder, path or URL")
    p.add_argument("--data", help="reference dialogues, any seeds.layout (alias of calibration.data)")
    p.add_argument("--limit", type=int, help="most reference dialogues (alias of calibration.limit)")
    p.add_argument("--model", help="the discriminator's model (alias of discriminator.engine.model)")
    add_config_arguments(p)
    return p


@exits_on_bad_input
def main(argv: list[str] | None = None) -> int:
    """Exit 0 on success, 2 with one ``error:`` line on bad input (before Ray starts)."""
    setup_logging()
    a = _parser().parse_args(argv)
    cfg = load_with_aliases(
        a, {"data": "calibration.data", "limit": "calibration.limit", "model": "discriminator.engine.model"}
    )
    from synth_empathy.cli.judge import output_store
    from synth_empathy.cluster.ray_init import init_ray
    from synth_empathy.executor.runner import StageRunner
    from synth_empathy.models.weights import check_model, resolve_model
    from synth_empathy.pipeline import calibrate
    from synth_empathy.stages.calibration import reference_table
    from synth_empathy.storage.run_store import storage_options

    references = reference_table(cfg)  # before any model is looked at
    spec = cfg.discriminator.engine.model
    check_model(spec)
    check_model(cfg.quality.embedder)
    store = output_store(a.output, storage_options(a.output, cfg.storage))
    store.check_writable()
    init_ray(cfg, sections=("discriminator", "quality"))
    runner = StageRunner(store, progress_interval=cfg.ray.progress_interval_s)
    result = calibrate(cfg, store, runner, references, lambda: dict(model_path=resolve_model(spec), served=None))
    text = to_markdown(result)
    store.write_bytes("calibration.md", text.encode())
    print(text)
    return 0
