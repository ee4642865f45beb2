"""Where the code runs: Ray start-up and resource checks, job submission, and the Ray
tasks of the sharded k-center."""
