"""Validating the judge on its own: human replies against degraded ones.

    synth-empathy judge-validate OUTPUT [--limit N] [--data PATH] [--preset NAME] [key=value ...]

The same measurement a run makes before its judge stage
(:mod:`synth_empathy.stages.judge_validation`), for a judge model or prompt being tried
out: the reference dialogues of ``calibration.data`` (``--data``; empty = the run's seed
file, else the shipped one), at most ``calibration.limit`` (``--limit``) of them; each
true reply and its degraded ones rated by ``judge.*``'s engine. ``OUTPUT`` is a folder that
receives ``judge_validation/`` (the rated rows), its done marker and
``judge_calibration.json`` (per criterion and degradation the AUC with its bootstrap
95 % interval, and whether the criterion is discriminative). Run it again and a finished
output is read back. Fewer reference dialogues than the minimum is one ``error:`` line
(exit 2) before Ray starts. Exit 0 when the validation ran, whatever it found: a judge
that is not discriminative is a finding, reported on stdout and in the log.
"""

from __future__ import annotations

import argparse
import logging
import sys

from synth_empathy.cli.common import Parser, add_config_arguments, exits_on_bad_input, load_with_aliases
from synth_empathy.core.judge_scores import CRITERIA
from synth_empathy.logs import setup_logging

log = logging.getLogger(__name__)


def run_validation(output: str, cfg) -> dict:
    """Validate ``cfg.judge`` into ``output``; returns :data:`RESULT_FILE`'s content."""
    from synth_empathy.cli.judge import output_store
    from synth_empathy.cluster.ray_init import init_ray
    from synth_empathy.executor.runner import StageRunner
    from synth_empathy.models.weights import check_model, resolve_model
    from synth_empathy.stages import judge_validation
    from synth_empathy.storage.run_store import storage_options

    source = judge_validation.reference_source(cfg)
    references = judge_validation.load_references(cfg)
    check_model(cfg.judge.engine.model)
    store = output_store(output, storage_options(output, cfg.storage))
    store.check_writable()

    def engine() -> dict:
        init_ray(cfg, sections=("judge",))  # only when there is judging to do
        log.info(
            "[judge] validating %s on %d reference dialogues of %s", cfg.judge.engine.model, len(references), source
        )
        return {"model_path": resolve_model(cfg.judge.engine.model), "served": None}

    runner = StageRunner(store, progress_interval=cfg.ray.progress_interval_s)
    result = judge_validation.run_validation(runner, store, cfg, references, engine)
    return {**result, "output": store.url}


def summary_lines(result: dict) -> list[str]:
    """One line per criterion: its AUCs with intervals and the verdict."""
    lines = []
    for c in CRITERIA:
        v = result["criteria"][c]
        aucs = ", ".join(
            f"{d} {a['auc']:.2f} [{a['low']:.2f}, {a['high']:.2f}]" for d, a in v["auc"].items() if a["auc"] is not None
        )
        verdict = "discriminative" if v["discriminative"] else f"NOT discriminative ({v['why_not']})"
        lines.append(f"{c}: {verdict}; AUC {aucs}")
    return lines


def _parser() -> argparse.ArgumentParser:
    p = Parser(
        prog="synth-empathy judge-validate",
        description="Measure the judge on human replies against degraded ones (per-criterion AUC).",
    )
    p.add_argument("output", help="output folder, path or URL")
    p.add_argument("--limit", type=int, help="most reference dialogues (calibration.limit)")
    p.add_argument("--data", help="reference dialogues, any seeds.layout (calibration.data)")
    add_config_arguments(p)
    return p


@exits_on_bad_input
def main(argv: list[str] | None = None) -> int:
    """``synth-empathy judge-validate``: exit 0 when it ran, 2 with one ``error:`` line on bad input."""
    setup_logging()
    a = _parser().parse_args(argv)
    cfg = load_with_aliases(a, {"limit": "calibration.limit", "data": "calibration.data"})
    result = run_validation(a.output, cfg)
    print(f"judge {result['model']} on {result['references']} reference dialogues -> {result['output']}")
    for line in summary_lines(result):
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
