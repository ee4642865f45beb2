"""The one configuration schema: every option, its default and its documentation.

The schema is a tree of OmegaConf structured dataclasses. A run's configuration is
built as ``schema defaults <- preset YAML <- key=value overrides``; every layer is
checked against the schema, so a misspelt key fails with the nearest valid names
before anything heavy starts. ``synth-empathy config --docs`` prints this file's
documentation as a table.
"""

from __future__ import annotations

import difflib
import importlib.resources
import os
import re
from dataclasses import dataclass, field, fields, is_dataclass
from typing import Any, Dict, Iterable, Iterator, List, Optional, Tuple, Union

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import ConfigKeyError, OmegaConfBaseException

from synth_empathy.core.calibration import GENERIC_REPLIES, MIN_REFERENCES
from synth_empathy.errors import ConfigError  # noqa: F401 (re-exported)


def opt(default: Any, doc: str) -> Any:
    """A schema field with its documentation attached (read by ``config --docs``)."""
    if isinstance(default, (dict, list)):
        return field(default_factory=lambda: type(default)(default), metadata={"doc": doc})
    return field(default=default, metadata={"doc": doc})


def sub(cls: type, doc: str, **overrides: Any) -> Any:
    """A nested section, optionally with defaults that differ from the class's own."""
    return field(default_factory=lambda: cls(**overrides), metadata={"doc": doc})


@dataclass
class EngineConfig:
    """A vLLM engine run by ``ray.data.llm`` in a pool of actors (one engine each)."""

    model: str = opt(
        "packaged:smollm2",
        "model: a local folder, a hub id, or packaged:<name>; standin or standin:tokens_per_s=N is a "
        "stand-in that answers without a model, a benchmark and test instrument for rehearsing a "
        "preset at scale, never a default (its run folders say so)",
    )
    replicas: int = opt(1, "engine replicas (Ray actors) working in parallel")
    gpus_per_replica: int = opt(0, "GPUs per replica; 0 runs vLLM's CPU backend")
    cpus_per_replica: float = opt(
        1.0,
        "CPUs reserved per replica when it has no GPU; with cpu_threads_bind=auto also the cores it "
        "computes on, unless it is the only replica on this machine (then all of them)",
    )
    tensor_parallel_size: int = opt(1, "tensor parallel degree inside one replica")
    pipeline_parallel_size: int = opt(1, "pipeline parallel degree inside one replica")
    accelerator_type: Optional[str] = opt(
        None,
        "Ray accelerator type each replica asks for, as Ray names it (A10G, L4, A100, H100; "
        "ray.util.accelerators). A100-40G and A100-80G are Ray's names for the card variants, "
        "which Ray never detects: only nodes that declare them as a resource have them (cluster/ does)",
    )
    batch_size: int = opt(16, "rows per batch sent to an engine")
    helper_cpus: float = opt(
        0.25,
        "CPUs per helper around the engine: the chat-template / tokenizer / detokenizer actors and "
        "the maps that build requests and read answers (at most two of those at once per replica)",
    )
    max_model_len: int = opt(2048, "context length the engine reserves per sequence")
    dtype: str = opt(
        "auto",
        "auto | bfloat16 | float16 | float32 (half, float: vLLM's aliases). auto: bfloat16 where "
        "it is native (CPU flag avx512_bf16 or amx_bf16, a GPU that computes bf16), else float32 "
        "on a CPU and float16 on a GPU; the choice and its reason land in resolved",
    )
    memory_utilization: Union[float, int, str] = opt(
        "auto",
        "vLLM gpu_memory_utilization; on the CPU backend the share of the NUMA node's RAM "
        "kept for KV cache. auto: 0.15 in bf16/fp16 (room for ~150 sequences of SmolLM2 at 2k "
        "tokens on a 24 GiB node), 0.3 in float32 (0.15 did not start), 0.9 on a GPU; a number is kept",
    )
    cpu_threads_bind: str = opt(
        "auto",
        "CPU engines: cores for vLLM's compute threads. auto: every core of this machine for a "
        "single local replica, else as many as cpus_per_replica (cores 0..c-1); on a machine "
        "shared with other heavy jobs one core can be faster: set 0 (benchmarks/README.md, "
        "'vLLM on the CPU: dtype x compute-thread binding'); vllm: vLLM's own (all but one core of the node); nobind; or "
        "VLLM_CPU_OMP_THREADS_BIND ids like 0-1 or 0-3|4-7",
    )
    enforce_eager: bool = opt(
        True,
        "skip graph capture and torch.compile: on a small CPU compiling lengthens the start and "
        "decodes no faster (benchmarks/README.md, 'Compiled or eager')",
    )
    fast_top_p: bool = opt(
        True,
        "CPU engines: top-p (nucleus) cut from the highest logits instead of vLLM's sort of the "
        "whole vocabulary per sequence and step; the same tokens kept, faster (benchmarks/README.md, "
        "'Top-p in vLLM's CPU sampler'); needs synth-empathy installed where the engine runs",
    )
    max_num_seqs: Optional[int] = opt(None, "most sequences an engine runs at once (vLLM default)")
    kv_block_size: Union[int, str] = opt(
        "auto",
        "tokens per KV-cache block (vLLM block_size); prompts reuse a cached prefix in whole "
        "blocks. auto: 32 on CPU engines, where vLLM's 128 reused almost none of the default "
        "run's generation prompts (those of one emotion share their first ~88 tokens, the "
        "system prompt and the instructions): a shorter prefill, decoding no slower "
        "(benchmarks/README.md, 'KV-cache block size on the CPU'); vLLM's own on a GPU. A number is "
        "passed as given (the CPU backend needs a multiple of 32)",
    )
    extra: Dict[str, Any] = opt({}, "further vLLM engine keyword arguments, passed as given")
    resolved: Dict[str, Any] = opt(
        {},
        "filled at config load, not set by hand: the dtype, memory share and engine "
        "environment that auto chose on this machine and why (kept in config.yaml and "
        "manifest.json)",
    )


@dataclass
class SamplingConfig:
    """vLLM sampling parameters."""

    temperature: float = opt(0.8, "sampling temperature")
    top_p: float = opt(0.9, "nucleus sampling mass")
    max_tokens: int = opt(300, "most new tokens per answer")


