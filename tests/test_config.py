import pytest
from omegaconf import OmegaConf

from synth_empathy.config import ConfigError, all_keys, load_config, preset_names, reference_docs


def test_presets_ship_and_load():
    assert {"default", "paper", "single-gpu"} <= set(preset_names())
    for name in preset_names():
        cfg = load_config(name)
        # the paper's T for the paper's embedder; elsewhere T is calibrated on human replies
        assert cfg.quality.threshold == (60 if name == "paper" else "auto")
        assert cfg.calibration.enabled


def test_paper_preset_has_the_papers_parameters():
    cfg = load_config("paper")
    g = cfg.generation
    assert g.samples_per_seed == 5
    assert (g.sampling.temperature, g.sampling.top_p, g.sampling.max_tokens) == (0.8, 0.9, 300)
    assert "70B" in g.engine.model and g.engine.tensor_parallel_size > 1
    assert cfg.discriminator.sampling.max_tokens == 128
    assert cfg.discriminator.system_prompt == "you are a helpful assistant"
    assert "gte-Qwen2-7B" in cfg.quality.embedder
    assert cfg.diversity.keep_ratio == 0.9


def test_default_is_the_embedded_cpu_setup():
    cfg = load_config()
    assert cfg.generation.engine.model == "packaged:smollm2"
    assert cfg.generation.engine.gpus_per_replica == 0
    assert cfg.quality.embedder == "packaged:all-minilm-l6-v2"
    assert cfg.output == "./runs"
    # shorter than the paper's 300 / 128 so that an AVX2-only 2-core machine fits 10 minutes
    assert (cfg.generation.sampling.max_tokens, cfg.discriminator.sampling.max_tokens) == (240, 64)


def test_overrides_apply_and_are_typed():
    cfg = load_config("default", ["quality.threshold=50", "generation.engine.extra.max_num_batched_tokens=4096"])
    assert cfg.quality.threshold == 50.0
    assert cfg.generation.engine.extra == {"max_num_batched_tokens": 4096}


@pytest.mark.parametrize(
    "preset, overrides, expected",
    [
        ("nope", [], "unknown preset 'nope'; known presets: default, paper, single-gpu"),
        ("default", ["quality.treshold=3"], "did you mean quality.threshold"),
        ("default", ["generation.engine.modle=x"], "did you mean generation.engine.model"),
        ("default", ["quality.threshold=abc"], "quality.threshold must be auto or a number in [0, 100], got 'abc'"),
        ("default", ["quality.threshold=101"], "quality.threshold must be auto or a number in [0, 100], got 101"),
        ("default", ["calibration.enabled=false"], "quality.threshold=auto needs calibration.enabled=true"),
        ("default", ["calibration.share=1"], "calibration.share must be in (0, 1), got 1"),
        ("default", ["calibration.share=0"], "calibration.share must be in (0, 1), got 0"),
        ("default", ["calibration.limit=49"], "calibration.limit must be >= 50"),
        (
            "default",
            ["calibration.heldout_only=true", "train.heldout_fraction=0"],
            "calibration.heldout_only needs train.heldout_fraction > 0",
        ),
        ("default", ["calibration.bootstrap=10"], "calibration.bootstrap must be >= 100, got 10"),
        ("default", ["threshold"], "not of the form key=value"),
        ("default", ["diversity.keep_ratio=1.5"], "keep_ratio must be in (0, 1]"),
        ("default", ["diversity.k=10"], "exactly one of diversity.k and diversity.keep_ratio"),
        ("default", ["discriminator.input_format=xml"], "input_format must be chat or instruction"),
        ("default", ["generation.engine.dtype=float64x"], "generation.engine.dtype must be one of auto, bfloat16"),
        ("default", ["judge.engine.memory_utilization=most"], "must be auto or a number in (0, 1]"),
        ("default", ["discriminator.engine.cpu_threads_bind=both"], "cpu_threads_bind must be auto, vllm"),
        ("default", ["generation.engine.resolved.dtype=float32"], "filled at config load"),
        ("default", ["diversity.storage_dtype=int8"], "diversity.storage_dtype must be auto, float32"),
        ("default", ["diversity.device=gpu"], "diversity.device must be auto, cpu, cuda"),
        ("default", ["ray.footer_readers=0"], "ray.footer_readers must be >= 1 or null"),
        ("default", ["evaluate.bootstrap=50"], "evaluate.bootstrap must be >= 100, got 50"),
        ("default", ["seeds.license=CC BY-NC 4.0"], "seeds.license must be a Hugging Face license id"),
        ("default", ["judge.engine.kv_block_size=big"], "judge.engine.kv_block_size must be auto or a positive"),
        (
            "default",
            ["generation.engine.kv_block_size=0"],
            "generation.engine.kv_block_size must be auto or a positive",
        ),
    ],
)
def test_config_errors_are_one_line_and_name_the_problem(preset, overrides, expected):
    with pytest.raises(ConfigError) as e:
        load_config(preset, overrides)
    assert expected in str(e.value)
    assert "\n" not in str(e.value)


