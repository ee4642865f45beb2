"""What the discriminator reads, as chat messages: one builder for run time and training.

The discriminator stage (:mod:`synth_empathy.stages.discriminator`) sends
:func:`discriminator_messages` to the engine; the trainer
(:mod:`synth_empathy.core.sft_data`) builds its prompts with the same function and
appends the target as the assistant turn (:func:`training_messages`). A model fine-tuned
here therefore sees, token for token, the prompt layout it is asked with at run time:
same system prompt, same ``input_format``, same chat template.

A *row* is a sample as the pipeline's turn-sampling stage writes it: ``instruction``
(``Speaker:`` / ``Listener:`` lines ending in an open ``Listener:``), ``history`` (the same
dialogue as ``user`` / ``assistant`` turns ending with a ``user`` turn) and ``output``
(the listener's answer, the training target). Pure; no Ray.
"""

from __future__ import annotations

from typing import Any

INPUT_FORMATS = ("chat", "instruction")


def discriminator_messages(row: dict[str, Any], system_prompt: str, input_format: str = "chat") -> list[dict[str, str]]:
    """What the discriminator reads: the history, ending where the listener speaks.

    ``instruction`` sends the sample's instruction text as written in the training
    data (what an ED-tuned discriminator saw in training); ``chat`` sends the same
    history as user (speaker) / assistant (listener) turns, so an untuned chat model
    answers as the listener instead of commenting on a transcript.
    """
    system = [{"role": "system", "content": system_prompt}]
    if input_format == "instruction":
        return system + [{"role": "user", "content": row["instruction"]}]
    return system + [{"role": t["role"], "content": t["content"]} for t in row["history"]]


def training_messages(row: dict[str, Any], system_prompt: str, input_format: str = "chat") -> list[dict[str, str]]:
    """The discriminator's prompt for ``row`` followed by its target as the assistant turn."""
    return discriminator_messages(row, system_prompt, input_format) + [
        {"role": "assistant", "content": str(row["output"])}
    ]