@dataclass
class SeedsConfig:
    path: str = opt("", "seed file or URL; empty = the seed file shipped in the package")
    layout: str = opt("auto", "auto | shipped | pairs | ed_csv | ed_turns_csv | ed_parquet")
    limit: Optional[int] = opt(None, "use only the first N seed pairs")
    license: Optional[str] = opt(
        None,
        "Hugging Face license id of the seed data (cc-by-4.0, other, ...), which the generated "
        "corpus inherits: the run's dataset card names it. null: auto-detected, cc-by-nc-4.0 for "
        "the EmpatheticDialogues layouts, apache-2.0 for the packaged seeds (written for this "
        "project), else unknown",
    )


@dataclass
class GenerationConfig:
    """Method step 1: an LLM writes new multi-round empathetic dialogues from each seed."""

    engine: EngineConfig = sub(EngineConfig, "the generator engine")
    sampling: SamplingConfig = sub(SamplingConfig, "generator sampling (paper: 0.8 / 0.9 / 300)")
    samples_per_seed: int = opt(1, "generations per seed (the paper: 5)")
    min_rounds: int = opt(3, "rounds the prompt asks for at least")


@dataclass
class TurnSamplingConfig:
    """Method step 2: history of k rounds, target = the response of round k+1."""

    min_history: int = opt(1, "fewest history rounds (dialogues with fewer+1 rounds are dropped)")
    max_history: int = opt(3, "most history rounds")


@dataclass
class DiscriminatorConfig:
    """Method step 3a: the discriminator answers each sampled history itself."""

    engine: EngineConfig = sub(EngineConfig, "the discriminator engine (paper: ED-tuned LLM)")
    sampling: SamplingConfig = sub(
        SamplingConfig, "discriminator sampling (paper: 0.8, 128 tokens)", top_p=1.0, max_tokens=128
    )
    system_prompt: str = opt("you are a helpful assistant", "system prompt of the discriminator")
    input_format: str = opt(
        "chat",
        "instruction: the sample's instruction text as one user message (as an ED-tuned "
        "discriminator was trained); chat: the history as user/assistant turns, which an "
        "untuned chat model answers in kind",
    )


@dataclass
class QualityConfig:
    """Method step 3b: quality score = 100 x cosine(target, discriminator answer)."""

    embedder: str = opt(
        "packaged:all-minilm-l6-v2",
        "sentence-transformers model for scores; standin:dim=384,near_duplicates=0.05,groups=16 gives "
        "deterministic vectors with that share of near-duplicates, a rehearsal instrument (see engine.model)",
    )
    threshold: Union[float, int, str] = opt(
        "auto",
        "keep rows whose quality score is >= this: a number in [0, 100] (the paper: 50 or 60, "
        "for gte-Qwen2-7B, whose cosines run far higher than small embedders'), or auto = the "
        "score that calibration.share of human replies reach (the calibration step, run before "
        "scoring; calibration.json)",
    )
    batch_size: int = opt(64, "texts per embedding batch")
    dtype: str = opt(
        "float32",
        "embedder dtype: float32 | auto | bfloat16 | float16; auto = bfloat16 where native, "
        "decided on the embedding actor's machine. float32 by default: bf16 was faster on an "
        "AVX512-BF16 CPU but moved scores by up to 0.72 points (benchmarks/README.md)",
    )
    replicas: int = opt(1, "embedding actors")
    cpus_per_replica: float = opt(2.0, "CPUs per embedding actor; Ray sets the actor's torch threads to this number")
    gpus_per_replica: float = opt(0.0, "GPUs per embedding actor")
    drop_repeats: bool = opt(
        True,
        "drop a row that would be kept when its target or the discriminator's answer repeats "
        "a line of its history (agreement by copying: scores ~100 and says nothing new)",
    )
    repeat_similarity: Optional[float] = opt(
        0.95,
        "a repeat is also a cosine >= this between the target (or answer) and a history line, "
        "in the embedder's space; null = exact repeats only (case, spaces, punctuation ignored)",
    )


@dataclass
class CalibrationConfig:
    """Step 3a', calibration: the quality score measured on human replies.

    The discriminator answers reference dialogues written by people, as it answers the
    samples; the true listener reply's score is compared with foils (another dialogue's
    reply, one of the same emotion, a generic reply): AUC per foil with a bootstrap 95 %
    interval, the percentiles of the human replies' scores, and T for quality.threshold=auto."""

    enabled: bool = opt(True, "calibrate in every run (quality.threshold=auto needs it; cached in calibration.json)")
    data: str = opt(
        "",
        "reference dialogues, any seeds.layout; empty = the run's seed file (all of it: seeds.limit "
        "limits generation, not the reference)",
    )
    layout: str = opt("auto", "layout of `data`, as seeds.layout")
    heldout_only: bool = opt(
        False,
        "use only the dialogues that train holds out (train.heldout_fraction, train.heldout_salt): "
        "to calibrate a trained discriminator on dialogues it never saw",
    )
    limit: Optional[int] = opt(
        200,
        "most reference dialogues (one reply each, a seeded pseudo-random choice); at least 50 are needed "
        "for an interval. The AUC's 95 % interval is about +-0.1 at 50 dialogues, +-0.03 at 400",
    )
    share: float = opt(
        0.5,
        "quality.threshold=auto sets T to the score that this share of human replies reach (in (0, 1)). "
        "0.5, the median human reply: on 600 ED dialogues it separated true replies from the foils as "
        "well as any share (Youden's J) and kept the fewest misfits of the best (benchmarks/README.md, "
        "'Calibrating the quality threshold')",
    )
    bootstrap: int = opt(1000, "bootstrap resamples over the reference dialogues behind every AUC interval")
    generic_replies: List[str] = opt(
        list(GENERIC_REPLIES), "replies that fit any dialogue: the generic foil (one per reference, seeded)"
    )


