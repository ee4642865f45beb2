"""Driver of tests/training/test_ray_train_restart.py: one local Ray, three Ray Train runs.

    python ray_restart_driver.py MODEL ROOT S3_ENDPOINT BUCKET

A. ROOT/a, max_failures=0: a worker is killed once Ray Train has registered the step-10
   checkpoint; the run fails.
B. ROOT/a again: a new run on the same storage resumes from Ray Train's latest checkpoint.
C. s3://BUCKET/c (an S3 API at S3_ENDPOINT: Ray Train's storage and the model there, no shared
   folder), max_failures=1: a worker is killed the same way; Ray Train restarts the group from
   the last checkpoint (read back from S3) and the run finishes.
Lines ``PHASE X`` mark the phases on stderr; the workers' step lines come between them.
"""

import json
import os
import signal
import sys
import threading
import time
from pathlib import Path

import fsspec
import psutil

from synth_empathy.config import load_config
from synth_empathy.training.run import run_training

model, root, endpoint, bucket = sys.argv[1], Path(sys.argv[2]), sys.argv[3], sys.argv[4]
S3 = [f"storage.endpoint_url={endpoint}", "storage.key=testing", "storage.secret=testing"]


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
            *S3,
        ],
    )


def kill_a_worker_after(out, step):
    fs, root = fsspec.core.url_to_fs(str(out), **({"key": "testing", "secret": "testing",
                                     "client_kwargs": {"endpoint_url": endpoint}} if str(out).startswith("s3") else {}))  # fmt: skip

    def registered():
        """The step of the latest checkpoint Ray Train's controller has registered (its own
        snapshot in storage), 0 before one: a checkpoint folder can be complete in storage
        before the controller knows of it, and a restart resumes only from what it knows."""
        fs.invalidate_cache()
        try:
            snapshot = json.loads(fs.cat_file(f"{root}/ray_train/checkpoint_manager_snapshot.json"))
        except (FileNotFoundError, ValueError):  # not written yet, or caught mid-write
            return 0
        latest = snapshot.get("latest_checkpoint_result") or {}
        return int(str(latest.get("checkpoint_dir_name") or "step-0").rsplit("-", 1)[1])

    def watch():
        while registered() < step:
            time.sleep(0.1)
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
kill_a_worker_after(f"s3://{bucket}/c", 10)
run_training(cfg(f"s3://{bucket}/c", 1))
time.sleep(2)
say("PHASE END")
