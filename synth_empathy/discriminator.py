"""Method step 3a - the discriminator answers each sampled history itself.

The discriminator (in the paper, an LLM fine-tuned on EmpatheticDialogues) reads the
sample's instruction - the dialogue history ending with an open ``Listener:`` line -
under the system prompt "you are a helpful assistant" and writes its own listener
answer. :mod:`synth_empathy.quality` then compares that answer with the generated target.

in:  samples (rows without a drop reason)  ``seed_id, sample_id, instruction, output, ...``
out: ``+ disc_response, disc_model, disc_num_tokens, disc_error``
"""

from __future__ import annotations

from typing import Any, Dict, List, Sequence

from synth_empathy.llm import LLMStage


def discriminator_messages(instruction: str, system_prompt: str) -> List[Dict[str, str]]:
    return [{"role": "system", "content": system_prompt}, {"role": "user", "content": instruction}]


class Discriminator(LLMStage):
    name = "discriminator"
    model_column = "disc_model"
    tokens_column = "disc_num_tokens"
    error_column = "disc_error"

    def __init__(self, engine, sampling, system_prompt: str, passthrough: Sequence[str]) -> None:
        super().__init__(engine, sampling)
        self.system_prompt = system_prompt
        self.passthrough = tuple(passthrough)

    def messages(self, row: Dict[str, Any]) -> List[Dict[str, str]]:
        return discriminator_messages(row["instruction"], self.system_prompt)

    def output_columns(self, row: Dict[str, Any], text: str) -> Dict[str, Any]:
        return {"disc_response": text.strip()}
