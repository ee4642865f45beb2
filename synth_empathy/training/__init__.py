"""Supervised fine-tuning of the discriminator (method step 0).

:mod:`~synth_empathy.training.inputs` reads the sources into training pairs,
:mod:`~synth_empathy.training.loop` is the training loop (plain PyTorch + transformers +
peft, callable without Ray), :mod:`~synth_empathy.training.run` checks the inputs and
runs the loop in this process or under Ray Train
(:mod:`synth_empathy.training.ray_train`).
"""