@dataclass
class DiversityConfig:
    """Method step 4: greedy k-center over instruction+output embeddings."""

    keep_ratio: Optional[float] = opt(0.9, "share of kept rows to select (paper: 0.9)")
    k: Optional[int] = opt(None, "select exactly k rows instead of keep_ratio")
    method: str = opt("auto", "auto | exact | fast | sharded")
    shards: int = opt(1, "shards for the sharded two-round method")
    shard_by: str = opt(
        "random",
        "sharded: how rows are split: random | kmeans (one k-means region of the space per shard, "
        "balanced to <= 1.5x the mean size; FAISS k-means on a GPU)",
    )
    per_shard: str = opt(
        "full",
        "sharded: centers each shard keeps: full (k; the 4x OPT bound) | proportional (twice its "
        "share of k: a smaller merge, no a-priori bound; selection.json gives a certified one)",
    )
    device: str = opt(
        "auto",
        "auto | cpu | cuda | cuda:N | torch-cpu (the GPU's device-resident code on the CPU); auto = cuda when torch sees a GPU",
    )
    storage_dtype: str = opt(
        "auto",
        "on a GPU, the rows' dtype in device memory: auto (float32 when it fits in 45 % of free "
        "GPU memory, else float16) | float32 | float16 | bfloat16; 16-bit moves each row by <= 2**-11 |x| (float16)",
    )
    near_duplicate_cosine: Optional[float] = opt(
        None,
        "before k-center, drop each kept row whose cosine to an earlier kept row (sample_id order) "
        "is >= this, as semantic dedup does (e.g. 0.95; counted in selection.json); null = off",
    )
    near_duplicate_index: str = opt(
        "auto",
        "how near duplicates are found: exact (every row against every earlier kept row, O(N^2): "
        "47 s at 100k rows on 2 quiet cores, so about 75 min at 1M) | ivf | hnsw (approximate: each row "
        "asks a FAISS index of the kept rows for its 8 nearest; IVF at 1M rows: about 5 CPU-minutes). "
        "The same rows are kept whenever the index finds a kept row within the threshold; a miss keeps "
        "a row exact drops and can change later decisions. Measured recall of exact's drops: 100 % "
        "(ivf) and 99.985 % (hnsw) at 100k synthetic rows, cosine 0.95; on ED MiniLM vectors ivf 99.75 "
        "% at 0.8 and 99.0 % at 0.7, where ivf:nprobe=32 or hnsw is safer (benchmarks/README.md, "
        "'Near duplicates at 1M rows'). selection.json gives the method and an exact audit of 1,000 "
        "kept rows. auto: exact below 50,000 rows (2,000,000 where exact runs on a GPU), else ivf. "
        "Parameters: ivf:nlist=N,nprobe=N (cells, default about 2 sqrt(rows); cells searched, 16) | "
        "hnsw:m=N,ef_search=N,ef_construction=N (32, 64, 64). IVF runs on a GPU where "
        "faiss.get_num_gpus() sees one (untested)",
    )


@dataclass
class JudgeConfig:
    """Method step 6: an LLM rates each selected row 1-3 on naturalness, coherence, empathy."""

    enabled: bool = opt(True, "judge the selected rows (adds naturalness, coherence, empathy)")
    engine: EngineConfig = sub(EngineConfig, "the judge engine (paper: a strong LLM)")
    sampling: SamplingConfig = sub(
        SamplingConfig,
        "judge sampling: one token per criterion, whose top-20 log-probabilities give the rating "
        "(the expected value over the tokens 1, 2, 3; max_tokens is always 1)",
        temperature=0.0,
        top_p=1.0,
        max_tokens=1,
    )
    validate: bool = opt(
        True,
        "in a run, first judge human replies against degraded ones (another dialogue's reply, the reply "
        "cut mid-sentence, the speaker's last line repeated) on the calibration.* reference dialogues: "
        "per-criterion AUC with a bootstrap interval, cached in judge_calibration.json. A criterion "
        "whose interval includes 0.5 is reported as not discriminative and its mean not as quality",
    )


@dataclass
class EvaluateConfig:
    """What a corpus is worth: models answer held-out ED-style dialogues, scored against the references.

    The models are asked as the discriminator is (discriminator.system_prompt and
    discriminator.input_format), so a discriminator trained by ``train`` meets the prompt
    layout it was trained on."""

    models: List[str] = opt(
        ["packaged:smollm2"],
        "models to compare side by side (engine model specs; 'label=spec' names a column)",
    )
    data: str = opt("", "held-out dialogues: a seed file or URL (any seeds.layout); empty = the shipped seed file")
    layout: str = opt("auto", "layout of `data`, as seeds.layout")
    heldout_only: bool = opt(
        False,
        "answer only the dialogues that training holds out (train.heldout_fraction, "
        "train.heldout_salt: the same split, by opening turn); false = every dialogue of `data`",
    )
    limit: Optional[int] = opt(
        48,
        "answer at most this many held-out pairs (the first by seed_id). ROUGE-L's 95 % interval is "
        "about +-1.96 sd / sqrt(n); the per-answer sd measured on ED's validation replies was 0.05 "
        "(SmolLM2-135M's answers) to 0.105 (one fixed reply for all): +-0.013 to +-0.03 at 48, "
        "+-0.01 from about 450 (evaluation.md gives the run's own width and n)",
    )
    bootstrap: int = opt(
        1000,
        "bootstrap resamples (over the dialogues, seeded by `seed`) behind every metric's 95 % interval "
        "and every pair of models' paired difference; Distinct-n gets a jackknife instead",
    )
    engine: EngineConfig = sub(
        EngineConfig, "engine settings for every model (its `model` is replaced by each of `models`)"
    )
    sampling: SamplingConfig = sub(
        SamplingConfig,
        "answer sampling: greedy, so models compare without sampling noise",
        temperature=0.0,
        top_p=1.0,
        max_tokens=64,
    )
    judge: bool = opt(
        False, "also rate every answer with the judge (judge.* settings): naturalness, coherence, empathy"
    )


