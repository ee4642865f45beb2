"""Ray Train's trainer as `synth-empathy train` builds it (no Ray needed to inspect it)."""

from ray.train import ScalingConfig
from ray.train.torch import TorchTrainer

from synth_empathy.training.ray_train import CLEANER, _trainer_class


def callbacks(trainer_class):
    trainer = trainer_class(lambda config: None, scaling_config=ScalingConfig(num_workers=1))
    return [type(c).__name__ for c in trainer._create_default_callbacks()]


def test_the_placement_group_cleaner_is_left_out_and_nothing_else():
    """Ray 2.60's cleaner reads a state-API miss as the controller's death and removes a live
    run's placement group; the trainer keeps every other default callback."""
    stock = callbacks(TorchTrainer)
    assert CLEANER in stock  # if Ray drops or renames it, this test says so
    ours = callbacks(_trainer_class())
    assert ours == [name for name in stock if name != CLEANER]
