"""The stage contracts, as Arrow schemas: the columns each stage writes.

Every stage's output is cast to its schema before it is written, so a batch in
which a column happens to be all null (no errors, say) still writes the declared
type, and every Parquet part of a stage reads back with one schema.
"""

from __future__ import annotations

import pyarrow as pa

_str, _int, _float = pa.string(), pa.int64(), pa.float64()
ROUND = pa.struct([("context", _str), ("response", _str)])
TURN = pa.struct([("role", _str), ("content", _str)])

SEEDS = pa.schema(
    [
        ("seed_id", _str),
        ("context", _str),
        ("response", _str),
        ("emotion", _str),
        ("source", _str),
    ]
)

GENERATIONS = pa.schema(
    [
        ("seed_id", _str),
        ("sample_id", _str),
        ("emotion", _str),
        ("prompt", _str),
        ("raw_text", _str),
        ("model", _str),
        ("num_generated_tokens", _int),
        ("error", _str),
    ]
)

SAMPLES = pa.schema(
    [
        ("seed_id", _str),
        ("sample_id", _str),
        ("emotion", _str),
        ("rounds", pa.list_(ROUND)),
        ("n_rounds", _int),
        ("instruction", _str),
        ("output", _str),
        ("n_history", _int),
        ("history", pa.list_(TURN)),
        ("drop_reason", _str),
        ("incomplete_rounds", _int),
        ("overlong_responses", _int),
    ]
)

# Columns of a sample that travel on to the discriminator and beyond.
SAMPLE_CARRY = ("seed_id", "sample_id", "emotion", "instruction", "output", "n_history", "history")

# Step 3a: the discriminator's own answer to a row's history (also `evaluate`'s answers).
DISC_COLUMNS = [("disc_response", _str), ("disc_model", _str), ("disc_num_tokens", _int), ("disc_error", _str)]
DISCRIMINATED = pa.schema([SAMPLES.field(c) for c in SAMPLE_CARRY] + DISC_COLUMNS)

SCORED = pa.schema(
    list(DISCRIMINATED)
    + [("quality_score", _float), ("kept", pa.bool_()), ("drop_reason", _str), ("embedding", pa.list_(pa.float32()))]
)

# Step 3a': calibration. The reference dialogues (people's replies; `output` is the true
# reply), one foil reply per kind, the discriminator's answers, and every reply's score.
CALIBRATION_REFERENCES = pa.schema(
    [("sample_id", _str), ("instruction", _str), ("output", _str), ("history", pa.list_(TURN)), ("emotion", _str)]
    + [("foil_other_dialogue", _str), ("foil_same_emotion", _str), ("foil_generic", _str)]
)
CALIBRATION_ANSWERS = pa.schema(list(CALIBRATION_REFERENCES) + DISC_COLUMNS)
CALIBRATION_SCORES = pa.schema(
    [("sample_id", _str), ("emotion", _str), ("human_score", _float)]
    + [("other_dialogue_score", _float), ("same_emotion_score", _float), ("generic_score", _float)]
    + [("drop_reason", _str)]
)

SELECTED = pa.schema(
    [f for f in SCORED if f.name not in ("embedding", "kept", "drop_reason")]
    + [("pick_order", _int), ("distance_at_pick", _float)]
)

# Step 6: the judge's ratings of each selected row, expected values in [1, 3] (null when
# not rated, see judge.py).
JUDGED_COLUMNS = [
    ("naturalness", _float),
    ("coherence", _float),
    ("empathy", _float),
    ("judge_model", _str),
    ("judge_num_tokens", _int),
    ("judge_error", _str),
    ("judge_reason", _str),
]
JUDGED = pa.schema(list(SELECTED) + JUDGED_COLUMNS)

# -- the commands' tables (written like a stage's, in their own output folder) ------------

# `synth-empathy judge`: any corpus as the judge reads it (the dialogue and the answer to
# rate), and what it writes.
JUDGE_INPUT = pa.schema([("sample_id", _str), ("instruction", _str), ("output", _str), ("history", pa.list_(TURN))])
JUDGE_OUTPUT = pa.schema(list(JUDGE_INPUT) + JUDGED_COLUMNS)

# `synth-empathy evaluate`: the held-out rows as the discriminator reads them (`output` is
# the reference answer), one model's answers to them (`disc_response`), and the judge's
# ratings of those answers (there `output` is the model's answer).
EVAL_HELDOUT = pa.schema(
    [("sample_id", _str), ("instruction", _str), ("output", _str), ("history", pa.list_(TURN)), ("emotion", _str)]
)
EVAL_ANSWERS = pa.schema(list(EVAL_HELDOUT) + DISC_COLUMNS)
EVAL_JUDGED = pa.schema(
    [EVAL_ANSWERS.field(c) for c in ("sample_id", "instruction", "history")] + [("output", _str)] + JUDGED_COLUMNS
)


def conform(table: pa.Table, schema: pa.Schema) -> pa.Table:
    """The table's columns in the schema's order and types (missing columns: error)."""
    missing = [n for n in schema.names if n not in table.column_names]
    if missing:
        raise ValueError(f"stage output lacks columns {missing}; has {table.column_names}")
    return table.select(schema.names).cast(schema)