@dataclass
class RayConfig:
    address: str = opt(
        "",
        "Ray address; empty = RAY_ADDRESS, else a new local Ray started here; auto = the "
        "cluster already running on this node",
    )
    num_cpus: Optional[int] = opt(
        None,
        "logical CPUs of a local Ray; default max(4, cores), plus the CPUs of a shared "
        "engine (it stays up between its stages): a CPU engine holds its CPUs in Ray's "
        "books while Ray Data's readers and maps need their own",
    )
    verbose_progress: bool = opt(
        False,
        "also log Ray Data's own per-operator progress (a multi-line dump every 10 s when the "
        "output is not a terminal) and, on a local Ray, Ray's own lines: the workers' output (vLLM, "
        "Serve, Ray Train), Ray Data's and Serve's INFO lines; off: the job's lines (one progress line "
        "per LLM stage: rows, tok/s, ETA) and Ray's warnings, the rest in the Ray session's logs "
        "(/tmp/ray/session_*/logs, synth-empathy-driver.log for the driver's)",
    )
    progress_interval_s: float = opt(20.0, "seconds between the progress lines of an LLM stage")
    footer_readers: Optional[int] = opt(
        None,
        "actors that read Parquet footers when Ray Data lists a stage's parts; null: one per 8 "
        "cores of a local Ray (Ray's own 32 each start a process per read, seconds per stage on "
        "a small machine: benchmarks/parquet_read_bench.py), Ray's default on a cluster",
    )
    engines: str = opt(
        "auto",
        "auto | shared | per-stage: with shared, LLM stages with equal engine sections send their requests to one "
        "engine (a Ray Serve deployment, started once) instead of each starting its own; "
        "auto: only for CPU engines, where an engine start is a large share of a few-minute run",
    )


@dataclass
class StorageConfig:
    """How s3:// locations (output, seeds) are reached; credentials default to the
    standard AWS chain (AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY / AWS_PROFILE / instance
    role). Other fsspec URLs use their own package's defaults."""

    endpoint_url: str = opt("", "S3 endpoint URL (MinIO, Ceph, moto...); empty = AWS")
    region: str = opt("", "S3 region; empty = AWS_REGION / the profile's region")
    profile: str = opt("", "AWS profile from ~/.aws; empty = AWS_PROFILE or the default chain")
    key: Optional[str] = opt(None, "access key id; null = the standard AWS chain (never printed)")
    secret: Optional[str] = opt(None, "secret access key; null = the standard AWS chain (never printed)")
    anon: bool = opt(False, "unsigned requests (public buckets)")
    part_rows: Union[int, str] = opt(
        "auto",
        "rows per Parquet part of the LLM stages: a number, or auto = about parts_per_stage parts "
        "per stage, at least one engine batch, at most part_bytes (synth_empathy.storage.parts). "
        "An interrupted stage keeps every finished part: smaller parts save progress more often, "
        "larger ones make fewer objects for a resume to read",
    )
    parts_per_stage: int = opt(
        1000,
        "part_rows=auto: parts an LLM stage is cut into, so that a crash loses about (parts in "
        "flight) / parts_per_stage of the stage and a 5M-row stage stays at ~1,000 objects",
    )
    part_bytes: int = opt(
        128 * 2**20,
        "part_rows=auto: most estimated bytes per part (2 KiB of input + 4 bytes per token of "
        "the stage's max_tokens per row)",
    )


@dataclass
class LoraConfig:
    """LoRA adapter (peft), used when ``train.method`` is ``lora``; merged into the base at the end."""

    r: int = opt(16, "adapter rank")
    alpha: int = opt(32, "LoRA alpha (the update is scaled by alpha / r)")
    dropout: float = opt(0.05, "dropout on the adapter's input")
    target_modules: List[str] = opt(
        ["q_proj", "k_proj", "v_proj", "o_proj"],
        "module names to adapt (checked against the model before training starts)",
    )


@dataclass
class TrainConfig:
    """Method step 0: supervised fine-tuning of the discriminator (``synth-empathy train``).

    The default is a demonstration that works on a fresh install: the packaged SmolLM2-135M
    on the seed dialogues shipped in the package (76 dialogues, 98 pairs; 81 train after the
    held-out split by dialogue): 11 optimizer steps. A real discriminator trains on
    EmpatheticDialogues' training split (``train.data``, whose doc says where ED is published)."""

    model: str = opt("packaged:smollm2", "base model: a local folder, a hub id, or packaged:<name>")
    data: List[str] = opt(
        [],
        "training sources, mixed in order: seed files (split by dialogue) and/or the pipeline's "
        "selected.alpaca.jsonl / selected.chat.jsonl exports; empty = the seed dialogues shipped in the "
        "package (a small demonstration). A real discriminator trains on EmpatheticDialogues (Rashkin et "
        "al. 2019; cc-by-nc-4.0): train.csv of its release "
        "(dl.fbaipublicfiles.com/parlai/empatheticdialogues/empatheticdialogues.tar.gz, layout ed_csv) or "
        "the Hugging Face copy facebook/empathetic_dialogues as Parquet (ed_parquet); the seed readers "
        "also take ED's turn-level CSV (ed_turns_csv), {context, response} pairs and shipped-style "
        "dialogue JSONL (seeds.layout)",
    )
    data_layout: str = opt("auto", "seed layout of the non-JSONL sources (as seeds.layout)")
    heldout_fraction: float = opt(
        0.1,
        "share of ED dialogues held out for evaluation, never trained on (by a hash of the "
        "dialogue's opening turn: synth_empathy.core.heldout); 0 = use every dialogue",
    )
    heldout_salt: str = opt("synth-empathy/heldout/v1", "salt of the held-out hash; another salt, another split")
    limit: Optional[int] = opt(
        600,
        "train on a seeded random subset of at most this many pairs of the seed sources (ED; every "
        "export row is kept, so ED+selection adds to the same ED pairs); null = all (~10 min on 2 CPU cores)",
    )
    output: str = opt("./runs/discriminator", "output folder (or s3:// URL): model/, checkpoints/, report, loss plot")
    method: str = opt("full", "full (every weight) | lora (adapter, merged into the base at the end)")
    lora: LoraConfig = sub(LoraConfig, "the adapter, for method=lora")
    cutoff_len: int = opt(192, "most tokens of prompt + answer; longer pairs are dropped and counted, not truncated")
    epochs: float = opt(1.0, "passes over the training pairs (ignored when max_steps is set)")
    max_steps: Optional[int] = opt(None, "stop after this many optimizer steps instead")
    learning_rate: float = opt(5e-5, "peak learning rate (AdamW)")
    lr_scheduler: str = opt("cosine", "cosine | linear | constant, after warmup")
    warmup_ratio: float = opt(0.1, "share of the steps spent warming the learning rate up")
    weight_decay: float = opt(0.0, "AdamW weight decay")
    max_grad_norm: float = opt(1.0, "gradient clipping norm; 0 = none")
    batch_size: int = opt(8, "pairs per micro-batch per worker")
    gradient_accumulation: int = opt(1, "micro-batches per optimizer step")
    gradient_checkpointing: bool = opt(False, "recompute activations in the backward pass (less memory, ~30% slower)")
    dtype: str = opt(
        "auto",
        "compute dtype: auto (bfloat16 on a GPU or a CPU with native bf16, else float32) | float32 | bfloat16 | float16",
    )
    save_dtype: str = opt("bfloat16", "dtype of the saved model's weights")
    save_steps: int = opt(
        25, "write a checkpoint every this many optimizer steps (a killed run resumes from it); 0 = never"
    )
    keep_checkpoints: int = opt(1, "most recent checkpoints kept")
    log_steps: int = opt(5, "log the loss every this many steps")
    eval_steps: int = opt(
        25,
        "loss on the held-out split (train.heldout_fraction) every this many steps and at the end, in the "
        "report (eval_curve) and the loss plot; 0 = never",
    )
    eval_limit: Optional[int] = opt(200, "most held-out pairs the validation loss uses (a seeded sample); null = all")
    keep_best: bool = opt(
        False,
        "also keep the checkpoint of the lowest validation loss (needs eval_steps > 0 and save_steps a "
        "multiple of it) and write model/ from it, not from the last step, where the last step's validation "
        "loss is higher; the report names the step (model_step, model_eval_loss)",
    )
    use_ray: bool = opt(
        True,
        "run under Ray Train's TorchTrainer (checkpoints through Ray Train in <output>/ray_train, local or "
        "object storage; a failed worker restarts the group); false = the plain loop in this process",
    )
    num_workers: int = opt(1, "Ray Train data-parallel workers")
    strategy: str = opt(
        "ddp",
        "how the workers share the model: ddp (every worker holds the whole model, float32 weights and AdamW "
        "state: 16 bytes a parameter, ~128 GB for 8B) | fsdp (torch FSDP2: weights, gradients and optimizer "
        "state sharded over the workers, 16/num_workers bytes a parameter plus one layer's full weights at a "
        "time; bf16 compute by its mixed-precision policy where dtype is bfloat16). fsdp needs use_ray and "
        "num_workers >= 2 and method=full",
    )
    max_failures: int = opt(
        2,
        "Ray Train: times a failed worker group is restarted from its last checkpoint before the run "
        "fails; 0 = never, -1 = without limit",
    )
    use_gpu: bool = opt(False, "one GPU per worker")
    cpus_per_worker: float = opt(2.0, "CPUs per worker (also its torch threads when it has no GPU)")


