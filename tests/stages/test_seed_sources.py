"""Tests of the seed stage (synth_empathy.stages.seed_sources): every layout, the shipped file, errors."""

from __future__ import annotations

import gzip
import json
import os
import tempfile
import uuid
from pathlib import Path

import fsspec
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from synth_empathy.stages.seed_sources import (
    COLUMNS,
    DROP_REASONS,
    SeedError,
    SeedTable,
    default_seed_path,
    detokenize,
    read_seeds,
    validate_seed_source,
)

ED_LABELS = {
    "afraid",
    "angry",
    "annoyed",
    "anticipating",
    "anxious",
    "apprehensive",
    "ashamed",
    "caring",
    "confident",
    "content",
    "devastated",
    "disappointed",
    "disgusted",
    "embarrassed",
    "excited",
    "faithful",
    "furious",
    "grateful",
    "guilty",
    "hopeful",
    "impressed",
    "jealous",
    "joyful",
    "lonely",
    "nostalgic",
    "prepared",
    "proud",
    "sad",
    "sentimental",
    "surprised",
    "terrified",
    "trusting",
}
SHARED_VALID = Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "ed" / "valid.csv"


def check_table(table: SeedTable) -> None:
    """Invariants every seed table keeps, whatever the layout."""
    frame = table.frame
    assert tuple(frame.columns) == COLUMNS
    assert len(frame) > 0
    assert frame["seed_id"].is_unique
    assert not frame.duplicated(["context", "response"]).any()
    for col in COLUMNS:
        assert all(isinstance(v, str) for v in frame[col]), col
    for context, response in zip(frame["context"], frame["response"]):
        lines = context.split("\n")
        assert lines[-1].startswith("Speaker: ") and lines[-1] != "Speaker: "
        assert all(ln.startswith(("Speaker: ", "Listener: ")) for ln in lines)
        assert response and response == response.strip() and "\n" not in response
    assert set(table.dropped) <= set(DROP_REASONS)
    assert table.to_arrow().num_rows == len(frame)


# ---------------------------------------------------------------------------
# The shipped default file


