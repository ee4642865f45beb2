"""The ``synth-empathy`` command.

    synth-empathy run [--preset NAME] [key=value ...]     run or resume the whole job
    synth-empathy config [--preset NAME] [key=value ...]  print the resolved config
    synth-empathy config --docs                           every option, default, meaning
    synth-empathy select ...                              k-center selection on its own
    synth-empathy judge INPUT OUTPUT [...]                rate any dataset with the judge
    synth-empathy judge-validate OUTPUT [...]             the judge on human vs degraded replies
    synth-empathy train [--preset NAME] [key=value ...]   fine-tune the discriminator (step 0)
    synth-empathy evaluate OUTPUT [--model M ...]         models answer held-out dialogues, scored
    synth-empathy calibrate OUTPUT [--data F] [...]       the quality score checked on human replies
    synth-empathy submit ...                              send a run to a Ray cluster as a job

Bad input (an unknown preset or key, a missing seed file, an unwritable output, a
missing model package) ends with one ``error:`` line and exit code 2, before Ray
starts or a model loads.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys

from synth_empathy.cli.common import Parser, add_config_arguments, exits_on_bad_input
from synth_empathy.config import load_config, redacted_yaml, reference_docs
from synth_empathy.logs import setup_logging

# command -> (module with main(argv), help); `run` and `config` are this module's own
COMMANDS = {
    "select": ("synth_empathy.cli.select", "greedy k-center selection over a Parquet dataset"),
    "judge": ("synth_empathy.cli.judge", "rate a Parquet or JSONL dataset with the judge LLM"),
    "judge-validate": (
        "synth_empathy.cli.judge_validate",
        "measure the judge on human replies against degraded ones (per-criterion AUC)",
    ),
    "train": ("synth_empathy.cli.train", "fine-tune the discriminator on ED and/or selected data"),
    "evaluate": ("synth_empathy.cli.evaluate", "models answer held-out dialogues, scored against the references"),
    "calibrate": ("synth_empathy.cli.calibrate", "check the quality score against human replies; T for auto"),
    "submit": ("synth_empathy.cli.submit", "submit a run to a Ray cluster as a job"),
}


def _parser() -> argparse.ArgumentParser:
    p = Parser(prog="synth-empathy", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    for name, help_ in (("run", "run or resume the whole job"), ("config", "print the resolved config")):
        c = sub.add_parser(name, help=help_)
        add_config_arguments(c)
        if name == "config":
            c.add_argument("--docs", action="store_true", help="print every option as a table")
    for name, (_, help_) in COMMANDS.items():
        sub.add_parser(name, help=help_, add_help=False)
    return p


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] and argv[0] in COMMANDS:  # each command parses its own arguments
        return importlib.import_module(COMMANDS[argv[0]][0]).main(argv[1:])
    return _run_or_config(argv)


@exits_on_bad_input
def _run_or_config(argv: list[str]) -> int:
    args = _parser().parse_args(argv)
    setup_logging()
    if args.command == "config":
        if args.docs:
            print(reference_docs(), end="")
            return 0
        print(redacted_yaml(load_config(args.preset, args.overrides)), end="")
        return 0
    cfg = load_config(args.preset, args.overrides)
    from synth_empathy.pipeline import run

    report = run(cfg)
    counts = report["counts"]
    print(json.dumps({"run": report["output"], "counts": counts}))
    if counts["selected"] > 0:
        return 0
    # Finished, but no corpus: exit 1 so that a job or a script does not take it for one.
    print(
        f"error: the run finished with nothing selected ({counts.get('kept', 0)} of {counts.get('samples', 0)} "
        f"samples kept at quality.threshold={report['quality']['threshold']:g}, "
        f"{report['quality']['threshold_source']}; drop reasons in {report['output']}/report.md): "
        "lower quality.threshold (or raise calibration.share) or give more seeds",
        file=sys.stderr,
    )
    return 1