@dataclass
class PipelineConfig:
    """The whole Synth-Empathy job."""

    run_id: str = opt("", "name of the run folder; empty = a new timestamped id")
    output: str = opt("./runs", "folder or URL under which <run_id>/ is written")
    seed: int = opt(0, "seed for turn sampling, selection start, subsets and evaluate's bootstrap")
    seeds: SeedsConfig = sub(SeedsConfig, "where the seed dialogues come from")
    generation: GenerationConfig = sub(
        GenerationConfig, "step 1, generation: new multi-round dialogues written from each seed"
    )
    turns: TurnSamplingConfig = sub(
        TurnSamplingConfig, "step 2, turn sampling: a history of k rounds and its aligned target"
    )
    discriminator: DiscriminatorConfig = sub(
        DiscriminatorConfig, "step 3a, the discriminator answers every sampled history"
    )
    calibration: CalibrationConfig = sub(
        CalibrationConfig, "step 3a', calibration: the discriminator's score on human replies, and T for auto"
    )
    quality: QualityConfig = sub(
        QualityConfig, "step 3b, quality score: agreement of target and answer, kept at >= threshold"
    )
    diversity: DiversityConfig = sub(DiversityConfig, "step 4, diversity: greedy k-center over the kept rows")
    judge: JudgeConfig = sub(JudgeConfig, "step 6, the judge rates each selected row (optional)")
    evaluate: EvaluateConfig = sub(EvaluateConfig, "synth-empathy evaluate: models answer held-out dialogues")
    ray: RayConfig = sub(RayConfig, "where the job runs")
    storage: StorageConfig = sub(StorageConfig, "object storage access, and checkpoint granularity")
    train: TrainConfig = sub(TrainConfig, "step 0: fine-tuning the discriminator (synth-empathy train)")


# --------------------------------------------------------------------------- loading


def preset_names() -> List[str]:
    folder = importlib.resources.files("synth_empathy") / "presets"
    return sorted(p.name[: -len(".yaml")] for p in folder.iterdir() if p.name.endswith(".yaml"))


def all_keys(cls: Any = PipelineConfig, prefix: str = "") -> Iterator[Tuple[str, Any, str]]:
    """(dotted key, default, doc) for every leaf option of the schema.

    Walks an instance, not the classes: a section made with :func:`sub` overrides its
    class's defaults (the judge samples greedily), and the docs must show those.
    """
    obj = cls() if isinstance(cls, type) else cls
    for f in fields(obj):
        key = prefix + f.name
        default = getattr(obj, f.name)
        if is_dataclass(default):
            yield from all_keys(default, key + ".")
        else:
            yield key, default, f.metadata.get("doc", "")


def _unknown_key_error(key: str, where: str) -> ConfigError:
    keys = [k for k, _, _ in all_keys()]
    sections = sorted({k.rsplit(".", 1)[0] for k in keys if "." in k})
    near = difflib.get_close_matches(key, keys + sections, n=3, cutoff=0.5)
    hint = f"; did you mean {', '.join(near)}?" if near else ""
    return ConfigError(f"unknown config key {key!r} in {where}{hint}")


def _merge(base: DictConfig, layer: Any, where: str) -> DictConfig:
    try:
        return OmegaConf.merge(base, layer)  # type: ignore[return-value]
    except ConfigKeyError as e:
        raise _unknown_key_error(str(e.full_key or e.key), where) from None
    except OmegaConfBaseException as e:
        msg = str(e).splitlines()[0]
        raise ConfigError(f"bad value for {e.full_key!r} in {where}: {msg}") from None


