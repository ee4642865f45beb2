"""The loop's data plan: what a resumed run replays, and how ranks share an epoch."""

from synth_empathy.training.loop import epoch_order, make_scheduler, step_batches, steps_per_epoch, total_steps

S = {"batch_size": 3, "gradient_accumulation": 2, "seed": 7, "epochs": 2.0, "max_steps": None}


def test_each_epoch_sees_every_example_once_split_between_ranks():
    n, world = 20, 2
    per_epoch = steps_per_epoch(n, world, 3, 2)
    assert total_steps(S, n, world) == 2 * per_epoch
    for epoch in range(2):
        seen = [
            i
            for rank in range(world)
            for step in range(epoch * per_epoch, (epoch + 1) * per_epoch)
            for batch in step_batches(S, n, step, rank, world)
            for i in batch
        ]
        assert len(seen) == len(set(seen)) == n


def test_the_plan_depends_only_on_seed_epoch_and_step():
    # What a resumed process computes for step k is what the killed one would have.
    assert step_batches(S, 20, 5, 0, 1) == step_batches(dict(S), 20, 5, 0, 1)
    assert epoch_order(20, 7, 0) != epoch_order(20, 7, 1)


def _lrs(kind, total, warmup):
    import torch

    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = make_scheduler(kind, opt, total, warmup)
    out = []
    for _ in range(total):
        out.append(sched.get_last_lr()[0])
        opt.step()
        sched.step()
    return out + [sched.get_last_lr()[0]]


def test_warmup_then_cosine_to_zero():
    # transformers' schedules: linear warmup from 0, the peak after `warmup` steps, then down to 0
    lrs = _lrs("cosine", 10, 2)
    assert lrs[:3] == [0.0, 0.5, 1.0] and abs(lrs[-1]) < 1e-9 and lrs == sorted(lrs[:3]) + sorted(lrs[3:], reverse=True)
    assert _lrs("constant", 10, 0) == [1.0] * 11 and _lrs("linear", 4, 0) == [1.0, 0.75, 0.5, 0.25, 0.0]
