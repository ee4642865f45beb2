"""Ray job entry point for fine-tuning the discriminator (Ray Train + transformers/peft).

    ray job submit --working-dir . -- python jobs/train.py --preset paper \\
        train.output=/shared/models/llama-3-8b-ed-discriminator train.num_workers=8

Joins the cluster named by RAY_ADDRESS (set inside a Ray job), else starts a local Ray.
Arguments are those of ``synth-empathy train --help``; exit code 2 means bad input.
"""

import sys

if __name__ == "__main__":
    from synth_empathy.cli import train as training

    sys.exit(training.main(sys.argv[1:]))
