"""The ``synth-empathy`` command.

    synth-empathy run [--preset NAME] [key=value ...]     run or resume the whole job
    synth-empathy config [--preset NAME] [key=value ...]  print the resolved config
    synth-empathy config --docs                           every option, default, meaning
    synth-empathy select ...                              k-center selection on its own
    synth-empathy judge INPUT OUTPUT [...]                rate any dataset with the judge
    synth-empathy train [--preset NAME] [key=value ...]   fine-tune the discriminator (step 0)
    synth-empathy submit ...                              send a run to a Ray cluster as a job

Bad input (an unknown preset or key, a missing seed file, an unwritable output, a
missing model package) ends with one ``error:`` line and exit code 2, before Ray
starts or a model loads.
"""

from __future__ import annotations

import argparse
import json
import sys

from synth_empathy.cli.common import Parser, add_config_arguments, exits_on_bad_input, setup_logging
from synth_empathy.config import docs_table, load_config, redacted_yaml


def _parser() -> argparse.ArgumentParser:
    p = Parser(prog="synth-empathy", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    for name, help_ in (("run", "run or resume the whole job"), ("config", "print the resolved config")):
        c = sub.add_parser(name, help=help_)
        add_config_arguments(c)
        if name == "config":
            c.add_argument("--docs", action="store_true", help="print every option as a table")
    sub.add_parser("select", help="greedy k-center selection over a Parquet dataset", add_help=False)
    sub.add_parser("judge", help="rate a Parquet or JSONL dataset with the judge LLM", add_help=False)
    sub.add_parser("train", help="fine-tune the discriminator on ED and/or selected data", add_help=False)
    sub.add_parser("submit", help="submit a run to a Ray cluster as a job", add_help=False)
    return p


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["select"]:
        from synth_empathy.cli import select as selection

        return selection.main(argv[1:])
    if argv[:1] == ["judge"]:
        from synth_empathy.cli import judge as judging

        return judging.main(argv[1:])
    if argv[:1] == ["train"]:
        from synth_empathy.cli import train as training

        return training.main(argv[1:])
    if argv[:1] == ["submit"]:
        from synth_empathy.cluster import submit

        return submit.main(argv[1:])
    return _run_or_config(argv)


@exits_on_bad_input
def _run_or_config(argv: list[str]) -> int:
    args = _parser().parse_args(argv)
    setup_logging()
    if args.command == "config":
        if args.docs:
            print(docs_table())
            return 0
        print(redacted_yaml(load_config(args.preset, args.overrides)), end="")
        return 0
    cfg = load_config(args.preset, args.overrides)
    from synth_empathy.pipeline import run

    report = run(cfg)
    print(json.dumps({"run": report["output"], "counts": report["counts"]}))
    return 0 if report["counts"]["selected"] > 0 else 1