def load_config(preset: str = "default", overrides: List[str] | None = None) -> DictConfig:
    """Schema defaults, then the named preset, then ``key=value`` overrides."""
    if preset not in preset_names():
        raise ConfigError(f"unknown preset {preset!r}; known presets: {', '.join(preset_names())}")
    cfg = OmegaConf.structured(PipelineConfig)
    text = (importlib.resources.files("synth_empathy") / "presets" / f"{preset}.yaml").read_text()
    cfg = _merge(cfg, OmegaConf.create(text), f"preset {preset!r}")
    for item in overrides or []:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not of the form key=value")
        key = item.split("=", 1)[0].strip()
        if key.split(".")[-2:-1] == ["resolved"] or key.endswith(".resolved"):
            raise ConfigError(f"{key} is filled at config load from this machine; set the option it reports instead")
        if key not in {k for k, _, _ in all_keys()} and not any(
            key.startswith(k + ".") for k, d, _ in all_keys() if isinstance(d, dict)
        ):
            raise _unknown_key_error(key, "the command line")
        try:
            layer = OmegaConf.from_dotlist([item])
        except OmegaConfBaseException as e:
            raise ConfigError(f"cannot parse override {item!r}: {str(e).splitlines()[0]}") from None
        cfg = _merge(cfg, layer, "the command line")
    validate(cfg)
    resolve_hardware(cfg)
    return cfg


ENGINES = ("generation", "discriminator", "judge")


def resolve_hardware(cfg: DictConfig, hw: Any = None) -> None:
    """Fill each engine's ``resolved`` with what ``auto`` chose on this machine and why
    (logged when the stage builds its engine), and log one warning per distinct
    known-slow choice (emulated bf16) at once.

    Resolved here, at load, so that config.yaml and manifest.json (both written from the
    loaded config) record it. ``hw`` (a :class:`~synth_empathy.core.hardware.Hardware`)
    replaces this machine's facts in tests. Engines on GPUs this process cannot see keep
    ``dtype: auto`` for vLLM to decide on their node.
    """
    from synth_empathy.core import hardware

    local = not (cfg.ray.address or os.environ.get("RAY_ADDRESS"))
    max_cores = hardware.local_cores() if local else None
    slow: Dict[str, List[str]] = {}
    for name in ENGINES:
        e = cfg[name].engine
        r = hardware.resolve_engine(e, f"{name}.engine", hw, max_cores)
        warning = r.pop("warning", None)
        if warning:
            slow.setdefault(warning, []).append(f"{name}.engine")
        e.resolved = r
    for warning, where in slow.items():
        hardware.warn_once(f"{warning} ({', '.join(where)} set dtype=bfloat16)")


# What a number may be: (test, wording). Every count, share and size of the schema is
# listed in RANGES below with one of these, so each command that reads the key (run,
# train, evaluate, judge, select, and their flag aliases) refuses the same bad value at
# config load, before anything starts.
_RULES = {
    "count": (lambda v: v >= 1, ">= 1"),
    "nonneg": (lambda v: v >= 0, ">= 0"),
    "positive": (lambda v: v > 0, "> 0"),
    "share": (lambda v: 0 < v <= 1, "in (0, 1]"),
    "unit": (lambda v: 0 <= v <= 1, "in [0, 1]"),
    "fraction": (lambda v: 0 <= v < 1, "in [0, 1)"),
    "resamples": (lambda v: v >= 100, ">= 100"),  # fewer make a 95 % percentile interval of 2-3 draws
    "retries": (lambda v: v >= -1, ">= -1 (-1 = without limit)"),
}
_ENGINE_RANGES = {
    "replicas": "count",
    "gpus_per_replica": "nonneg",
    "cpus_per_replica": "nonneg",
    "tensor_parallel_size": "count",
    "pipeline_parallel_size": "count",
    "batch_size": "count",
    "helper_cpus": "nonneg",
    "max_model_len": "count",
    "max_num_seqs": "count?",
}
_SAMPLING_RANGES = {"temperature": "nonneg", "top_p": "share", "max_tokens": "count"}
#: dotted key -> rule name of :data:`_RULES`; a trailing ``?`` also allows null.
RANGES: Dict[str, str] = {
    **{
        f"{s}.engine.{k}": r
        for s in ("generation", "discriminator", "judge", "evaluate")
        for k, r in _ENGINE_RANGES.items()
    },
    **{
        f"{s}.sampling.{k}": r
        for s in ("generation", "discriminator", "judge", "evaluate")
        for k, r in _SAMPLING_RANGES.items()
    },
    "seeds.limit": "count?",
    "generation.samples_per_seed": "count",
    "generation.min_rounds": "count",
    "quality.batch_size": "count",
    "quality.replicas": "count",
    "quality.cpus_per_replica": "positive",
    "quality.gpus_per_replica": "nonneg",
    "quality.repeat_similarity": "share?",
    "diversity.keep_ratio": "share?",
    "diversity.k": "count?",
    "diversity.shards": "count",
    "diversity.near_duplicate_cosine": "share?",
    "evaluate.limit": "count?",
    "evaluate.bootstrap": "resamples",
    "ray.num_cpus": "count?",
    "ray.progress_interval_s": "positive",
    "ray.footer_readers": "count?",
    "storage.parts_per_stage": "count",
    "storage.part_bytes": "count",
    "calibration.bootstrap": "resamples",
    "train.heldout_fraction": "fraction",
    "train.limit": "count?",
    "train.cutoff_len": "count",
    "train.max_steps": "count?",
    "train.learning_rate": "positive",
    "train.warmup_ratio": "unit",
    "train.weight_decay": "nonneg",
    "train.max_grad_norm": "nonneg",
    "train.batch_size": "count",
    "train.gradient_accumulation": "count",
    "train.save_steps": "nonneg",
    "train.keep_checkpoints": "count",
    "train.log_steps": "count",
    "train.eval_steps": "nonneg",
    "train.eval_limit": "count?",
    "train.max_failures": "retries",
    "train.num_workers": "count",
    "train.cpus_per_worker": "positive",
    "train.lora.r": "count",
    "train.lora.alpha": "positive",
    "train.lora.dropout": "fraction",
}


