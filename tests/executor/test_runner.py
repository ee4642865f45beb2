"""The stage runner's bookkeeping without Ray: markers, read-back, contract checks first."""

import pyarrow as pa
import pytest

from synth_empathy import schemas
from synth_empathy.errors import BadInputError, StageInputError
from synth_empathy.executor.runner import StageRunner
from synth_empathy.stages import discriminator, generation, judge, quality, seeds, selection, turns
from synth_empathy.stages.contract import StageContract
from synth_empathy.storage.run_store import RunStore

PIPELINE = [seeds, generation, turns, discriminator, quality, selection, judge]


def test_every_stage_requires_only_what_its_input_stage_produces():
    produced = {m.CONTRACT.name: m.CONTRACT.produces.names for m in PIPELINE}
    for m in PIPELINE[1:]:
        c = m.CONTRACT
        missing = [col for col in c.requires if col not in produced[c.input]]
        assert not missing, f"{c.name} requires {missing} that {c.input} does not write"


def test_carried_columns_are_derived_from_the_input_schema():
    # what pipeline.py used to pass by hand
    assert discriminator.CONTRACT.carried(schemas.SAMPLES.names) == schemas.SAMPLE_CARRY
    assert judge.CONTRACT.carried(schemas.SELECTED.names) == tuple(schemas.SELECTED.names)
    assert generation.CONTRACT.carried(schemas.SEEDS.names) == ("seed_id", "sample_id", "emotion")


def test_missing_required_column_is_one_line_bad_input():
    with pytest.raises(StageInputError, match=r"stage 'discriminated': its input lacks the column\(s\) history") as e:
        discriminator.CONTRACT.check(["sample_id", "instruction", "drop_reason"], "its input")
    assert isinstance(e.value, BadInputError) and "\n" not in str(e.value)


def _table(ids):
    return pa.table({"sample_id": ids, "v": list(range(len(ids)))})


CONTRACT = StageContract("things", None, (), pa.schema([("sample_id", pa.string()), ("v", pa.int64())]))


def test_a_finished_stage_is_read_back_not_recomputed(tmp_path):
    store = RunStore(str(tmp_path), "r")
    manifest = {"stages": {}}
    calls = []

    def make():
        calls.append(1)
        return _table(["a", "b"])

    first = StageRunner(store, manifest).table(CONTRACT, make)
    assert first["rows"] == 2 and store.is_done("things") and "things" in manifest["stages"]
    again = StageRunner(store, {"stages": {}}).table(CONTRACT, make)
    assert calls == [1] and again["done_earlier"] and again["rows"] == 2


def test_a_doubled_id_leaves_the_stage_unfinished(tmp_path):
    store = RunStore(str(tmp_path), "r")
    with pytest.raises(Exception, match="doubled sample_id"):
        StageRunner(store).table(CONTRACT, lambda: _table(["a", "a"]))
    assert not store.is_done("things")


def test_keyed_checks_the_contract_before_building_anything(tmp_path):
    store = RunStore(str(tmp_path), "r")
    StageRunner(store).table(CONTRACT, lambda: _table(["a"]))  # 'things' has no 'history'
    needs = StageContract("answers", "things", ("sample_id", "history"), CONTRACT.produces)
    with pytest.raises(StageInputError, match="input table 'things' lacks the column\\(s\\) history"):
        StageRunner(store).keyed(needs, lambda ds, carry: pytest.fail("must not build"))
    assert not (tmp_path / "r" / "answers").exists()
