"""Parts sized for their stage (``storage.part_rows=auto``)."""

import pytest
from omegaconf import OmegaConf

from synth_empathy.config import load_config
from synth_empathy.errors import ConfigError
from synth_empathy.storage.parts import part_rows, row_bytes, rows_per_part

MIB = 2**20


def test_a_large_stage_is_cut_into_about_the_target_number_of_parts():
    rows = rows_per_part(5_000_000, batch_size=64, parts=1000, part_bytes=128 * MIB, bytes_per_row=row_bytes(300))
    assert rows == 5000  # 1,000 objects for 5M rows, not 78,000 at 64 rows each


def test_a_small_stage_keeps_one_engine_batch_per_part():
    assert rows_per_part(100, batch_size=64, parts=1000, part_bytes=128 * MIB, bytes_per_row=3000) == 64
    assert rows_per_part(0, batch_size=16, parts=1000, part_bytes=128 * MIB, bytes_per_row=3000) == 16


def test_the_byte_cap_wins_over_the_count():
    # 50M rows of long answers: 50,000 rows a part would be ~160 MiB; the cap keeps ~64 MiB
    rows = rows_per_part(50_000_000, batch_size=64, parts=1000, part_bytes=64 * MIB, bytes_per_row=row_bytes(800))
    assert rows == 64 * MIB // row_bytes(800)
    # even below one batch when a single row is that large
    assert rows_per_part(10, batch_size=64, parts=1000, part_bytes=1000, bytes_per_row=600) == 1


def test_the_paper_preset_sizes_its_parts_by_the_stage_and_a_number_stays_a_number():
    cfg = load_config("paper")
    sized = part_rows(cfg.storage, cfg.generation)
    assert callable(sized) and sized(5_000_000) == 5000 and sized(1000) == cfg.generation.engine.batch_size
    assert part_rows(load_config("default").storage, cfg.generation) == 16  # the CPU default's own number
    assert part_rows(load_config("paper", ["storage.part_rows=256"]).storage, cfg.generation) == 256


@pytest.mark.parametrize("value", ["'many'", "0", "-3"])
def test_bad_part_rows_is_one_line_naming_the_option(value):
    with pytest.raises(ConfigError, match="storage.part_rows must be auto or a positive integer"):
        load_config("paper", [f"storage.part_rows={value}"])


def test_the_targets_are_checked_too():
    with pytest.raises(ConfigError, match="storage.parts_per_stage"):
        load_config("paper", ["storage.parts_per_stage=0"])
    assert OmegaConf.select(load_config("paper"), "storage.part_bytes") == 128 * MIB
