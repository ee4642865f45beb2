"""Driver of tests/training/test_ray_train_restart.py: one local Ray, three Ray Train runs.

    python ray_restart_driver.py MODEL ROOT

A. ROOT/a, max_failures=0: a worker is killed once the step-10 checkpoint is stored; the run fails.
B. ROOT/a again: a new run on the same storage resumes from Ray Train's latest checkpoint.
C. ROOT/c, max_failures=1: a worker is killed the same way; Ray Train restarts the group from
   the last checkpoint and the run finishes.
Lines ``PHASE X`` mark the phases on stderr; the workers' step lines come between them.
"""

import os
import signal
import sys
import threading
import time
from pathlib import Path

import psutil

from synth_empathy.config import load_config
from synth_empathy.training.run import run_training

model, root = sys.argv[1], Path(sys.argv[2])


def say(line):
    """On stderr, where the workers' forwarded log lines arrive too (one order)."""
    print(line, file=sys.stderr, flush=True)


def cfg(out, failures):
    return load_config(
        "default",
        [
            f"train.model={model}",
            f"train.output={out}",
            "train.num_workers=2",
            "train.cpus_per_worker=1",
            "train.limit=16",
            "train.batch_size=1",
            "train.max_steps=40",
            "train.save_steps=5",
            "train.log_steps=1",
            "train.eval_steps=0",
            "train.dtype=float32",
            f"train.max_failures={failures}",
        ],
    )


def kill_a_worker_after(out, step):
    def watch():
        folder = out / "ray_train"
        while not any(int(p.name.split("-")[1]) >= step for p in folder.glob("step-*")):
            time.sleep(0.05)
        workers = [p for p in psutil.Process().children(recursive=True) if "RayTrainWorker" in " ".join(p.cmdline())]
        os.kill(workers[-1].pid, signal.SIGKILL)
        say(f"KILLED {workers[-1].pid} of {len(workers)} workers")

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    return thread


say("PHASE A")
kill_a_worker_after(root / "a", 10)
try:
    run_training(cfg(root / "a", 0))
    say("A FINISHED")
except Exception as e:  # Ray Train's WorkerGroupError
    say(f"A FAILED {type(e).__name__}")
time.sleep(2)  # the forwarded worker lines of A arrive before the marker of B
say("PHASE B")
run_training(cfg(root / "a", 0))
time.sleep(2)
say("PHASE C")
kill_a_worker_after(root / "c", 10).join(timeout=0)
run_training(cfg(root / "c", 1))
time.sleep(2)
say("PHASE END")
