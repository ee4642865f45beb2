"""Fine-tuning the discriminator (method step 0) on ED, the pipeline's exports, or both.

    synth-empathy train [--preset NAME] [--output DIR] [--no-ray] [key=value ...]

Every option is in the ``train`` section of the config (``synth-empathy config --docs``).
With no ``train.data`` it trains on the seed dialogues shipped in the package, a small
demonstration; a real discriminator trains on EmpatheticDialogues' ``train.csv``
(``train.data=[ed/train.csv]``; where ED is published: the ``train.data`` doc). The
flags are aliases: ``--output`` for ``train.output``, ``--no-ray`` for
``train.use_ray=false``. The prompts are built exactly as the discriminator stage builds
them at run time (``discriminator.system_prompt``, ``discriminator.input_format``, the
model's chat template).

Writes into ``train.output``: ``model/`` (safetensors + tokenizer with its chat template;
point ``discriminator.engine.model`` at it), ``checkpoints/``, ``train_report.json``,
``loss.png`` and ``train_run.json``. Run the same command again after a crash and it
resumes from the last checkpoint; on a finished run it prints the report again.

Exit codes: 0 trained (or already finished), 2 bad input - one ``error:`` line, before
a worker starts or the model's weights load.
"""

from __future__ import annotations

import argparse
import sys

from synth_empathy.cli.common import Parser, add_config_arguments, exits_on_bad_input, load_with_aliases
from synth_empathy.logs import setup_logging


def _parser() -> argparse.ArgumentParser:
    p = Parser(prog="synth-empathy train", description="Fine-tune the discriminator (full or LoRA).")
    p.add_argument("--output", help="alias for train.output")
    p.add_argument("--no-ray", dest="use_ray", action="store_const", const=False, help="alias for train.use_ray=false")
    add_config_arguments(p)
    return p


@exits_on_bad_input
def main(argv: list[str] | None = None) -> int:
    """``synth-empathy train``: exit 0 on success, 2 with one ``error:`` line on bad input."""
    setup_logging()
    a = _parser().parse_args(argv)
    cfg = load_with_aliases(a, {"output": "train.output", "use_ray": "train.use_ray"})
    from synth_empathy.storage.run_store import storage_options
    from synth_empathy.training.inputs import check_sources

    # before the training stack imports and the tokenizer loads: a missing source says so at once
    check_sources(
        list(cfg.train.data),
        layout=cfg.train.data_layout,
        storage_options_for=lambda p: storage_options(p, cfg.storage),
    )
    from synth_empathy.training.run import counts_line, run_training

    report = run_training(cfg)
    print(counts_line(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
