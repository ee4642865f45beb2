"""Turn sampling (method step 2): one training sample from one parsed dialogue.

Given rounds r_1..r_n, draw k, the number of history rounds, uniformly from
``min_history..min(max_history, n - 1)``. The instruction is::

    Speaker: <context_1>
    Listener: <response_1>
    ...
    Speaker: <context_k>
    Listener: <response_k>
    Speaker: <context_k+1>
    Listener:

and the training target (``output``) is ``response_k+1``, the reply to the context the
instruction ends on.

**Alignment, a deliberate departure from the authors' script.** The published
Synth-Empathy script builds the same instruction but always takes the target from the
*last* round, whatever k was. Whenever k + 1 < n that pairs the open ``Listener:`` with
a reply to a later context the model never sees. Here the target is always the response
of round k + 1, so target and context belong together.

**Dialogues that are too short.** With the defaults (``min_history=1``) a sample needs
at least two rounds, so a one-round dialogue is dropped with reason ``too_few_rounds``.
Passing ``min_history=0`` allows k = 0: the sample is then just the first context with
its response and no history (a one-round dialogue always gives k = 0).

**Determinism.** The draw uses the ``random.Random`` passed in. :func:`rng_for` derives
one from ``(sample_id, seed)`` through SHA-256, so every worker and every re-run draws
the same k for the same sample, independent of processing order or ``PYTHONHASHSEED``.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

SPEAKER = "Speaker"
LISTENER = "Listener"

# Stable drop-reason codes.
REASON_TOO_FEW_ROUNDS = "too_few_rounds"
REASON_EMPTY_ROUND = "empty_round"


@dataclass(frozen=True)
class Sample:
    """One training sample.

    ``history`` holds the same dialogue as ``instruction`` as structured chat turns:
    ``{"role": "user", "content": context_i}`` / ``{"role": "assistant", "content":
    response_i}`` for the k history rounds, then the final user turn with
    ``context_k+1``. The target (``output``) is not in it.
    """

    instruction: str
    output: str
    n_history: int
    history: list[dict[str, str]]


@dataclass(frozen=True)
class SampleResult:
    """A sample, or the reason there is none (exactly one of the two is set)."""

    sample: Sample | None
    reason: str | None

    @property
    def ok(self) -> bool:
        return self.sample is not None


def rng_for(sample_id: str, seed: int) -> random.Random:
    """A ``random.Random`` determined by ``(sample_id, seed)`` alone.

    Python's ``hash()`` of a str changes between processes, so a digest is used.
    """
    digest = hashlib.sha256(f"{seed}\x00{sample_id}".encode("utf-8", "surrogatepass")).digest()
    return random.Random(int.from_bytes(digest[:16], "big"))


def _one_line(text: str) -> str:
    # Each turn must stay on one line so the Speaker:/Listener: layout cannot be
    # broken (or forged) by a newline inside a context.
    return " ".join(str(text).split())


def _pair(round_: Any) -> tuple[str, str]:
    """Accept parsing.Round objects, dicts (the Parquet ``rounds`` column) or 2-tuples."""
    if isinstance(round_, Mapping):
        return _one_line(round_.get("context", "")), _one_line(round_.get("response", ""))
    if hasattr(round_, "context") and hasattr(round_, "response"):
        return _one_line(round_.context), _one_line(round_.response)
    context, response = round_
    return _one_line(context), _one_line(response)


def sample_turns_result(
    rounds: Sequence[Any],
    rng: random.Random,
    *,
    min_history: int = 1,
    max_history: int = 3,
) -> SampleResult:
    """Draw k and build the aligned sample, or say why the dialogue is dropped."""
    if min_history < 0 or max_history < min_history:
        raise ValueError(
            f"need 0 <= min_history <= max_history, got min_history={min_history}, max_history={max_history}"
        )
    pairs = [_pair(r) for r in rounds]
    n = len(pairs)
    if n < min_history + 1:
        return SampleResult(sample=None, reason=REASON_TOO_FEW_ROUNDS)

    k = rng.randint(min_history, min(max_history, n - 1))
    used = pairs[: k + 1]
    if any(not context or not response for context, response in used):
        return SampleResult(sample=None, reason=REASON_EMPTY_ROUND)

    lines: list[str] = []
    history: list[dict[str, str]] = []
    for context, response in used[:k]:
        lines += [f"{SPEAKER}: {context}", f"{LISTENER}: {response}"]
        history += [
            {"role": "user", "content": context},
            {"role": "assistant", "content": response},
        ]
    last_context, target = used[k]
    lines += [f"{SPEAKER}: {last_context}", f"{LISTENER}:"]
    history.append({"role": "user", "content": last_context})
    sample = Sample(instruction="\n".join(lines), output=target, n_history=k, history=history)
    return SampleResult(sample=sample, reason=None)


def sample_turns(
    rounds: Sequence[Any],
    rng: random.Random,
    *,
    min_history: int = 1,
    max_history: int = 3,
) -> Sample | None:
    """The sample for ``rounds``, or ``None`` when the dialogue is dropped.

    Use :func:`sample_turns_result` to learn why it was dropped.
    """
    return sample_turns_result(rounds, rng, min_history=min_history, max_history=max_history).sample