def check_ranges(cfg: DictConfig, prefix: str = "") -> None:
    """Every key of :data:`RANGES` (those under ``prefix``) within its range (NaN never is)."""
    for key, rule in RANGES.items():
        if not key.startswith(prefix):
            continue
        value = OmegaConf.select(cfg, key)
        nullable = rule.endswith("?")
        test, wording = _RULES[rule.rstrip("?")]
        if value is None and nullable:
            continue
        if value is None or isinstance(value, bool) or not test(value):
            raise ConfigError(f"{key} must be {wording}{' or null' if nullable else ''}, got {value}")


def validate_train(t: DictConfig) -> None:
    """The ``train`` section's choices (its numbers are in :data:`RANGES`)."""
    if t.method not in ("full", "lora"):
        raise ConfigError(f"train.method must be full or lora, got {t.method!r}")
    if t.dtype not in ("auto", "float32", "bfloat16", "float16"):
        raise ConfigError(f"train.dtype must be auto, float32, bfloat16 or float16, got {t.dtype!r}")
    if t.save_dtype not in ("float32", "bfloat16", "float16"):
        raise ConfigError(f"train.save_dtype must be float32, bfloat16 or float16, got {t.save_dtype!r}")
    if t.lr_scheduler not in ("cosine", "linear", "constant"):
        raise ConfigError(f"train.lr_scheduler must be cosine, linear or constant, got {t.lr_scheduler!r}")
    if t.max_steps is None and not t.epochs > 0:
        raise ConfigError(f"train.epochs must be > 0 (or set train.max_steps), got {t.epochs}")
    if t.strategy not in ("ddp", "fsdp"):
        raise ConfigError(f"train.strategy must be ddp or fsdp, got {t.strategy!r}")
    if t.strategy == "fsdp" and (not t.use_ray or t.num_workers < 2):
        workers = f"num_workers={t.num_workers}" if t.use_ray else "use_ray=false (one process)"
        raise ConfigError(
            f"train.strategy=fsdp shards the model over workers but {workers}: nothing to shard over; "
            f"set train.num_workers >= 2 (with use_ray) or train.strategy=ddp"
        )
    if t.strategy == "fsdp" and t.method != "full":
        raise ConfigError(
            "train.strategy=fsdp is for method=full (LoRA's frozen base is bf16 weights alone and fits one GPU "
            "under ddp); set train.strategy=ddp"
        )
    if t.keep_best and not t.eval_steps:
        raise ConfigError("train.keep_best needs train.eval_steps > 0 (a validation loss to rank by)")
    if t.keep_best and (not t.save_steps or t.save_steps % t.eval_steps):
        raise ConfigError(
            f"train.keep_best needs train.save_steps a multiple of train.eval_steps (every checkpoint with its "
            f"validation loss), got save_steps={t.save_steps}, eval_steps={t.eval_steps}"
        )


def validate_calibration(cfg: DictConfig) -> None:
    """quality.threshold (a number in [0, 100] or auto) and the calibration it may need."""
    t = cfg.quality.threshold
    if isinstance(t, str) and t != "auto" or not isinstance(t, str) and not 0 <= t <= 100:
        raise ConfigError(f"quality.threshold must be auto or a number in [0, 100], got {t!r}")
    c = cfg.calibration
    if t == "auto" and not c.enabled:
        raise ConfigError("quality.threshold=auto needs calibration.enabled=true (or give the threshold as a number)")
    if c.heldout_only and not cfg.train.heldout_fraction:
        raise ConfigError("calibration.heldout_only needs train.heldout_fraction > 0 (nothing is held out at 0)")
    if not 0 < c.share < 1:
        raise ConfigError(f"calibration.share must be in (0, 1), got {c.share}")
    if c.limit is not None and c.limit < MIN_REFERENCES:
        raise ConfigError(
            f"calibration.limit must be >= {MIN_REFERENCES} (fewer reference dialogues give no useful interval) "
            f"or null, got {c.limit}"
        )


# Ray's names for card variants that it never detects on its own (ray.util.accelerators
# says so): a node has them only where its start command declares the resource, e.g.
# ``ray start --resources='{"accelerator_type:A100-80G": 1}'``, as the files in cluster/ do.
DECLARED_ONLY_ACCELERATORS = ("A100-40G", "A100-80G")


def ray_accelerator_types() -> frozenset:
    """Every accelerator type name Ray defines (``ray.util.accelerators``)."""
    from ray.util.accelerators import accelerators  # only when a config names one: Ray is slow to import

    return frozenset(v for k, v in vars(accelerators).items() if k.isupper() and isinstance(v, str))


def check_accelerator_type(value: str, key: str) -> None:
    """A name Ray never gives a node would leave the replica waiting for ever."""
    known = ray_accelerator_types()
    if value in known:
        return
    close = difflib.get_close_matches(value, sorted(known), n=2, cutoff=0.6)
    hint = f" (did you mean {' or '.join(close)}?)" if close else ""
    raise ConfigError(
        f"{key}={value!r} is not an accelerator type Ray knows{hint}; Ray labels nodes by card, e.g. "
        f"A10G, L4, A100 (40 and 80 GB alike), H100; {'/'.join(DECLARED_ONLY_ACCELERATORS)} exist "
        "only where nodes declare them"
    )


def validate_standins(cfg: DictConfig) -> None:
    """A stand-in spec's options, checked at load (:mod:`synth_empathy.core.standin`)."""
    from synth_empathy.core.standin import is_standin, parse_spec

    for name in ENGINES:
        if is_standin(cfg[name].engine.model):
            parse_spec(cfg[name].engine.model, "engine", f"{name}.engine.model")
    if is_standin(cfg.quality.embedder):
        parse_spec(cfg.quality.embedder, "embedder", "quality.embedder")


