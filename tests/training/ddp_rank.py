"""One rank of a two-process gloo group running the training loop (tests/training/test_data_parallel.py).

    python ddp_rank.py RANK WORLD INIT_FILE JOB.json

JOB.json: {"examples": [...], "eval_examples": [...], "runs": [{"settings": {...}, "output": DIR}, ...]};
every run trains in turn in the same process group (the imports are paid once). A run with
"eval_losses": [...] reports those validation losses in turn instead of the measured ones (a
scripted best step for keep_best).
"""

import json
import os
import sys

import torch
import torch.distributed as dist

from synth_empathy.training import loop

rank, world, init_file, job_file = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4]
torch.set_num_threads(1)
os.environ["LOCAL_RANK"] = "0"
dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
job = json.loads(open(job_file).read())
measured = loop.evaluate
for run in job["runs"]:
    scripted = iter(run.get("eval_losses", []))
    # measured all the same (its forward passes leave FSDP's state as a real run's do), then replaced
    loop.evaluate = (
        (lambda *a, _s=scripted, **k: (measured(*a, **k), next(_s))[1]) if "eval_losses" in run else measured
    )
    loop.train_loop(run["settings"], job["examples"], run["output"], eval_examples=job["eval_examples"])
dist.destroy_process_group()
