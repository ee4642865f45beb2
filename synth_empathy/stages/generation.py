"""Method step 1 - generation: an LLM writes new multi-round empathetic dialogues.

Each seed pair (a dialogue history and its listener response) is shown to the generator
as an example of the layout, and the generator is asked, as an empathetic psychologist
with both sensibility and rationality, to write a completely new dialogue of at least
three rounds in the ``Round / Context / Response`` layout that
:mod:`synth_empathy.core.rounds` reads. The answer is started for the model with
``Round 1:\\nContext:`` (the chat template continues that assistant message): small
models follow a layout they are already inside far more often than one they are told
about. Each seed is expanded into ``samples_per_seed`` rows with stable ``sample_id``
values, so re-runs and resumed runs address the same generations.

in:  seeds        ``seed_id, context, response, emotion``
out: generations  ``seed_id, sample_id, emotion, prompt, raw_text, model, num_generated_tokens, error``
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from synth_empathy import schemas
from synth_empathy.stages.contract import StageContract
from synth_empathy.stages.llm import LLMStage

CONTRACT = StageContract(
    name="generations",
    input="seeds",
    requires=("seed_id", "context", "response", "emotion"),
    produces=schemas.GENERATIONS,
    makes=("sample_id",),  # expand_seeds gives every (seed, i) its id before the engine
    tokens="num_generated_tokens",
)

SYSTEM_PROMPT = "You are an empathetic psychologist with both sensibility and rationality."

USER_TEMPLATE = """Write a completely new conversation between a speaker who feels {emotion} and an empathetic listener. Write at least {min_rounds} rounds. In each round, Context is what the speaker says about their emotional situation and Response is the listener's empathetic answer in at most 30 words. Each round continues the one before.

Example of the layout:
{example}

Now write a new conversation about a different situation."""

# The start of the answer, written for the model (see the module docstring).
ANSWER_PREFIX = "Round 1:\nContext:"


def seed_rounds(context: str, response: str) -> list[tuple[str, str]]:
    """The seed dialogue as (speaker context, listener response) rounds.

    Consecutive lines of one role are joined; a history that does not alternate
    cleanly still gives one round made of all the speaker text and the response.
    """
    rounds: list[tuple[str, str]] = []
    speaker: list[str] = []
    listener: list[str] = []
    for line in context.splitlines():
        role, _, text = line.partition(":")
        text = text.strip() if _ else line.strip()
        if role.strip().lower() == "listener" and _:
            listener.append(text)
            continue
        if listener:  # a speaker line after a listener line closes a round
            rounds.append((" ".join(speaker), " ".join(listener)))
            speaker, listener = [], []
        if text:
            speaker.append(text)
    if listener:
        rounds.append((" ".join(speaker), " ".join(listener)))
        speaker = []
    rounds.append((" ".join(speaker), response.strip()))
    return [(c, r) for c, r in rounds if c and r] or [(context.strip(), response.strip())]


def generation_messages(seed: dict[str, Any], min_rounds: int = 3) -> list[dict[str, str]]:
    """Chat messages asking for a new dialogue, the seed shown as the layout example."""
    example = "\n".join(
        f"Round {i}:\nContext: {c}\nResponse: {r}"
        for i, (c, r) in enumerate(seed_rounds(seed["context"], seed["response"]), 1)
    )
    user = USER_TEMPLATE.format(
        emotion=seed.get("emotion") or "a strong emotion", min_rounds=min_rounds, example=example
    )
    return [
        {"role": "system", "content": SYSTEM_PROMPT},
        {"role": "user", "content": user},
        {"role": "assistant", "content": ANSWER_PREFIX},
    ]


def sample_id(seed_id: str, index: int) -> str:
    """The id of the index-th generation of a seed; stable across runs and workers."""
    return f"{seed_id}#g{index}"


def expand_seeds(batch: dict[str, Any], samples_per_seed: int) -> dict[str, list[Any]]:
    """One row per (seed, sample index): the generator's unit of work."""
    keys = ("seed_id", "emotion", "context", "response")
    out: dict[str, list[Any]] = {k: [] for k in keys + ("sample_id",)}
    for i in range(len(batch["seed_id"])):
        for j in range(samples_per_seed):
            for k in keys:
                out[k].append(batch[k][i])
            out["sample_id"].append(sample_id(str(batch["seed_id"][i]), j))
    return out


class Generation(LLMStage):
    """The generator as a ``ray.data.llm`` processor over expanded seed rows."""

    name = "generation"
    passthrough = ("seed_id", "sample_id", "emotion")

    def __init__(self, engine, sampling, min_rounds: int = 3, passthrough: Sequence[str] | None = None) -> None:
        super().__init__(engine, sampling)
        self.min_rounds = min_rounds
        if passthrough is not None:
            self.passthrough = tuple(passthrough)

    def messages(self, row: dict[str, Any]) -> list[dict[str, str]]:
        return generation_messages(row, self.min_rounds)

    def output_columns(self, row: dict[str, Any], text: str) -> dict[str, Any]:
        # The prefix was written for the model, so it belongs to the dialogue text (of an
        # answer there is: a failed request wrote nothing).
        raw = "" if row.get("__inference_error__") else ANSWER_PREFIX + text
        return {"raw_text": raw, "prompt": json.dumps(row["messages"])}


def expand_stage(ds, cfg: Any):
    """One row per (seed, sample index), each with its ``sample_id``: the rows resume skips by id."""
    return ds.map_batches(expand_seeds, fn_kwargs={"samples_per_seed": cfg.samples_per_seed}, batch_format="numpy")


def generation_stage(ds, cfg: Any, carry: Sequence[str], model_path: str | None = None, served=None):
    """Step 1 on a Ray Dataset of expanded seed rows (:func:`expand_stage`)."""
    return Generation(cfg.engine, cfg.sampling, cfg.min_rounds, carry)(ds, model_path=model_path, served=served)