def shipped_records() -> list[dict]:
    with open(default_seed_path(), encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def test_shipped_file_content() -> None:
    records = shipped_records()
    assert len(records) >= 64
    ids = [r["dialogue_id"] for r in records]
    assert len(set(ids)) == len(ids)
    emotions = {r["emotion"] for r in records}
    assert len(emotions) >= 20 and emotions <= ED_LABELS
    for r in records:
        assert set(r) == {"dialogue_id", "emotion", "situation", "turns"}
        assert isinstance(r["situation"], str) and r["situation"].strip()
        turns = r["turns"]
        assert len(turns) in (2, 4), r["dialogue_id"]  # speaker first, listener last
        assert all(isinstance(t, str) and t.strip() == t and t for t in turns)
        for listener in turns[1::2]:
            assert len(listener.split()) < 30, (r["dialogue_id"], listener)


def test_shipped_file_reads() -> None:
    table = read_seeds(default_seed_path())
    check_table(table)
    assert table.layout == "shipped"
    assert table.dropped == {}
    records = shipped_records()
    assert len(table) == sum(len(r["turns"]) // 2 for r in records)
    first = table.frame.iloc[0]
    assert first["seed_id"] == f"{records[0]['dialogue_id']}:2"
    assert first["context"] == f"Speaker: {records[0]['turns'][0]}"
    assert first["response"] == records[0]["turns"][1]
    assert set(table.frame["source"]) == {"seeds.jsonl"}
    assert validate_seed_source(default_seed_path()) == "shipped"


def test_shipped_layout_skips_bad_dialogues(tmp_path: Path) -> None:
    path = tmp_path / "dialogues.jsonl"
    lines = [
        {
            "dialogue_id": "a",
            "emotion": "sad",
            "turns": ["I lost my keys.", "Oh no, where?", "At the park.", "Let's retrace."],
        },
        {"dialogue_id": "b", "emotion": "sad", "turns": ["Only me talking."]},
        {"dialogue_id": "c", "turns": ["Hi", 5]},
        {"dialogue_id": "d", "turns": ["Hi", "   "]},
        {"emotion": "joyful", "turns": ["No id here.", "That's fine!"]},
        {"dialogue_id": "e"},
        [1, 2],
    ]
    path.write_text("\n".join(json.dumps(x) for x in lines) + "\nnot json\n")
    table = read_seeds(str(path))
    check_table(table)
    assert table.layout == "shipped"
    assert list(table.frame["seed_id"]) == ["a:2", "a:4", "dialogues:5:2"]
    assert table.frame["context"][1] == ("Speaker: I lost my keys.\nListener: Oh no, where?\nSpeaker: At the park.")
    assert table.frame["emotion"][2] == "joyful"
    assert table.dropped == {
        "no_listener_turn": 1,
        "non_string": 1,
        "empty_text": 1,
        "missing_field": 1,
        "not_an_object": 1,
        "bad_json": 1,
    }


# ---------------------------------------------------------------------------
# ED original release CSV

ED_HEADER = "conv_id,utterance_idx,context,prompt,speaker_idx,utterance,selfeval,tags"


def test_ed_original_csv(tmp_path: Path) -> None:
    path = tmp_path / "train.csv"
    rows = [
        ED_HEADER,
        "hit:0_conv:1,1,sentimental,I remember the fireworks_comma_ so pretty.,1,"
        "I remember going to see the fireworks with my best friend_comma_ it was great.,5|5|5_2|2|5,",
        "hit:0_conv:1,2,sentimental,I remember the fireworks_comma_ so pretty.,0,"
        "Was this a friend you were in love with_comma_ or just a best friend?,5|5|5_2|2|5,",
        "hit:0_conv:1,3,sentimental,I remember the fireworks_comma_ so pretty.,1,"
        "This was a best friend. I miss her.,5|5|5_2|2|5,",
        "hit:0_conv:1,4,sentimental,I remember the fireworks_comma_ so pretty.,0,Where has she gone?,5|5|5_2|2|5,",
        # conv 2: its third line has stray extra commas, so turns 3.. are unusable
        "hit:1_conv:2,1,afraid,Spiders.,7,I saw a huge spider in my bathtub.,,",
        "hit:1_conv:2,2,afraid,Spiders.,3,Yikes! What did you do?,,",
        "hit:1_conv:2,3,afraid,Spiders.,7,I ran, screamed, and called my roommate.,,",
        "hit:1_conv:2,4,afraid,Spiders.,3,Good call honestly.,,",
        # conv 3: the same person twice in a row at turn 3
        "hit:2_conv:3,1,proud,Graduation.,4,My son graduated today.,,",
        "hit:2_conv:3,2,proud,Graduation.,5,Congratulations to him!,,",
        "hit:2_conv:3,3,proud,Graduation.,5,You must be thrilled.,,",
        "hit:2_conv:3,4,proud,Graduation.,4,I am!,,",
        # conv 4: a non-numeric index
        "hit:3_conv:4,x,sad,Rain.,1,It rained on my picnic.,,",
        "",
    ]
    path.write_text("\n".join(rows))
    assert validate_seed_source(str(path)) == "ed_csv"
    table = read_seeds(str(path))
    check_table(table)
    assert table.layout == "ed_csv"
    frame = table.frame.set_index("seed_id")
    assert list(frame.index) == [
        "ed:hit:0_conv:1:2",
        "ed:hit:0_conv:1:4",
        "ed:hit:1_conv:2:2",
        "ed:hit:2_conv:3:2",
    ]
    assert frame.loc["ed:hit:0_conv:1:2", "context"] == (
        "Speaker: I remember going to see the fireworks with my best friend, it was great."
    )
    assert frame.loc["ed:hit:0_conv:1:2", "response"] == (
        "Was this a friend you were in love with, or just a best friend?"
    )
    assert frame.loc["ed:hit:0_conv:1:4", "context"].count("\n") == 2
    assert frame.loc["ed:hit:1_conv:2:2", "emotion"] == "afraid"
    assert table.dropped == {
        "malformed_line": 1,
        "turn_gap": 1,
        "non_alternating": 1,
        "bad_number": 1,
    }


def test_ed_original_csv_quoted_resave(tmp_path: Path) -> None:
    """The same layout written by a CSV tool that quotes commas instead of `_comma_`."""
    frame = pd.DataFrame(
        {
            "conv_id": ["c1", "c1"],
            "utterance_idx": [1, 2],
            "context": ["grateful"] * 2,
            "prompt": ["p"] * 2,
            "speaker_idx": [1, 2],
            "utterance": ["My friend, bless her, fixed my bike.", "That's so kind, you lucky thing."],
            "selfeval": ["", ""],
            "tags": ["", ""],
        }
    )
    path = tmp_path / "resaved.csv"
    frame.to_csv(path, index=False)
    table = read_seeds(str(path), layout="ed_csv")
    assert table.frame["context"][0] == "Speaker: My friend, bless her, fixed my bike."
    assert table.dropped == {}


# ---------------------------------------------------------------------------
# ED-style Parquet (the Hugging Face copy)


def test_ed_parquet(tmp_path: Path) -> None:
    rows = [  # out of order on purpose; grouping does not need consecutive rows
        ("hit:5_conv:10", 2, "excited", 0, "Oh nice, where to?"),
        ("hit:5_conv:10", 1, "excited", 1, "We booked a trip_comma_ finally!"),
        ("hit:6_conv:11", 1, "lonely", 1, "My roommate moved out, so it's quiet."),
        ("hit:5_conv:10", 3, "excited", 1, "Lisbon , in may ."),
        ("hit:6_conv:11", 2, "lonely", 0, None),
        ("hit:5_conv:10", 4, "excited", 0, "i 'm so jealous , have fun !"),
    ]
    table = pa.table(
        {
            "conv_id": [r[0] for r in rows],
            "utterance_idx": [r[1] for r in rows],
            "context": [r[2] for r in rows],
            "prompt": ["p"] * len(rows),
            "speaker_idx": [r[3] for r in rows],
            "utterance": [r[4] for r in rows],
            "selfeval": [""] * len(rows),
            "tags": [""] * len(rows),
        }
    )
    path = tmp_path / "hf.parquet"
    pq.write_table(table, path)
    assert validate_seed_source(str(path)) == "ed_parquet"
    seeds = read_seeds(str(path))
    check_table(seeds)
    assert list(seeds.frame["seed_id"]) == ["ed:hit:5_conv:10:2", "ed:hit:5_conv:10:4"]
    assert seeds.frame["context"][0] == "Speaker: We booked a trip, finally!"
    assert seeds.frame["context"][1].endswith("Speaker: Lisbon, in may.")
    assert seeds.frame["response"][1] == "i'm so jealous, have fun!"
    # conv 11 lost its only listener turn (null text); a missing last turn cannot be told
    # from a short dialogue, so it counts as one without a listener turn
    assert seeds.dropped == {"missing_field": 1, "no_listener_turn": 1}


# ---------------------------------------------------------------------------
# ED turn-level CSV


def test_ed_turns_csv_small(tmp_path: Path) -> None:
    path = tmp_path / "turns.csv"
    path.write_text(
        ",dialogue_id,turns,text,emotion,dialogue_emotion\n"
        '0,7,1,"my cat knocked over a plant , again .",annoyed,annoyed\n'
        '1,7,2,"oh no ! is the plant ok ?",questioning,annoyed\n'
        '2,8,1,"my cat knocked over a plant , again .",annoyed,annoyed\n'
        '3,8,2,"oh no ! is the plant ok ?",questioning,annoyed\n'
        '4,8,3,"it is , but i do n\'t think i can take much more .",sad,annoyed\n'
        '5,8,4,"cats can be a handful . maybe a higher shelf ?",neutral,annoyed\n'
        "6,9,1,too,many,fields,here,now\n"
    )
    table = read_seeds(str(path))
    check_table(table)
    assert table.layout == "ed_turns_csv"
    assert list(table.frame["seed_id"]) == ["ed:7:2", "ed:8:4"]
    assert table.frame["context"][0] == "Speaker: my cat knocked over a plant, again."
    assert "i don't think i can take much more." in table.frame["context"][1]
    assert set(table.frame["emotion"]) == {"annoyed"}
    assert table.dropped == {"duplicate_pair": 1, "malformed_line": 1}


@pytest.mark.skipif(not SHARED_VALID.exists(), reason="../shared/data/ed/valid.csv is absent")
def test_real_ed_valid_csv() -> None:
    table = read_seeds(str(SHARED_VALID))
    check_table(table)
    assert table.layout == "ed_turns_csv"
    # 17,922 utterances in 5,734 ids, most conversations there twice: several thousand
    # distinct pairs, and thousands of exact repeats dropped.
    assert 4_000 < len(table) < 9_000
    assert table.dropped.get("duplicate_pair", 0) > 1_000
    assert table.frame["emotion"].nunique() == 32
    assert set(table.frame["source"]) == {"valid.csv"}
    assert table.frame["seed_id"].str.fullmatch(r"ed:\d+:\d+").all()
    assert not table.frame["response"].str.contains("_comma_").any()
    limited = read_seeds(str(SHARED_VALID), limit=100)
    pd.testing.assert_frame_equal(limited.frame, table.frame.head(100))


# ---------------------------------------------------------------------------
# Plain {context, response}: JSON list, JSONL, Parquet


def test_pairs_json_list(tmp_path: Path) -> None:
    records = [
        {"context": "I finally finished my first quilt!", "response": "That's wonderful!", "emotion": "proud"},
        {
            "context": "Speaker: My dog is sick.\nListener: Oh no.\nSpeaker: The vet says he'll\n   be fine  though.",
            "response": "Listener: What a relief!",
            "seed_id": "custom-1",
        },
        {"context": "Speaker: hi\nListener: hello", "response": "ends with the listener"},
        {"context": "no response"},
        {"context": ["a", "list"], "response": "x"},
        {"context": "fine", "response": "fine", "seed_id": {"bad": 1}},
        {"context": "numbered", "response": "id", "seed_id": 42, "emotion": 3},
        "not an object",
    ]
    path = tmp_path / "mine.json"
    path.write_text(json.dumps(records))
    table = read_seeds(str(path))
    check_table(table)
    assert table.layout == "pairs"
    assert list(table.frame["seed_id"]) == ["mine:0", "custom-1", "42"]
    assert table.frame["context"][0] == "Speaker: I finally finished my first quilt!"
    assert table.frame["context"][1] == (
        "Speaker: My dog is sick.\nListener: Oh no.\nSpeaker: The vet says he'll be fine though."
    )
    assert table.frame["response"][1] == "What a relief!"
    assert list(table.frame["emotion"]) == ["proud", "", ""]
    assert table.dropped == {
        "context_not_speaker": 1,
        "missing_field": 1,
        "non_string": 1,
        "bad_seed_id": 1,
        "not_an_object": 1,
    }


def test_pairs_jsonl_with_bad_line(tmp_path: Path) -> None:
    path = tmp_path / "pairs.jsonl"
    path.write_text(
        '{"context": "My plant is growing new leaves.", "response": "How lovely!"}\n'
        "{this is not json\n"
        "\n"
        '{"context": "My plant is growing new leaves.", "response": "How lovely!"}\n'
        '{"context": "The bus left without me.", "response": "Ugh, sorry.", "emotion": "annoyed"}\n'
    )
    table = read_seeds(str(path))
    check_table(table)
    assert list(table.frame["seed_id"]) == ["pairs:1", "pairs:5"]
    assert table.dropped == {"bad_json": 1, "duplicate_pair": 1}
    assert "bad_json=1" in table.summary() and "2 seeds" in table.summary()


def test_pairs_parquet_round_trip(tmp_path: Path) -> None:
    """A seed table written as Parquet reads back unchanged (layout pairs)."""
    original = read_seeds(default_seed_path())
    path = tmp_path / "seeds.parquet"
    pq.write_table(original.to_arrow(), path)
    again = read_seeds(str(path))
    assert again.layout == "pairs"
    pd.testing.assert_frame_equal(again.frame.drop(columns="source"), original.frame.drop(columns="source"))
    assert set(again.frame["source"]) == {"seeds.parquet"}


# ---------------------------------------------------------------------------
# Paths, URLs, options


def test_fsspec_urls_and_compression(tmp_path: Path) -> None:
    data = Path(default_seed_path()).read_bytes()
    name = f"memory://seeds-{uuid.uuid4().hex}/seeds.jsonl"
    with fsspec.open(name, "wb") as f:
        f.write(data)
    assert len(read_seeds(name)) == len(read_seeds(default_seed_path()))
    local = tmp_path / "seeds.jsonl"
    local.write_bytes(data)
    assert len(read_seeds(f"file://{local}", limit=3)) == 3
    packed = tmp_path / "seeds.jsonl.gz"
    packed.write_bytes(gzip.compress(data))
    table = read_seeds(str(packed))
    assert table.frame["seed_id"][0] == "se-001:2"
    with pytest.raises(SeedError, match="seed file not found: memory://nowhere/x.jsonl"):
        read_seeds("memory://nowhere/x.jsonl")
    with pytest.raises(SeedError, match="cannot open seed file nosuchproto://a/b"):
        validate_seed_source("nosuchproto://a/b")


def test_limit_is_deterministic() -> None:
    full = read_seeds(default_seed_path())
    first = read_seeds(default_seed_path(), limit=10)
    assert list(first.frame["seed_id"]) == list(full.frame["seed_id"][:10])
    with pytest.raises(SeedError, match="limit"):
        read_seeds(default_seed_path(), limit=0)


def test_named_layout_and_aliases(tmp_path: Path) -> None:
    assert read_seeds(default_seed_path(), layout="dialogues").layout == "shipped"
    with pytest.raises(SeedError, match="unknown seed layout 'xml'.*seeds.jsonl"):
        read_seeds(default_seed_path(), layout="xml")
    with pytest.raises(SeedError, match="does not read"):
        read_seeds(default_seed_path(), layout="ed_parquet")
    with pytest.raises(SeedError, match="JSONL, which layout 'ed_csv' does not read"):
        read_seeds(default_seed_path(), layout="ed_csv")
    other = tmp_path / "other.csv"
    other.write_text("conv_id,utterance\nc1,hello\n")
    with pytest.raises(SeedError, match="not layout ed_csv: missing column.*utterance_idx"):
        validate_seed_source(str(other), layout="ed_csv")
    turns = tmp_path / "turns.csv"
    turns.write_text(",dialogue_id,turns,text,emotion,dialogue_emotion\n0,1,1,hi,sad,sad\n")
    with pytest.raises(SeedError, match="not layout ed_csv: missing column.*conv_id"):
        validate_seed_source(str(turns), layout="ed_csv")
    # detection looks past undecided JSON lines to the first one that says which layout
    lines = tmp_path / "late.jsonl"
    lines.write_text('{"oops": 1}\n{"context": "I won!", "response": "Congrats!"}\n')
    table = read_seeds(str(lines))
    assert list(table.frame["seed_id"]) == ["late:2"]
    assert table.dropped == {"missing_field": 1}


def test_detokenize() -> None:
    assert detokenize("i do n't know , really . . . we 're fine ( mostly ) !") == (
        "i don't know, really... we're fine (mostly)!"
    )
    plain = "Ordinary text, with commas... and (brackets)! It's fine."
    assert detokenize(plain) == plain


# ---------------------------------------------------------------------------
# Errors: one line, naming the path


def test_missing_file(tmp_path: Path) -> None:
    path = str(tmp_path / "nope.jsonl")
    for call in (lambda: read_seeds(path), lambda: validate_seed_source(path)):
        with pytest.raises(SeedError) as info:
            call()
        assert str(info.value) == f"seed file not found: {path}"


@pytest.mark.parametrize("content", [b"", b"  \n\n \t", b"\xef\xbb\xbf\n"])
def test_empty_file(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "empty.jsonl"
    path.write_bytes(content)
    with pytest.raises(SeedError, match="empty") as info:
        read_seeds(str(path))
    assert str(path) in str(info.value) and "\n" not in str(info.value)


@pytest.mark.parametrize(
    "content",
    [
        os.urandom(4096),
        b"PAR1 but not really parquet" * 10,
        b"hello,world\n1,2\n",
        b"[1, 2, 3]",
        b'{"a": 1}\n{"b": 2}\n',
        b"[{broken json",
    ],
)
def test_garbage_file(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "garbage.bin"
    path.write_bytes(content)
    with pytest.raises(SeedError) as info:
        read_seeds(str(path))
    message = str(info.value)
    assert str(path) in message and "\n" not in message


def test_no_usable_seeds_says_why(tmp_path: Path) -> None:
    path = tmp_path / "broken.jsonl"
    path.write_text('{"context": "x", "response": "y"\n' * 3 + '{"context": "", "response": "y"}\n')
    with pytest.raises(SeedError) as info:
        read_seeds(str(path), layout="pairs")
    message = str(info.value)
    assert str(path) in message and "bad_json=3" in message and "empty_text=1" in message


def test_folder_is_not_a_seed_file(tmp_path: Path) -> None:
    with pytest.raises(SeedError, match="folder"):
        validate_seed_source(str(tmp_path))


# ---------------------------------------------------------------------------
# Property: arbitrary JSONL lines never raise anything but SeedError

_json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(
            st.sampled_from(["context", "response", "emotion", "seed_id", "turns", "dialogue_id", "x"]),
            inner,
            max_size=5,
        )
    ),
    max_leaves=12,
)
_lines = st.one_of(
    st.text(max_size=80),
    _json_values.map(json.dumps),
    st.fixed_dictionaries(
        {"context": st.text(max_size=40), "response": st.text(max_size=40)},
        optional={"emotion": _json_values, "seed_id": _json_values},
    ).map(json.dumps),
    st.fixed_dictionaries(
        {"turns": st.lists(st.text(max_size=20), max_size=5)},
        optional={"dialogue_id": _json_values, "emotion": _json_values},
    ).map(json.dumps),
    st.just("[" * 5000),  # deep nesting: a RecursionError inside json
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(lines=st.lists(_lines, max_size=12), layout=st.sampled_from(["auto", "pairs", "shipped"]))
def test_jsonl_reader_only_raises_seed_error(lines: list[str], layout: str) -> None:
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "prop.jsonl")
        with open(path, "wb") as f:
            f.write("\n".join(lines).encode("utf-8", "surrogatepass"))
        try:
            table = read_seeds(path, layout=layout)
        except SeedError as exc:
            assert path in str(exc) and "\n" not in str(exc)
        else:
            check_table(table)


def test_seed_batches_give_the_seeds_of_read_seeds_a_part_at_a_time(tmp_path):
    from synth_empathy.stages.seed_sources import SeedBatches

    path = tmp_path / "pairs.jsonl"
    records = [{"context": f"Speaker: c{i % 7}", "response": f"r{i}"} for i in range(23)]
    records += [records[3], {"context": "", "response": "x"}]  # a repeat, an empty context
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    batches = SeedBatches(str(path), batch_rows=5)
    parts = list(batches)
    assert [p.num_rows for p in parts] == [5, 5, 5, 5, 3]
    whole = read_seeds(str(path))
    assert pa.concat_tables(parts).to_pylist() == pa.Table.from_pandas(whole.frame, preserve_index=False).to_pylist()
    assert batches.kept == 23 and batches.dropped == whole.dropped and batches.dropped["duplicate_pair"] == 1
    limited = SeedBatches(str(path), batch_rows=5, limit=7)
    assert [p.num_rows for p in limited] == [5, 2]
