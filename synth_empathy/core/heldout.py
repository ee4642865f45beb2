"""The held-out split: which ED dialogues training never sees (and evaluation uses).

Deterministic and stateless: a dialogue's side depends only on its *split key*, a salt
and the held-out fraction, never on file order, worker or process, so ``synth-empathy
train`` and the evaluation command agree on every dialogue without sharing a file.

**The split key is the dialogue's opening turn, not its id.** EmpatheticDialogues in the
turn-level layout (its ``valid.csv``) holds almost every conversation twice
under two ids, once cut after two turns and once longer: of its 2,748 distinct opening
turns, 2,747 appear under two or more ``dialogue_id``s. Splitting by id would put nearly
every held-out conversation into training under its other id. Every seed pair of a
dialogue starts with the same opening speaker turn (the first line of its ``context``),
and so does every copy of the dialogue, so hashing that turn keeps a conversation and
all its copies on one side. (Two different conversations that open with the very same
words also land together, which is harmless.)

``bucket(key) = int(sha256(salt + NUL + key)[:8]) / 2**64`` in ``[0, 1)``; the dialogue
is held out when ``bucket < fraction``. Pure; no Ray.
"""

from __future__ import annotations

import hashlib

#: Changing the salt draws a different (equally deterministic) split.
DEFAULT_SALT = "synth-empathy/heldout/v1"


def split_key(context: str) -> str:
    """The key of the dialogue a seed pair comes from: its opening turn, lower-cased,
    whitespace collapsed, without the ``Speaker:`` prefix."""
    first = context.split("\n", 1)[0]
    if first.lower().startswith("speaker:"):
        first = first[len("speaker:") :]
    return " ".join(first.lower().split())


def bucket(key: str, salt: str = DEFAULT_SALT) -> float:
    """A number in ``[0, 1)`` fixed by ``(salt, key)``."""
    digest = hashlib.sha256(f"{salt}\x00{key}".encode("utf-8", "surrogatepass")).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def is_heldout(context: str, fraction: float, salt: str = DEFAULT_SALT) -> bool:
    """True when the dialogue of a seed pair with this ``context`` is held out."""
    if not 0 <= fraction < 1:
        raise ValueError(f"held-out fraction must be in [0, 1), got {fraction}")
    return bucket(split_key(context), salt) < fraction