def test_k_instead_of_ratio():
    cfg = load_config("default", ["diversity.k=10", "diversity.keep_ratio=null"])
    assert cfg.diversity.k == 10 and cfg.diversity.keep_ratio is None


def test_every_option_is_documented():
    keys = list(all_keys())
    assert len(keys) > 40
    undocumented = [k for k, _, doc in keys if not doc]
    assert undocumented == []
    table = reference_docs()
    for key, _, _ in keys:
        assert table.count(f"| `{key}` |") == 1
    # The docs list exactly what the schema accepts.
    flat = OmegaConf.to_container(load_config(), resolve=True)

    def leaves(d, p=""):
        for k, v in d.items():
            if isinstance(v, dict) and v and k not in ("extra", "resolved"):
                yield from leaves(v, p + k + ".")
            else:
                yield p + k

    assert sorted(leaves(flat)) == sorted(k for k, _, _ in keys)


def test_the_config_reference_in_docs_is_the_schemas_own():
    # docs/config.md is generated from the schema; this catches drift.
    import pathlib

    docs = (pathlib.Path(__file__).parents[1] / "docs" / "config.md").read_text()
    assert docs == reference_docs(), "docs/config.md is stale: python -m synth_empathy config --docs > docs/config.md"


def test_config_docs_prints_the_reference(capsys):
    from synth_empathy.cli.main import main

    assert main(["config", "--docs"]) in (0, None)
    assert capsys.readouterr().out == reference_docs()


def test_a_small_local_ray_lists_parquet_with_one_footer_reader():
    from synth_empathy.cluster.ray_init import footer_reader_env

    key = "RAY_DATA_PARQUET_FOOTER_NUM_ACTORS"
    assert footer_reader_env(None, 2) == {key: "1"}
    assert footer_reader_env(None, 64) == {key: "8"} and footer_reader_env(None, 1024) == {key: "32"}
    assert footer_reader_env(4, 2) == {key: "4"}  # as configured


@pytest.mark.parametrize(
    "value,hint",
    [("A100-80GB", "A100-80G"), ("a100", "A100"), ("H100-80G", "H100"), ("RTX4090", None)],
)
def test_accelerator_type_ray_never_sets_is_one_line_at_load(value, hint):
    with pytest.raises(ConfigError) as e:
        load_config("single-gpu", [f"generation.engine.accelerator_type={value}"])
    msg = str(e.value)
    assert "\n" not in msg and f"generation.engine.accelerator_type={value!r} is not an accelerator type" in msg
    if hint:
        assert hint in msg


@pytest.mark.parametrize("value", ["A10G", "A100", "H100", "L4", "A100-80G", "A100-40G"])
def test_accelerator_types_as_ray_names_them_load(value):
    for section in ("generation", "discriminator", "judge"):
        cfg = load_config("single-gpu", [f"{section}.engine.accelerator_type={value}"])
        assert cfg[section].engine.accelerator_type == value


def test_every_engine_section_is_checked_for_its_accelerator_type():
    from synth_empathy.config import ENGINES

    cfg = load_config("default")
    sections = [n for n in cfg if OmegaConf.is_dict(cfg[n]) and "engine" in cfg[n]]
    assert set(ENGINES) | {"evaluate"} <= set(sections)
    for name in sections:
        with pytest.raises(ConfigError, match=rf"{name}\.engine\.accelerator_type="):
            load_config("default", [f"{name}.engine.accelerator_type=A100-80GB"])
