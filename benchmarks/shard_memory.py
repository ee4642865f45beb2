"""What one worker holds under DDP against FSDP: two gloo processes on this CPU, SmolLM2-135M.

    .venv/bin/python benchmarks/shard_memory.py

For each strategy, two ranks load the packaged model in float32, wrap it (DDP) or shard it
(``synth_empathy.training.loop.shard_model``), and take two AdamW steps on a random batch
(4 x 64 tokens). Each rank prints the bytes of its own parameters, gradients and AdamW state
(local shards under FSDP) and its resident memory (RSS) after loading, after wrapping and
after the steps, and its max RSS. The tensor bytes are what sharding changes; RSS adds
the runtime, transient full-size gradients before the reduce-scatter and allocator caching.
"""

import json
import os
import resource
import subprocess
import sys
import tempfile


def rank_main(rank: int, strategy: str, init: str) -> None:
    import torch
    import torch.distributed as dist

    from synth_empathy.models.weights import resolve_model
    from synth_empathy.training import loop

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init}", rank=rank, world_size=2)

    def rss() -> float:
        return int(open("/proc/self/statm").read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**30

    def gib(tensors) -> float:
        local = [t.to_local() if hasattr(t, "to_local") else t for t in tensors]
        return sum(t.numel() * t.element_size() for t in local) / 2**30

    out = {}
    s = {"model_path": resolve_model("packaged:smollm2"), "method": "full", "gradient_checkpointing": False}
    model = loop.load_model(s, torch.device("cpu"), torch.float32)
    out["rss_loaded"] = rss()
    if strategy == "fsdp":
        model = loop.shard_model(model, torch.float32, torch.device("cpu"), 2)
    else:
        model = torch.nn.parallel.DistributedDataParallel(model)
    out["rss_wrapped"] = rss()
    params = list(model.parameters())
    optimizer = torch.optim.AdamW(params, lr=1e-5)
    ids = torch.randint(0, 1000, (4, 64), generator=torch.Generator().manual_seed(0))
    for _ in range(2):
        model(input_ids=ids).logits.float().mean().backward()
        optimizer.step()
    out["rss_after_steps"] = rss()
    out["param_gib"] = gib(params)
    out["grad_gib"] = gib([p.grad for p in params if p.grad is not None])
    state = [v for st in optimizer.state.values() for v in st.values() if torch.is_tensor(v) and v.dim() > 0]
    out["adamw_gib"] = gib(state)
    out["max_rss"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    print(json.dumps({"strategy": strategy, "rank": rank, **{k: round(v, 3) for k, v in out.items()}}), flush=True)
    dist.destroy_process_group()


def main() -> None:
    for strategy in ("ddp", "fsdp"):
        with tempfile.TemporaryDirectory() as tmp:
            init = os.path.join(tmp, "pg")
            procs = [
                subprocess.Popen(
                    [sys.executable, __file__, "--rank", str(r), strategy, init], stderr=subprocess.DEVNULL
                )
                for r in range(2)
            ]
            for p in procs:
                p.wait()


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--rank":
        rank_main(int(sys.argv[2]), sys.argv[3], sys.argv[4])
    else:
        main()
