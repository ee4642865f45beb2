"""The loop's data plan: what a resumed run replays, and how ranks share an epoch."""

from synth_empathy.training.loop import epoch_order, lr_factor, step_batches, steps_per_epoch, total_steps

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


def test_warmup_then_cosine_to_zero():
    assert lr_factor("cosine", 0, 10, 2) == 0.5 and lr_factor("cosine", 1, 10, 2) == 1.0
    assert abs(lr_factor("cosine", 10, 10, 2)) < 1e-9 and lr_factor("constant", 9, 10, 0) == 1.0
