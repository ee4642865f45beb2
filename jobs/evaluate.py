"""Ray job entry point for evaluating models on held-out dialogues (vLLM via Ray Data LLM).

    ray job submit --working-dir . -- python -P jobs/evaluate.py s3://bucket/eval \\
        --model base=meta-llama/Meta-Llama-3-8B-Instruct --model tuned=/shared/models/ed-plus-selected \\
        --data s3://bucket/ed/test.csv evaluate.engine.gpus_per_replica=1

Joins the cluster named by RAY_ADDRESS (set inside a Ray job), else starts a local Ray.
Arguments are those of ``synth-empathy evaluate --help``; exit code 2 means bad input.
"""

import sys

if __name__ == "__main__":
    from synth_empathy.cli import evaluate

    sys.exit(evaluate.main(sys.argv[1:]))
