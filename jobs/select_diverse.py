"""Ray job entry point for diversity selection on its own (greedy k-center over Parquet).

    ray job submit --working-dir . -- python jobs/select_diverse.py s3://bucket/scored/ s3://bucket/selected/ \
        --ratio 0.9 --method sharded --shards 16

Joins the cluster named by RAY_ADDRESS (set inside a Ray job), else starts a local Ray.
Arguments are those of ``synth-empathy select --help``; exit code 2 means bad input.
"""

import os
import sys

if __name__ == "__main__":
    import ray

    from synth_empathy.cli import select as selection

    ray.init(address=os.environ.get("RAY_ADDRESS") or None)
    try:
        code = selection.main(sys.argv[1:])
    finally:
        ray.shutdown()
    sys.exit(code)
