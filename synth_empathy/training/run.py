"""``synth-empathy train``: check everything, read and tokenise the data, then train.

Order (every check before a worker starts or the model's weights load):

1. the output folder: empty or missing (a fresh run), or a training run of this tool
   (``train_run.json``); a folder with other files is refused;
2. the base model's tokenizer and config; for LoRA every ``train.lora.target_modules``
   name must match a module of the model (checked on an empty, weightless copy);
3. the sources (:mod:`synth_empathy.training.inputs`): a source with none of the
   expected columns or an empty result after the readers' drops is an error;
4. ``train.cutoff_len`` must exceed the prompt template alone; pairs longer than it are
   dropped with reason ``too_long`` and counted in the report;
5. the run's fingerprint (settings that change the result, and a hash of the tokenised
   examples) against ``train_run.json``: the same run resumes from its last checkpoint
   (a finished one is read back), a different one is refused.

Then :func:`synth_empathy.training.loop.train_loop` runs here (``train.use_ray=false``)
or in Ray Train's workers (:mod:`synth_empathy.training.ray_train`).

Where things are written, no shared filesystem assumed. Under Ray Train, ``train.output``
(a folder or an ``s3://``/fsspec URL, through the ``storage.*`` options) is Ray Train's
``storage_path``: its checkpoints go there (``ray_train/``), rank 0 writes the model, report
and plot there, and the driver reads the report from there; a run resumes from anywhere
that reaches the storage. The plain loop (``use_ray=false``) writes a local folder; an
``s3://`` output is trained in a local staging folder under the cache and uploaded at the
end, so resuming such a run works on the same machine only.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import random
import time
from pathlib import Path
from typing import Any

import fsspec
from omegaconf import OmegaConf

from synth_empathy.core.sft_data import encode_rows, template_length
from synth_empathy.errors import TrainingInputError
from synth_empathy.training import loop
from synth_empathy.training.inputs import read_sources

log = logging.getLogger(__name__)

RUN_FILE = "train_run.json"
# Settings that do not change what is trained: they may differ when a run resumes.
_NOT_IN_FINGERPRINT = (
    "output",
    "save_steps",
    "keep_checkpoints",
    "log_steps",
    "use_ray",
    "cpus_per_worker",
    "max_failures",
    "eval_steps",
    "eval_limit",
    "keep_best",
)
_is_remote = loop.is_remote


def target(t: Any) -> str:
    """Where the run lives: ``train.output`` under Ray Train (its storage, local or remote),
    the local folder or staging folder (:func:`local_dir`) of the plain loop."""
    return t.output if t.use_ray and _is_remote(t.output) else local_dir(t.output)


def local_dir(output: str) -> str:
    """Where training writes: ``output`` itself, or a staging folder for a remote URL."""
    if not _is_remote(output):
        return os.path.abspath(os.path.expanduser(fsspec.core.split_protocol(output)[1]))
    from synth_empathy.models.weights import cache_dir

    return str(cache_dir() / "train-staging" / hashlib.sha256(output.encode()).hexdigest()[:16])


def _fs(path: str, storage_options: dict | None = None):
    return fsspec.core.url_to_fs(path, **(storage_options or {}))


def check_output(path: str, storage_options: dict | None = None) -> dict[str, Any] | None:
    """The folder's ``train_run.json`` (None for an empty or missing folder); refuses a
    folder that holds anything else. A local folder or a URL (fsspec)."""
    from synth_empathy.errors import StorageError
    from synth_empathy.storage.run_store import _cause

    fs, root = _fs(path, storage_options)
    root = root.rstrip("/")
    try:
        if fs.isfile(root):
            raise TrainingInputError(f"train.output {path} is a file, not a folder")
        names = sorted(x.rstrip("/").rsplit("/", 1)[-1] for x in fs.ls(root, detail=False)) if fs.isdir(root) else []
        if not names:
            return None
        if RUN_FILE not in names:
            raise TrainingInputError(
                f"train.output {path} already holds files that are not a training run of this tool "
                f"({', '.join(names[:4])}); choose another train.output"
            )
        text = fs.cat_file(f"{root}/{RUN_FILE}")
    except (TrainingInputError, StorageError):
        raise
    except Exception as e:  # no such bucket, no credentials, endpoint down
        raise StorageError(f"train.output {path}: cannot read it ({_cause(e)})") from None
    try:
        return json.loads(text)
    except ValueError:
        raise TrainingInputError(
            f"train.output {path}: {RUN_FILE} is unreadable; choose another train.output"
        ) from None


def check_writable(path: str, storage_options: dict | None = None) -> None:
    """A probe file written and removed in ``path`` (created if missing): an unwritable or
    unreachable output fails here, before the model loads or a worker starts."""
    from synth_empathy.errors import StorageError
    from synth_empathy.storage.run_store import _cause

    fs, root = _fs(path, storage_options)
    probe = f"{root.rstrip('/')}/.write-probe-{os.getpid()}"
    try:
        fs.makedirs(root, exist_ok=True)
        fs.pipe_file(probe, b"")
        fs.rm_file(probe)
    except Exception as e:
        raise StorageError(f"train.output {path} is not writable ({_cause(e)})") from None


def read_text(path: str, name: str, storage_options: dict | None = None) -> str | None:
    fs, root = _fs(path, storage_options)
    f = f"{root.rstrip('/')}/{name}"
    return fs.cat_file(f).decode() if fs.isfile(f) else None


def write_text(path: str, name: str, text: str, storage_options: dict | None = None) -> None:
    """``name`` in the folder ``path``: local ones written aside and renamed, URLs in one put."""
    if not _is_remote(path):
        loop._write_json(Path(local_dir(path)) / name, json.loads(text))
        return
    fs, root = _fs(path, storage_options)
    fs.pipe_file(f"{root.rstrip('/')}/{name}", text.encode())


def check_lora_targets(model_path: str, targets: list[str]) -> None:
    """Every LoRA target must name a module of the model (by its last name part, as peft
    matches plain names); checked on a weightless copy."""
    from accelerate import init_empty_weights
    from transformers import AutoConfig, AutoModelForCausalLM

    if not targets:
        raise TrainingInputError("train.lora.target_modules is empty")
    config = AutoConfig.from_pretrained(model_path)
    with init_empty_weights():
        model = AutoModelForCausalLM.from_config(config)
    names = {n.rsplit(".", 1)[-1] for n, _ in model.named_modules() if n}
    leaf = {n.rsplit(".", 1)[-1] for n, m in model.named_modules() if n and not list(m.children())}
    missing = [t for t in targets if t not in names]
    if missing:
        near = sorted(n for n in leaf if "proj" in n or "fc" in n or "linear" in n)[:10]
        raise TrainingInputError(
            f"train.lora.target_modules: {', '.join(missing)} not in model {model_path}; "
            f"its linear layers include: {', '.join(near)}"
        )


def validate(t: Any) -> None:
    """The ``train`` section's checks; the config already ran them at load (one place:
    :func:`synth_empathy.config.check_ranges` and :func:`~synth_empathy.config.validate_train`),
    again here for a section built by hand."""
    from omegaconf import OmegaConf

    from synth_empathy.config import check_ranges, validate_train

    check_ranges(OmegaConf.create({"train": t}), prefix="train.")
    validate_train(t)


def settings_of(cfg: Any, model_path: str) -> dict[str, Any]:
    """The plain settings dict the loop takes (the ``train`` section + seed + model path)."""
    s = OmegaConf.to_container(cfg.train, resolve=True)
    s.update(model_path=model_path, seed=int(cfg.seed))
    return s


def fingerprint(settings: dict[str, Any], cfg: Any, examples: list[dict[str, list[int]]]) -> dict[str, Any]:
    h = hashlib.sha256()
    for e in examples:
        h.update(json.dumps([e["input_ids"], e["labels"]]).encode())
    kept = {k: v for k, v in settings.items() if k not in _NOT_IN_FINGERPRINT and k != "model_path"}
    kept["discriminator"] = {
        "system_prompt": cfg.discriminator.system_prompt,
        "input_format": cfg.discriminator.input_format,
    }
    return {"settings": kept, "examples": len(examples), "examples_sha256": h.hexdigest()}


def _differences(a: dict[str, Any], b: dict[str, Any], prefix: str = "") -> list[str]:
    out = []
    for k in sorted(set(a) | set(b)):
        if isinstance(a.get(k), dict) and isinstance(b.get(k), dict):
            out += _differences(a[k], b[k], f"{prefix}{k}.")
        elif a.get(k) != b.get(k):
            out.append(prefix + k)
    return out


def prepare(cfg: Any) -> dict[str, Any]:
    """Every check and the tokenised data; nothing trains yet. Returns what :func:`run_training` needs."""
    from transformers import AutoTokenizer

    from synth_empathy.models.weights import check_model, resolve_model
    from synth_empathy.storage.run_store import storage_options

    t = cfg.train
    validate(t)
    check_device(cfg)
    out = target(t)
    out_opts = storage_options(out, cfg.storage)
    previous = check_output(out, out_opts)
    check_writable(out, out_opts)
    if out != t.output:  # the plain loop's staging folder: the model is uploaded to train.output at the end
        check_writable(t.output, storage_options(t.output, cfg.storage))
    check_model(t.model)
    model_path = resolve_model(t.model)
    try:
        tokenizer = AutoTokenizer.from_pretrained(model_path)
    except Exception as e:  # OSError, ValueError: no such model, no tokenizer files
        raise TrainingInputError(f"train.model {t.model}: cannot load its tokenizer ({type(e).__name__})") from None
    if not getattr(tokenizer, "chat_template", None):
        raise TrainingInputError(f"train.model {t.model}: its tokenizer has no chat template")
    if t.method == "lora":
        check_lora_targets(model_path, list(t.lora.target_modules))

    d = cfg.discriminator
    heldout: list[dict[str, Any]] = []
    rows, sources, dropped = read_sources(
        list(t.data),
        layout=t.data_layout,
        heldout_fraction=t.heldout_fraction,
        heldout_salt=t.heldout_salt,
        storage_options_for=lambda p: storage_options(p, cfg.storage),
        heldout=heldout,
    )
    if not rows:
        raise TrainingInputError(
            f"no training pair left in train.data after the readers' drops and the held-out split "
            f"(dropped: {dict(dropped) or 'none'}; held out: {sum(s['heldout'] for s in sources)})"
        )
    try:
        overhead = template_length(tokenizer, d.system_prompt, d.input_format)
    except ValueError as e:
        raise TrainingInputError(f"train.model {t.model}: {e}") from None
    if t.cutoff_len <= overhead:
        raise TrainingInputError(
            f"train.cutoff_len={t.cutoff_len} is not longer than the prompt template alone ({overhead} tokens: "
            f"system prompt and chat markup around an empty turn)"
        )
    available = len(rows)
    # The limit samples the seed sources (ED) only and every export row is kept: "ED plus
    # the selection" then trains on the same ED pairs as "ED alone", plus the selection.
    seed_rows, export_rows, at = [], [], 0
    for s in sources:
        (export_rows if s["kind"] == "export" else seed_rows).extend(rows[at : at + s["rows"]])
        at += s["rows"]
    if t.limit is not None and len(seed_rows) > t.limit:
        seed_rows = random.Random(f"{cfg.seed}/limit").sample(seed_rows, t.limit)
    rows = seed_rows + export_rows
    examples, too_long, long_lengths = encode_rows(tokenizer, rows, d.system_prompt, d.input_format, t.cutoff_len)
    if not examples:
        raise TrainingInputError(
            f"every one of {len(rows)} training pairs is longer than train.cutoff_len={t.cutoff_len} tokens "
            f"(shortest {min(long_lengths)}); raise train.cutoff_len"
        )
    eval_examples: list[dict[str, list[int]]] = []
    if t.eval_steps and heldout:
        if t.eval_limit is not None and len(heldout) > t.eval_limit:
            heldout = random.Random(f"{cfg.seed}/eval").sample(heldout, t.eval_limit)
        eval_examples, _, _ = encode_rows(tokenizer, heldout, d.system_prompt, d.input_format, t.cutoff_len)
    if t.keep_best and not eval_examples:
        raise TrainingInputError(
            "train.keep_best needs held-out pairs for a validation loss; train.heldout_fraction holds none out "
            "of train.data (or none fits cutoff_len)"
        )
    settings = settings_of(cfg, model_path)
    fp = fingerprint(settings, cfg, examples)
    if previous is not None and previous.get("fingerprint") != fp:
        changed = _differences(previous.get("fingerprint", {}), fp)
        raise TrainingInputError(
            f"train.output {t.output} holds a different training run (differs in: {', '.join(changed[:6])}); "
            f"choose another train.output, or remove that folder to start over"
        )
    data_report = {
        "sources": sources,
        "pairs_available": available,
        "pairs_sampled": len(rows),
        "rows_too_long": too_long.get("too_long", 0),
        "too_long_max_tokens": max(long_lengths) if long_lengths else None,
        "dropped": dict(dropped + too_long),
        "cutoff_len": t.cutoff_len,
        "template_tokens": overhead,
        "input_format": d.input_format,
        "system_prompt": d.system_prompt,
        "base_model": t.model,
        "output": t.output,
    }
    return {
        "settings": settings,
        "examples": examples,
        "eval_examples": eval_examples,
        "out": out,
        "out_options": out_opts,
        "out_dir": local_dir(t.output),
        "fingerprint": fp,
        "previous": previous,
        "data_report": data_report,
    }


def bf16_refusal(dtype: str, use_gpu: bool, on_cluster: bool, hw: Any) -> str | None:
    """Why ``train.dtype`` cannot run here (None if it can): bfloat16 on a CPU without native
    bf16 (``avx512_bf16`` or ``amx_bf16`` in ``hw.cpu_flags``: emulated, several times slower
    than float32). Not judged for GPU workers (the card decides; torch checks it) nor for a
    remote cluster's CPUs, which are not this machine's."""
    if dtype != "bfloat16" or use_gpu or on_cluster or hw.cpu_bf16_flag:
        return None
    return (
        f"train.dtype=bfloat16 on a CPU without native bf16 ({hw.cpu_model or 'unknown model'}: no avx512_bf16 "
        f"or amx_bf16): emulated, several times slower than float32; use train.dtype=auto or float32, or "
        f"train.use_gpu=true"
    )


def check_device(cfg: Any) -> None:
    """A dtype the device cannot use, in one line before a worker starts (:func:`bf16_refusal`,
    on this machine's CPU flags): for the plain loop and a local Ray."""
    from synth_empathy.config import ConfigError
    from synth_empathy.core import hardware

    t = cfg.train
    on_cluster = bool(t.use_ray and (cfg.ray.address or os.environ.get("RAY_ADDRESS")))
    refusal = bf16_refusal(t.dtype, t.use_gpu, on_cluster, hardware.detect())
    if refusal:
        raise ConfigError(refusal)


def run_training(cfg: Any) -> dict[str, Any]:
    """Check, prepare and train; returns the report (also in ``<output>/train_report.json``)."""
    t0 = time.perf_counter()
    p = prepare(cfg)
    t = cfg.train
    out, opts = p["out"], p["out_options"]
    if p["previous"] is not None:
        text = read_text(out, loop.REPORT, opts)
        if text is not None:
            log.info("[train] %s is finished; reading its report back", t.output)
            if not t.use_ray:
                _upload(cfg, p["out_dir"])
            return json.loads(text)
    write_text(out, RUN_FILE, json.dumps({"fingerprint": p["fingerprint"], "output": t.output}, indent=2), opts)
    log.info(
        "[train] %d pairs (%d too long for cutoff_len=%d; %d held out for validation), %s fine-tuning of %s into %s",
        len(p["examples"]),
        p["data_report"]["rows_too_long"],
        t.cutoff_len,
        len(p["eval_examples"]),
        t.method,
        t.model,
        out,
    )
    if t.use_ray:
        from synth_empathy.cluster.ray_init import init_ray
        from synth_empathy.training import ray_train

        init_ray(cfg, sections=("train",), worker_output=True)  # the step lines are the workers'
        ray_train.fit(
            p["settings"],
            p["examples"],
            out,
            num_workers=t.num_workers,
            use_gpu=t.use_gpu,
            cpus_per_worker=t.cpus_per_worker,
            max_failures=t.max_failures,
            eval_examples=p["eval_examples"],
            storage_options=opts,
            extra_report=p["data_report"],
            verbose=bool(cfg.ray.verbose_progress),
        )
    else:
        loop.train_loop(p["settings"], p["examples"], p["out_dir"], p["data_report"], eval_examples=p["eval_examples"])
    report = json.loads(read_text(out, loop.REPORT, opts))
    report["command_seconds"] = round(time.perf_counter() - t0, 2)
    report["use_ray"] = bool(t.use_ray)
    report["model"] = f"{t.output.rstrip('/')}/{loop.MODEL}" if _is_remote(t.output) else report["model"]
    write_text(out, loop.REPORT, json.dumps(report, indent=2), opts)
    if not t.use_ray:
        _upload(cfg, p["out_dir"])
    return report


def _upload(cfg: Any, out_dir: str) -> None:
    """Copy the model, report and plot of a staged run (the plain loop) to its remote ``train.output``."""
    url = cfg.train.output
    if not _is_remote(url):
        return
    from synth_empathy.storage.run_store import storage_options

    loop.publish(out_dir, url, storage_options(url, cfg.storage), names=(loop.PLOT, RUN_FILE, loop.REPORT))


def counts_line(report: dict[str, Any]) -> str:
    return (
        f"trained {report['steps']} steps on {report['examples']} pairs ({report['rows_too_long']} too long, "
        f"dropped) in {report['seconds']} s, {report['tokens_per_s']} tokens/s, loss {report['loss_first']} -> "
        f"{report['loss_last']} -> {report['model']}"
    )
