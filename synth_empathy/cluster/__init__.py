"""Where the code runs: Ray start-up and resource checks, and job submission."""
