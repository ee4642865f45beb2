"""Ray job entry point for the whole pipeline.

    ray job submit --working-dir . -- python jobs/run_pipeline.py --preset paper key=value ...

Inside a Ray job, RAY_ADDRESS is set and the pipeline joins that cluster.
"""

import sys

from synth_empathy.cli import main

if __name__ == "__main__":
    sys.exit(main(["run", *sys.argv[1:]]))