def validate(cfg: DictConfig) -> None:
    """Checks across fields that the types alone cannot express."""
    d = cfg.diversity
    if (d.k is None) == (d.keep_ratio is None):
        raise ConfigError("set exactly one of diversity.k and diversity.keep_ratio (the other to null)")
    check_ranges(cfg)
    validate_train(cfg.train)
    if d.method not in ("auto", "exact", "fast", "sharded"):
        raise ConfigError(f"diversity.method must be auto, exact, fast or sharded, got {d.method!r}")
    if d.shard_by not in ("random", "kmeans"):
        raise ConfigError(f"diversity.shard_by must be random or kmeans, got {d.shard_by!r}")
    if d.per_shard not in ("full", "proportional"):
        raise ConfigError(f"diversity.per_shard must be full or proportional, got {d.per_shard!r}")
    if d.storage_dtype not in ("auto", "float32", "float16", "bfloat16"):
        raise ConfigError(
            f"diversity.storage_dtype must be auto, float32, float16 or bfloat16, got {d.storage_dtype!r}"
        )
    from synth_empathy.core.near_duplicates import parse_index
    from synth_empathy.errors import SelectionError

    try:
        parse_index(d.near_duplicate_index)
    except SelectionError as e:
        raise ConfigError(str(e)) from None
    if not (d.device in ("auto", "cpu", "cuda", "torch-cpu") or str(d.device).startswith("cuda:")):
        raise ConfigError(f"diversity.device must be auto, cpu, cuda, cuda:N or torch-cpu, got {d.device!r}")
    if cfg.discriminator.input_format not in ("chat", "instruction"):
        raise ConfigError(
            f"discriminator.input_format must be chat or instruction, got {cfg.discriminator.input_format!r}"
        )
    validate_calibration(cfg)
    if cfg.ray.engines not in ("auto", "shared", "per-stage"):  # not on/off: YAML reads those as booleans
        raise ConfigError(f"ray.engines must be auto, shared or per-stage, got {cfg.ray.engines!r}")
    if bool(cfg.storage.key) != bool(cfg.storage.secret):
        raise ConfigError("set both storage.key and storage.secret, or neither (to use the AWS chain)")
    if cfg.storage.anon and (cfg.storage.key or cfg.storage.profile):
        raise ConfigError("storage.anon cannot be combined with storage.key or storage.profile")
    p = cfg.storage.part_rows
    if isinstance(p, str) and p != "auto" or not isinstance(p, str) and (isinstance(p, bool) or p < 1):
        raise ConfigError(f"storage.part_rows must be auto or a positive integer, got {p!r}")
    lic = cfg.seeds.license
    if lic and not re.fullmatch(r"[a-z0-9][a-z0-9.+-]*", lic.strip().lower()):
        raise ConfigError(f"seeds.license must be a Hugging Face license id like cc-by-4.0 or other, got {lic!r}")
    t = cfg.turns
    if not 0 <= t.min_history <= t.max_history:
        raise ConfigError("need 0 <= turns.min_history <= turns.max_history")
    from synth_empathy.core.hardware import canonical_dtype, check_threads_bind

    canonical_dtype(cfg.quality.dtype, "quality.dtype")
    validate_standins(cfg)
    for name in ENGINES:
        e = cfg[name].engine
        canonical_dtype(e.dtype, f"{name}.engine.dtype")
        check_threads_bind(e.cpu_threads_bind, f"{name}.engine.cpu_threads_bind")
        b = e.kv_block_size
        if isinstance(b, str) and b != "auto" or not isinstance(b, str) and b < 1:
            raise ConfigError(f"{name}.engine.kv_block_size must be auto or a positive number, got {b!r}")
        m = e.memory_utilization
        if isinstance(m, str) and m != "auto" or not isinstance(m, str) and not 0 < m <= 1:
            raise ConfigError(f"{name}.engine.memory_utilization must be auto or a number in (0, 1], got {m!r}")
    for name in cfg:
        section = cfg[name]
        if isinstance(section, DictConfig) and "engine" in section and section.engine.accelerator_type:
            check_accelerator_type(section.engine.accelerator_type, f"{name}.engine.accelerator_type")
    for name in ("generation", "discriminator"):
        e = cfg[name].engine
        if e.gpus_per_replica and e.gpus_per_replica < e.tensor_parallel_size * e.pipeline_parallel_size:
            raise ConfigError(
                f"{name}.engine.gpus_per_replica ({e.gpus_per_replica}) is less than "
                f"tensor_parallel_size x pipeline_parallel_size"
            )


_SECRET_NAME = re.compile(r"secret|password|passwd|credential|(^|_)(token|key)$", re.IGNORECASE)
REDACTED = "***"


def redact(obj: Any) -> Any:
    """A plain copy of a config (or any nested dict/list) with every value whose key is
    named like a secret (``storage.key``, ``storage.secret``, ``*token*``, ``*password*``)
    replaced by ``***``. Config files, manifests and printed configs all go through it."""
    if isinstance(obj, DictConfig):
        obj = OmegaConf.to_container(obj, resolve=True)
    if isinstance(obj, dict):
        return {
            k: (REDACTED if _SECRET_NAME.search(str(k)) and v not in (None, "") else redact(v)) for k, v in obj.items()
        }
    if isinstance(obj, (list, tuple)):
        return [redact(v) for v in obj]
    return obj


def redacted_yaml(cfg: DictConfig) -> str:
    return OmegaConf.to_yaml(OmegaConf.create(redact(cfg)))


def _table(rows: Iterable[Tuple[str, Any, str]]) -> List[str]:
    lines = ["| key | default | meaning |", "| --- | --- | --- |"]
    for key, default, doc in rows:
        shown = "`" + (repr(default) if isinstance(default, str) else str(default)) + "`"
        escaped = doc.replace("|", "\\|")  # a bare | would split the table cell
        lines.append(f"| `{key}` | {shown} | {escaped} |")
    return lines


def reference_docs() -> str:
    """The configuration reference (``docs/config.md``, ``synth-empathy config --docs``):
    every option with its default and meaning, one table per section, from the schema."""
    keys = list(all_keys())
    lines = [
        "# Configuration reference",
        "",
        "Generated from the schema (`synth_empathy/config.py`) by `synth-empathy config --docs`;",
        "a test keeps this file equal to that output. Every command takes `--preset NAME` (one of",
        f"{', '.join(f'`{n}`' for n in preset_names())}) and `key=value` overrides of these keys;",
        "`synth-empathy config [--preset NAME] [key=value ...]` prints the resolved configuration.",
        "",
        "## Top level",
        "",
        *_table((k, d, doc) for k, d, doc in keys if "." not in k),
    ]
    for f in fields(PipelineConfig):
        if not is_dataclass(getattr(PipelineConfig(), f.name)):
            continue
        lines += ["", f"## `{f.name}`: {f.metadata.get('doc', '')}", ""]
        lines += _table((k, d, doc) for k, d, doc in keys if k.startswith(f.name + "."))
    return "\n".join(lines) + "\n"
