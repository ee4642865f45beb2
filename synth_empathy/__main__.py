import sys

from synth_empathy.cli import main

if __name__ == "__main__":  # vLLM engines start worker processes with spawn
    sys.exit(main())
