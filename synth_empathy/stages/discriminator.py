"""Method step 3a - the discriminator answers each sampled history itself.

The discriminator (in the paper, an LLM fine-tuned on EmpatheticDialogues) reads the
sample's history - up to the speaker turn the target answers - under the system prompt
"you are a helpful assistant" and writes its own listener answer. :mod:`synth_empathy.stages.quality` then compares that answer with the generated target.

in:  samples (rows without a drop reason)  ``seed_id, sample_id, instruction, output, ...``
out: ``+ disc_response, disc_model, disc_num_tokens, disc_error``
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from synth_empathy import schemas
from synth_empathy.core.discriminator_input import discriminator_messages
from synth_empathy.stages.contract import StageContract
from synth_empathy.stages.llm import LLMStage

CONTRACT = StageContract(
    name="discriminated",
    input="samples",
    requires=("sample_id", "instruction", "history", "drop_reason"),
    produces=schemas.DISCRIMINATED,
    tokens="disc_num_tokens",
)


class Discriminator(LLMStage):
    name = "discriminator"
    model_column = "disc_model"
    tokens_column = "disc_num_tokens"
    error_column = "disc_error"

    def __init__(self, engine, sampling, system_prompt: str, input_format: str, passthrough: Sequence[str]) -> None:
        super().__init__(engine, sampling)
        self.system_prompt = system_prompt
        self.input_format = input_format
        self.passthrough = tuple(passthrough)

    def messages(self, row: dict[str, Any]) -> list[dict[str, str]]:
        return discriminator_messages(row, self.system_prompt, self.input_format)

    def output_columns(self, row: dict[str, Any], text: str) -> dict[str, Any]:
        return {"disc_response": text.strip()}


def discriminator_stage(ds, cfg: Any, carry: Sequence[str], model_path: str | None = None, served=None):
    """Step 3a on a Ray Dataset of samples (those without a drop reason)."""
    return Discriminator(cfg.engine, cfg.sampling, cfg.system_prompt, cfg.input_format, carry)(
        ds, model_path=model_path, served=served
    )
