"""Ray job entry point for judging a dataset on its own (the judge LLM over Parquet or JSONL).

    ray job submit --working-dir . -- python jobs/judge.py s3://bucket/run/selected/ s3://bucket/judged-run/ \\
        --preset single-gpu judge.engine.replicas=4

Joins the cluster named by RAY_ADDRESS (set inside a Ray job), else starts a local Ray.
Arguments are those of ``synth-empathy judge --help``; exit code 2 means bad input.
"""

import sys

if __name__ == "__main__":
    from synth_empathy.cli import judge as judging

    sys.exit(judging.main(sys.argv[1:]))
