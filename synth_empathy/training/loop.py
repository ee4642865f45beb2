"""The training loop: supervised fine-tuning with transformers (+ peft for LoRA), no Ray.

:func:`train_loop` takes plain settings (the ``train`` config section as a dict, plus
``model_path``), tokenised examples (``input_ids``, ``labels``; see
:mod:`synth_empathy.core.sft_data`) and an output folder, and writes into that folder:

* a checkpoint every ``save_steps`` optimizer steps (``state.pt``: the trainable weights,
  optimizer, scheduler, loss curves, counters). Alone: ``checkpoints/step-NNNNNNN/``, a
  folder that appears only once complete (written aside and renamed). Under Ray Train:
  ``ray.train.report(metrics, checkpoint=...)``, stored by Ray Train in its
  ``storage_path`` (``<output>/ray_train/step-NNNNNNN``, local or object storage). Older
  ones are removed down to ``keep_checkpoints``;
* ``model/``: the fine-tuned model (a LoRA adapter is merged into the base weights) as
  safetensors with the tokenizer and its chat template, a folder vLLM and transformers
  load; written aside and renamed, so it exists only when whole;
* ``train_report.json`` and ``loss.png`` (see :func:`train_loop`).

Started again on the same folder (or restarted by Ray Train after a worker's death) it
resumes from the last complete checkpoint: same weights, optimizer moments,
learning-rate schedule and data order (each epoch's order is a fixed permutation of
``(seed, epoch)``), so a killed run continues where its last checkpoint was taken, not
from step 0. The report's ``starts`` lists the step every start began at.

Data parallel: when ``torch.distributed`` is initialised (Ray Train's ``TorchTrainer``
does it; so does ``torchrun``) the model is wrapped in ``DistributedDataParallel``,
every rank trains on its own share of each epoch's order, and rank 0 writes the
checkpoints, the model and the report. The loss of a step is the mean over every answer
token of all ranks (each rank divides by the step's total count), so W workers at
micro-batch b take the same step as one worker at W x b. Without a process group the
loop runs in this process alone.

Sharded (``strategy: fsdp``, :func:`shard_model`): FSDP2's ``fully_shard`` on every decoder
layer and the root instead of DDP, so each of W ranks holds 1/W of the float32 weights,
gradients and AdamW state (an 8B full fine-tune: ~128 GB in all, ~16 GB a GPU on 8). Same
plan, same loss scaling (FSDP2 averages gradients over the ranks as DDP does), so the loss
curve is DDP's. Gradient accumulation turns the reduce-scatter off on all but the last
micro-batch (``set_requires_gradient_sync``, FSDP2's ``no_sync``). Checkpoints gather the
whole weights and optimizer state on rank 0's CPU (``get_model_state_dict`` /
``get_optimizer_state_dict``, full state dict) into the same ``state.pt``; on resume rank 0
reads it and FSDP sends each rank its shards (``broadcast_from_rank0``); ``model/`` is written from the gathered weights as a plain
transformers model. ``gradient_checkpointing`` (activation recomputation) is its own
setting, as it trades time for activation memory whatever the sharding.

Precision: full fine-tuning keeps float32 weights and optimizer state and computes
under ``torch.autocast`` in ``dtype``; LoRA loads the frozen base in ``dtype`` and keeps
the adapter in float32. ``dtype: auto`` is bfloat16 on a GPU that supports it and on a
CPU with native bf16 (``avx512_bf16`` or ``amx_bf16``), float32 elsewhere (emulated bf16
on an AVX2 CPU is several times slower than float32).
"""

from __future__ import annotations

import json
import logging
import math
import os
import platform
import random
import shutil
import time
from pathlib import Path
from typing import Any

from synth_empathy.core import hardware
from synth_empathy.core.sft_data import IGNORE_INDEX, collate

log = logging.getLogger(__name__)

CHECKPOINTS = "checkpoints"
MODEL = "model"
REPORT = "train_report.json"
PLOT = "loss.png"
STATE = "state.pt"
RAY_RUN = "ray_train"  # Ray Train's run folder under train.output (RunConfig name)


# --------------------------------------------------------------------------- device and dtype


def compute_dtype(name: str, device: Any):
    import torch

    if name == "auto":
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float32
        return torch.bfloat16 if hardware.bf16_native() else torch.float32  # one detection for every part
    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[name]


def device_description(device: Any) -> str:
    import torch

    if device.type == "cuda":
        return f"cuda ({torch.cuda.get_device_name(device)})"
    hw = hardware.detect()
    flags = sorted(hw.cpu_flags & {"avx512f", "avx512_bf16", "amx_bf16", "avx2"})
    return f"cpu ({hw.cpu_model or platform.machine()}; {os.cpu_count()} cores, torch threads {torch.get_num_threads()}; {' '.join(flags)})"


# --------------------------------------------------------------------------- schedule


def steps_per_epoch(n_examples: int, world: int, batch_size: int, accumulation: int) -> int:
    """Optimizer steps per epoch: every rank gets ``n // world`` examples per epoch."""
    per_rank = n_examples // world
    micro = math.ceil(per_rank / batch_size)
    return max(1, math.ceil(micro / accumulation))


def total_steps(settings: dict[str, Any], n_examples: int, world: int) -> int:
    per_epoch = steps_per_epoch(n_examples, world, settings["batch_size"], settings["gradient_accumulation"])
    if settings.get("max_steps"):
        return int(settings["max_steps"])
    return max(1, math.ceil(per_epoch * float(settings["epochs"])))


def epoch_order(n: int, seed: int, epoch: int) -> list[int]:
    """The example order of one epoch: a permutation fixed by ``(seed, epoch)``."""
    order = list(range(n))
    random.Random(f"{seed}/{epoch}").shuffle(order)
    return order


def step_batches(settings: dict[str, Any], n: int, step: int, rank: int, world: int) -> list[list[int]]:
    """The micro-batches (example indices) of optimizer step ``step`` (0-based) on ``rank``."""
    bs, acc = settings["batch_size"], settings["gradient_accumulation"]
    per_epoch = steps_per_epoch(n, world, bs, acc)
    epoch, within = divmod(step, per_epoch)
    order = epoch_order(n, settings["seed"], epoch)
    mine = order[rank::world][: n // world]
    chunk = mine[within * acc * bs : (within + 1) * acc * bs]
    return [chunk[i : i + bs] for i in range(0, len(chunk), bs)]


SCHEDULERS = {"cosine": "cosine", "linear": "linear", "constant": "constant_with_warmup"}


def make_scheduler(kind: str, optimizer: Any, total: int, warmup: int) -> Any:
    """transformers' schedule: linear warmup over ``warmup`` steps, then ``kind``
    (cosine or linear to zero at ``total``, or constant)."""
    from transformers import get_scheduler

    return get_scheduler(SCHEDULERS[kind], optimizer, num_warmup_steps=warmup, num_training_steps=total)


# --------------------------------------------------------------------------- model


def load_model(settings: dict[str, Any], device: Any, dtype: Any):
    """The base model, with a LoRA adapter when ``method`` is ``lora``."""
    import torch
    from transformers import AutoModelForCausalLM

    lora = settings["method"] == "lora"
    model = AutoModelForCausalLM.from_pretrained(
        settings["model_path"], dtype=dtype if lora else torch.float32, low_cpu_mem_usage=True
    )
    model.config.use_cache = False
    if settings.get("gradient_checkpointing"):
        model.gradient_checkpointing_enable()
        if lora:
            model.enable_input_require_grads()
    if lora:
        from peft import LoraConfig, get_peft_model

        lc = settings["lora"]
        model = get_peft_model(
            model,
            LoraConfig(
                r=lc["r"],
                lora_alpha=lc["alpha"],
                lora_dropout=lc["dropout"],
                target_modules=list(lc["target_modules"]),
                task_type="CAUSAL_LM",
            ),
        )
    return model.to(device)


def _unwrap(model: Any) -> Any:
    return getattr(model, "module", model)


def trainable_state(model: Any) -> dict[str, Any]:
    m = _unwrap(model)
    return {k: v.detach().cpu() for k, v in m.named_parameters() if v.requires_grad}


def trainable_names(model: Any) -> set[str]:
    return {k for k, v in _unwrap(model).named_parameters() if v.requires_grad}


def shard_model(model: Any, dtype: Any, device: Any, world: int) -> Any:
    """FSDP2 (``torch.distributed.fsdp.fully_shard``): every decoder layer (the model's
    ``_no_split_modules``) is its own unit, then the root (embeddings, final norm, head).
    Parameters, gradients and AdamW state are split over the ``world`` ranks; a unit's
    full weights exist only while it computes. Mixed precision where ``dtype`` is not
    float32: the sharded float32 master weights are cast to ``dtype`` for the forward and
    backward, gradients are reduced in float32 (``MixedPrecisionPolicy``), so no autocast."""
    import torch
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    mesh = init_device_mesh(device.type, (world,))
    policy = (
        MixedPrecisionPolicy(param_dtype=dtype, reduce_dtype=torch.float32)
        if dtype != torch.float32
        else MixedPrecisionPolicy()
    )
    unit_names = set(getattr(model, "_no_split_modules", None) or [])
    units = [m for m in model.modules() if type(m).__name__ in unit_names]
    if not units:
        raise ValueError(f"train.strategy=fsdp: {type(model).__name__} names no decoder layer (_no_split_modules)")
    for unit in units:
        fully_shard(unit, mesh=mesh, mp_policy=policy)
    fully_shard(model, mesh=mesh, mp_policy=policy)
    return model


def _full_options(**kw: Any) -> Any:
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    return StateDictOptions(full_state_dict=True, **kw)


def gathered_state(model: Any, optimizer: Any, fsdp: bool, rank: int) -> tuple[Any, Any]:
    """``(model weights, optimizer state)`` of a checkpoint, whole, on rank 0 (None elsewhere).
    Under FSDP every rank takes part: the shards are gathered on rank 0's CPU
    (``get_model_state_dict`` / ``get_optimizer_state_dict``, full state dict with CPU
    offload; the optimizer state is then keyed by parameter name)."""
    if not fsdp:
        return (trainable_state(model), optimizer.state_dict()) if rank == 0 else (None, None)
    from torch.distributed.checkpoint.state_dict import get_model_state_dict, get_optimizer_state_dict

    options = _full_options(cpu_offload=True)
    weights = get_model_state_dict(model, options=options)
    optim = get_optimizer_state_dict(model, optimizer, options=options)
    if rank != 0:
        return None, None
    names = trainable_names(model)
    return {k: v for k, v in weights.items() if k in names}, optim


def load_weights(model: Any, weights: dict[str, Any], fsdp: bool) -> None:
    """Whole weights into the model. Under FSDP every rank calls it and only rank 0's
    ``weights`` count (the others pass ``{}``): FSDP sends each rank its shards."""
    if not fsdp:
        _unwrap(model).load_state_dict(weights, strict=False)
        return
    from torch.distributed.checkpoint.state_dict import set_model_state_dict

    set_model_state_dict(model, weights, options=_full_options(strict=False, broadcast_from_rank0=True))


def load_optimizer(model: Any, optimizer: Any, state: dict[str, Any], fsdp: bool) -> None:
    """The optimizer state, as :func:`load_weights` (under FSDP: rank 0's, keyed by parameter name)."""
    if not fsdp:
        optimizer.load_state_dict(state)
        return
    from torch.distributed.checkpoint.state_dict import set_optimizer_state_dict

    set_optimizer_state_dict(model, optimizer, state, options=_full_options(broadcast_from_rank0=True))


def unsharded_model(model: Any, fsdp: bool, rank: int) -> Any:
    """The model to save: as it is without FSDP; under FSDP (every rank takes part) a plain
    transformers model on rank 0 built from the gathered full weights (None elsewhere), so
    ``model/`` is the usual safetensors folder."""
    if not fsdp:
        return _unwrap(model)
    import torch
    from torch.distributed.checkpoint.state_dict import get_model_state_dict
    from transformers import AutoModelForCausalLM

    weights = get_model_state_dict(model, options=_full_options(cpu_offload=True))
    if rank != 0:
        return None
    with torch.device("meta"):  # no second copy of random weights: the gathered ones are assigned
        plain = AutoModelForCausalLM.from_config(model.config, dtype=torch.float32)
    plain.load_state_dict(weights, strict=False, assign=True)
    plain.tie_weights()
    meta = [k for k, v in plain.state_dict().items() if v.is_meta]
    if meta:
        raise RuntimeError(f"FSDP gather left {len(meta)} tensors unset ({meta[0]}, ...)")
    return plain


def best_checkpoint(eval_curve: list[list[float]], save_steps: int, total: int) -> tuple[int, float] | None:
    """``(step, validation loss)`` the final model of a ``keep_best`` run comes from: the lowest
    validation loss among the steps whose weights still exist, the checkpointed ones (every
    ``save_steps``, before ``total``) and the last step (the model in memory). The earliest
    such step on a tie; a NaN or infinite loss (a diverged step) is never chosen. None without a
    finite validation loss at any of them."""
    kept = [
        (int(step), loss)
        for step, loss in eval_curve
        if (step == total or (save_steps and step % save_steps == 0 and step < total)) and math.isfinite(loss)
    ]
    if not kept:
        return None
    return min(kept, key=lambda c: (c[1], c[0]))


# --------------------------------------------------------------------------- checkpoints


def checkpoints(output_dir: str) -> list[Path]:
    """Complete checkpoints of a plain (``use_ray=false``) run, oldest first."""
    root = Path(output_dir) / CHECKPOINTS
    if not root.is_dir():
        return []
    done = [p for p in root.iterdir() if p.name.startswith("step-") and (p / STATE).is_file()]
    return sorted(done, key=lambda p: int(p.name.split("-", 1)[1]))


def checkpoint_name(step: int) -> str:
    return f"step-{step:07d}"


def _load_state(folder: Path) -> dict[str, Any]:
    import torch

    return torch.load(folder / STATE, map_location="cpu", weights_only=False)


class FolderCheckpoints:
    """The plain loop's checkpoints: ``<output>/checkpoints/step-NNNNNNN/state.pt``, written by
    rank 0 aside and renamed (a folder exists only once complete). Kept: the ``keep`` most
    recent, and with ``keep_best`` also the one of the lowest validation loss."""

    def __init__(self, output_dir: str, keep: int, keep_best: bool = False):
        self.output_dir, self.keep, self.keep_best = output_dir, max(1, keep), keep_best

    def latest(self) -> tuple[str, dict[str, Any]] | None:
        """The newest readable checkpoint, this loop's own or one Ray Train stored in the same
        local folder (``ray_train/step-*``): a run resumes when it switches ``use_ray``."""
        ray_stored = Path(self.output_dir) / RAY_RUN
        found = checkpoints(self.output_dir) + (
            [p for p in ray_stored.iterdir() if p.name.startswith("step-") and (p / STATE).is_file()]
            if ray_stored.is_dir()
            else []
        )
        for folder in sorted(found, key=lambda p: int(p.name.split("-", 1)[1]), reverse=True):
            try:
                return f"{folder.parent.name}/{folder.name}", _load_state(folder)
            except Exception as e:  # a copy cut short by a killed upload: the one before it
                log.warning("[train] checkpoint %s unreadable (%s); trying the one before", folder, type(e).__name__)
        return None

    def save(self, step: int, payload: dict[str, Any] | None, metrics: dict[str, Any], rank: int) -> None:
        if rank != 0:
            return
        import torch

        root = Path(self.output_dir) / CHECKPOINTS
        root.mkdir(parents=True, exist_ok=True)
        final = root / checkpoint_name(step)
        tmp = root / f".tmp-{final.name}-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        torch.save(payload, tmp / STATE)
        (tmp / "metrics.json").write_text(json.dumps(metrics))
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        found = checkpoints(self.output_dir)
        kept = set(found[-self.keep :])
        if self.keep_best:
            scored = [(json.loads((p / "metrics.json").read_text()).get("eval_loss"), p) for p in found]
            scored = [(v, p) for v, p in scored if v is not None and math.isfinite(v)]
            if scored:
                kept.add(min(scored, key=lambda vp: vp[0])[1])
        for old in found:
            if old not in kept:
                shutil.rmtree(old, ignore_errors=True)

    def load(self, step: int) -> dict[str, Any]:
        """The checkpoint of ``step`` (one this store kept: ``keep_best``'s)."""
        return _load_state(Path(self.output_dir) / CHECKPOINTS / checkpoint_name(step))

    def clear_partial(self) -> None:
        root = Path(self.output_dir) / CHECKPOINTS
        if root.is_dir():
            for p in root.iterdir():
                if p.name.startswith(".tmp-"):
                    shutil.rmtree(p, ignore_errors=True)


class RayCheckpoints:
    """Ray Train's checkpoints: every rank calls ``ray.train.report`` (a barrier), rank 0 with
    the state in a local temporary folder that Ray Train copies to its storage
    (``RunConfig(storage_path)``: local or object storage) as ``step-NNNNNNN``; a restarted
    worker group, or a new run on the same storage, starts from ``ray.train.get_checkpoint()``."""

    def __init__(
        self, local_output: str | None = None, storage: str | None = None, storage_options: dict | None = None
    ):
        self.local_output, self.storage, self.storage_options = local_output, storage, storage_options

    def latest(self) -> tuple[str, dict[str, Any]] | None:
        import ray.train

        ckpt = ray.train.get_checkpoint()
        if ckpt is None:  # a local folder may hold the plain loop's checkpoints (use_ray switched)
            return FolderCheckpoints(self.local_output, 1).latest() if self.local_output else None
        with ckpt.as_directory() as folder:
            return Path(ckpt.path).name, _load_state(Path(folder))

    def save(self, step: int, payload: dict[str, Any] | None, metrics: dict[str, Any], rank: int) -> None:
        import tempfile

        import ray.train
        import torch

        with tempfile.TemporaryDirectory(prefix="synth-empathy-ckpt-") as tmp:
            ckpt = None
            if rank == 0:
                torch.save(payload, Path(tmp) / STATE)
                ckpt = ray.train.Checkpoint.from_directory(tmp)
            ray.train.report(metrics, checkpoint=ckpt, checkpoint_dir_name=checkpoint_name(step))

    def load(self, step: int) -> dict[str, Any]:
        """The checkpoint of ``step`` from Ray Train's storage (``<storage>/ray_train/step-NNNNNNN``,
        local or through fsspec): ``keep_best``'s, which ``CheckpointConfig`` kept by its score."""
        import fsspec
        import torch

        fs, root = fsspec.core.url_to_fs(self.storage, **(self.storage_options or {}))
        with fs.open(f"{root.rstrip('/')}/{RAY_RUN}/{checkpoint_name(step)}/{STATE}", "rb") as f:
            return torch.load(f, map_location="cpu", weights_only=False)

    def clear_partial(self) -> None:
        pass


# --------------------------------------------------------------------------- outputs


def is_remote(url: str) -> bool:
    import fsspec

    return fsspec.core.split_protocol(url)[0] not in (None, "file", "local")


def save_model(model: Any, tokenizer: Any, output_dir: str, method: str, save_dtype: str) -> Path:
    """The final model folder (LoRA merged), written aside and renamed into place."""
    import torch

    m = _unwrap(model)
    if method == "lora":
        m = m.merge_and_unload()
    m = m.to(dtype={"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[save_dtype])
    m.config.use_cache = True
    final = Path(output_dir) / MODEL
    tmp = Path(output_dir) / f".tmp-model-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    m.save_pretrained(tmp, safe_serialization=True)
    tokenizer.save_pretrained(tmp)
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    return final


def publish(local: str, url: str, storage_options: dict | None, names: tuple[str, ...] = (PLOT, REPORT)) -> None:
    """Copy ``model/`` and then ``names`` (the report last: it marks a finished run) from the
    local folder ``local`` to ``url`` (fsspec: s3:// or any other)."""
    import fsspec

    from synth_empathy.errors import StorageError

    fs, root = fsspec.core.url_to_fs(url, **(storage_options or {}))
    root = root.rstrip("/")
    try:
        fs.put(str(Path(local) / MODEL), f"{root}/{MODEL}", recursive=True)
        for name in names:
            if (Path(local) / name).exists():
                fs.put(str(Path(local) / name), f"{root}/{name}")
    except Exception as e:
        raise StorageError(f"train.output {url}: upload failed ({type(e).__name__}: {e})") from None
    log.info("[train] uploaded the model and report to %s", url)


def plot_loss(curve: list[list[float]], path: Path, title: str, eval_curve: list[list[float]] | None = None) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    if curve:
        ax.plot([c[0] for c in curve], [c[1] for c in curve], lw=1.2, label="training")
    if eval_curve:
        ax.plot(
            [c[0] for c in eval_curve], [c[1] for c in eval_curve], "o-", lw=1.2, ms=3, label="validation (held out)"
        )
        ax.legend(fontsize=8)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss (answer tokens)")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# --------------------------------------------------------------------------- the loop


def _dist() -> tuple[int, int, int]:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", 0))
    return 0, 1, 0


def _target_count(parts: list[dict[str, list[list[int]]]]) -> int:
    return sum(sum(1 for x in row[1:] if x != IGNORE_INDEX) for p in parts for row in p["labels"])


def _loss_sum(model: Any, part: dict[str, list[list[int]]], device: Any, autocast: Any) -> tuple[Any, int]:
    """Summed cross-entropy over the answer tokens of one micro-batch, and its non-padding tokens."""
    import torch
    import torch.nn.functional as F

    ids = torch.tensor(part["input_ids"], device=device)
    labels = torch.tensor(part["labels"], device=device)
    mask = torch.tensor(part["attention_mask"], device=device)
    with autocast:
        logits = model(input_ids=ids, attention_mask=mask).logits
    loss = F.cross_entropy(
        logits[:, :-1].float().reshape(-1, logits.size(-1)),
        labels[:, 1:].reshape(-1),
        ignore_index=IGNORE_INDEX,
        reduction="sum",
    )
    return loss, int(mask.sum())


def evaluate(
    model: Any,
    examples: list[dict[str, list[int]]],
    s: dict,
    pad_id: int,
    device: Any,
    autocast: Any,
    fsdp: bool = False,
) -> float:
    """Loss over the answer tokens of ``examples`` (the held-out split), every rank its share.

    DDP: the bare module, so no collective in a forward pass whose count differs between
    ranks. FSDP: every forward gathers weights from all ranks, so every rank runs the same
    number of batches (one with nothing left repeats a pair and does not count it), and the
    root unit, which FSDP2 keeps gathered after a forward for the backward that usually
    follows, is sharded again (a state dict loaded next would otherwise meet whole tensors)."""
    import torch

    rank, world, _ = _dist()
    m = model if fsdp else _unwrap(model)
    mine = examples[rank::world]
    bs = s["batch_size"]
    batches = math.ceil(math.ceil(len(examples) / world) / bs) if fsdp else math.ceil(len(mine) / bs)
    total, count = 0.0, 0
    m.eval()
    with torch.no_grad():
        for i in range(batches):
            chunk = mine[i * bs : (i + 1) * bs]
            part = collate(chunk or examples[:1], pad_id)
            loss, _ = _loss_sum(m, part, device, autocast)
            if chunk:
                total += float(loss)
                count += _target_count([part])
    if fsdp:  # the root unit stays gathered after a forward (no backward follows here): shard it again
        m.reshard()
    m.train()
    total, count = _all_sum([total, float(count)], device, world)
    return total / max(1.0, count)


def train_loop(
    settings: dict[str, Any],
    examples: list[dict[str, list[int]]],
    output_dir: str,
    extra_report: dict | None = None,
    *,
    eval_examples: list[dict[str, list[int]]] | None = None,
    ray_train: bool = False,
    storage_options: dict | None = None,
) -> dict[str, Any] | None:
    """Fine-tune ``settings["model_path"]`` on ``examples``; the model, report and plot go to
    ``output_dir`` (a local folder, or with ``ray_train`` also an fsspec URL such as s3://,
    written through ``storage_options``).

    Checkpoints: without ``ray_train`` in ``<output_dir>/checkpoints`` (:class:`FolderCheckpoints`),
    with it through Ray Train's own (:class:`RayCheckpoints`, in its ``storage_path``).
    ``eval_examples``: the held-out split, its loss every ``eval_steps`` steps and at the end.

    Returns the report on rank 0 (None on other ranks). The report holds: ``steps``
    (optimizer steps in all), ``resumed_from_step`` (0 for a fresh start), ``starts`` (the
    step each start of the run began at: a restart after a failure adds one), ``examples``,
    ``epochs``, ``tokens`` (non-padding tokens this call trained on, all ranks),
    ``target_tokens`` (of those, answer tokens in the loss), ``train_seconds`` (this
    call's optimizer steps, checkpoint writes included), ``tokens_per_s`` (tokens /
    train_seconds), ``tokens_per_s_per_worker``, ``peak_memory_gib_per_worker`` (each
    rank's peak by the end of the steps: CUDA's most allocated, or on a CPU the process's max
    RSS), ``loss_first`` / ``loss_last`` (first and last logged step of the whole run),
    ``loss_curve``, ``eval_curve`` ([step, held-out loss]), ``eval_best`` (its lowest
    point), ``model_step`` / ``model_eval_loss`` (the step ``model/`` was taken at: the last,
    or with ``keep_best`` the kept checkpoint of the lowest validation loss,
    :func:`best_checkpoint`), ``strategy`` (single, ddp or fsdp), ``seconds`` (this call,
    model load and save included), ``device``, ``dtype`` (compute), ``weights_dtype``, plus
    ``extra_report``.
    """
    import tempfile
    from contextlib import nullcontext

    import torch
    from transformers import AutoTokenizer

    t_call = time.perf_counter()
    s = settings
    rank, world, local_rank = _dist()
    use_cuda = bool(s.get("use_gpu")) and torch.cuda.is_available()
    device = torch.device(f"cuda:{local_rank}" if use_cuda else "cpu")
    if use_cuda:
        torch.cuda.set_device(device)
    dtype = compute_dtype(s["dtype"], device)
    torch.manual_seed(s["seed"])
    remote = is_remote(output_dir)
    if remote and not ray_train:
        raise ValueError("the plain loop writes to a local folder (run.py stages a remote train.output)")
    work_dir = tempfile.mkdtemp(prefix="synth-empathy-train-") if remote and rank == 0 else output_dir
    store = (
        RayCheckpoints(None if remote else output_dir, output_dir, storage_options)
        if ray_train
        else FolderCheckpoints(work_dir, s["keep_checkpoints"], s.get("keep_best"))
    )
    if rank == 0:
        Path(work_dir).mkdir(parents=True, exist_ok=True)
        store.clear_partial()

    tokenizer = AutoTokenizer.from_pretrained(s["model_path"])
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    model = load_model(s, device, dtype)
    model.train()
    fsdp = s.get("strategy", "ddp") == "fsdp" and world > 1
    if s.get("strategy", "ddp") == "fsdp" and world == 1:
        log.warning("[train] train.strategy=fsdp with one process: nothing to shard over, trained unsharded")
    if fsdp:
        model = shard_model(model, dtype, device, world)
    elif world > 1:
        from torch.nn.parallel import DistributedDataParallel

        model = DistributedDataParallel(model, device_ids=[local_rank] if use_cuda else None)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=s["learning_rate"], weight_decay=s["weight_decay"])
    n = len(examples)
    total = total_steps(s, n, world)
    warmup = int(round(float(s["warmup_ratio"]) * total))
    scheduler = make_scheduler(s["lr_scheduler"], optimizer, total, warmup)

    start, curve, eval_curve, starts, tokens_before, target_before = 0, [], [], [], 0, 0
    # FSDP: rank 0 alone reads the checkpoint (for 8B ~96 GB of host memory, not that on every
    # rank) and FSDP sends each rank its shards; the small rest goes to all ranks as objects
    found = _from_rank0(store.latest() if rank == 0 else None) if fsdp else store.latest()
    if found:
        name, state = found
        missing = trainable_names(model) - set(state["model"]) if rank == 0 or not fsdp else set()
        if missing:
            raise RuntimeError(f"checkpoint {name} lacks {len(missing)} trainable tensors")
        load_weights(model, state["model"], fsdp)
        load_optimizer(model, optimizer, state["optimizer"], fsdp)
        scheduler.load_state_dict(state["scheduler"])
        torch.set_rng_state(state["torch_rng"])
        start, curve = int(state["step"]), list(state["curve"])
        eval_curve, starts = list(state.get("eval_curve", [])), list(state.get("starts", [0]))
        tokens_before, target_before = int(state["tokens"]), int(state["target_tokens"])
        if rank == 0:
            log.info("[train] resuming from %s (step %d of %d)", name, start, total)
    starts.append(start)

    # FSDP casts the weights itself (its MixedPrecisionPolicy); DDP and one process autocast
    autocast = torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32 and not fsdp)
    eval_steps = int(s.get("eval_steps") or 0) if eval_examples else 0
    tokens = target_tokens = 0
    t_train = time.perf_counter()
    for step in range(start, total):
        batches = step_batches(s, n, step, rank, world)
        parts = [collate([examples[i] for i in b], pad_id) for b in batches if b]
        # The loss is the mean over every answer token of the step, on all ranks together:
        # each rank divides its sum by the step's total and DDP's gradient mean is undone
        # (x world), so W workers at micro-batch b take the step one worker at W x b would.
        n_target = _target_count(parts)
        step_target = int(_all_sum([float(n_target)], device, world)[0])
        step_loss = 0.0
        for j, p in enumerate(parts):
            last = j == len(parts) - 1
            # gradient accumulation without a reduction per micro-batch: DDP's no_sync; FSDP2
            # keeps the micro-batches' gradients unsharded and reduce-scatters after the last one
            if fsdp:
                model.set_requires_gradient_sync(last)
            with model.no_sync() if (world > 1 and not fsdp and not last) else nullcontext():
                loss_sum, n_tokens = _loss_sum(model, p, device, autocast)
                (loss_sum * world / max(1, step_target)).backward()
            step_loss += float(loss_sum.detach())
            tokens += n_tokens
        target_tokens += n_target
        if s["max_grad_norm"]:
            torch.nn.utils.clip_grad_norm_(params, s["max_grad_norm"])
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        loss = _all_sum([step_loss], device, world)[0] / max(1, step_target)
        done = step + 1
        curve.append([done, round(loss, 5)])
        metrics: dict[str, Any] = {"step": done, "loss": round(loss, 5)}
        if eval_steps and (done % eval_steps == 0 or done == total):
            metrics["eval_loss"] = round(evaluate(model, eval_examples, s, pad_id, device, autocast, fsdp), 5)
            eval_curve.append([done, metrics["eval_loss"]])
        if rank == 0 and (done % max(1, s["log_steps"]) == 0 or done == total):
            shown = f" eval_loss {metrics['eval_loss']:.4f}" if "eval_loss" in metrics else ""
            log.info("[train] step %d/%d loss %.4f%s lr %.2e", done, total, loss, shown, scheduler.get_last_lr()[0])
        if s["save_steps"] and done % s["save_steps"] == 0 and done < total:
            all_tokens, all_target = _all_sum([float(tokens), float(target_tokens)], device, world)
            weights, optim = gathered_state(model, optimizer, fsdp, rank)
            payload = None
            if rank == 0:
                payload = {
                    "step": done,
                    "model": weights,
                    "optimizer": optim,
                    "scheduler": scheduler.state_dict(),
                    "torch_rng": torch.get_rng_state(),
                    "curve": curve,
                    "eval_curve": eval_curve,
                    "starts": starts,
                    "tokens": tokens_before + int(all_tokens),
                    "target_tokens": target_before + int(all_target),
                }
            store.save(done, payload, metrics, rank)
            if world > 1 and not ray_train:  # ray.train.report is itself a barrier
                import torch.distributed as dist

                dist.barrier()
    train_seconds = time.perf_counter() - t_train
    tokens, target_tokens = (int(v) for v in _all_sum([float(tokens), float(target_tokens)], device, world))
    peaks = _all_sum([_peak_memory_gib(device) if r == rank else 0.0 for r in range(world)], device, world)
    final_step, final_eval = total, None
    if s.get("keep_best"):  # the final model is the checkpoint of the lowest validation loss
        chosen = best_checkpoint(eval_curve, s["save_steps"], total)
        if chosen is not None:
            final_step, final_eval = chosen
        if final_step != total:  # rank 0 reads it (no shared folder assumed); FSDP sends the shards out
            weights = store.load(final_step)["model"] if rank == 0 else {}
            if fsdp or rank == 0:  # DDP: rank 0 alone writes the model
                load_weights(model, weights, fsdp)
            if rank == 0:
                log.info("[train] keep_best: the model is step %d's (validation loss %.4f)", final_step, final_eval)
    to_save = unsharded_model(model, fsdp, rank)
    if rank != 0:
        _barrier(world)
        return None
    save_model(to_save, tokenizer, work_dir, s["method"], s["save_dtype"])
    finite = [c for c in eval_curve if math.isfinite(c[1])]
    best = min(finite, key=lambda c: c[1]) if finite else None
    report = {
        "steps": total,
        "resumed_from_step": start,
        "starts": starts,
        "examples": n,
        "eval_examples": len(eval_examples or []),
        "workers": world,
        "epochs": round(total / steps_per_epoch(n, world, s["batch_size"], s["gradient_accumulation"]), 3),
        "tokens": tokens,
        "target_tokens": target_tokens,
        "tokens_whole_run": tokens_before + tokens,
        "train_seconds": round(train_seconds, 2),
        "tokens_per_s": round(tokens / train_seconds, 2) if train_seconds > 0 and tokens else None,
        "tokens_per_s_per_worker": round(tokens / train_seconds / world, 2) if train_seconds > 0 and tokens else None,
        "loss_first": curve[0][1] if curve else None,
        "loss_last": curve[-1][1] if curve else None,
        "eval_first": eval_curve[0][1] if eval_curve else None,
        "eval_last": eval_curve[-1][1] if eval_curve else None,
        "eval_best": {"step": best[0], "eval_loss": best[1]} if best else None,
        "model_step": final_step,
        "model_eval_loss": final_eval,
        "strategy": "fsdp" if fsdp else ("ddp" if world > 1 else "single"),
        "peak_memory_gib_per_worker": [round(v, 3) for v in peaks],
        "peak_memory_kind": "torch.cuda.max_memory_allocated" if device.type == "cuda" else "process max RSS",
        "seconds": round(time.perf_counter() - t_call, 2),
        "device": device_description(device),
        "dtype": str(dtype).replace("torch.", ""),
        "weights_dtype": "float32" if s["method"] == "full" else str(dtype).replace("torch.", ""),
        "method": s["method"],
        "model": f"{output_dir.rstrip('/')}/{MODEL}",
        "loss_curve": curve,
        "eval_curve": eval_curve,
        **(extra_report or {}),
    }
    where = report["device"].split(";")[0] + (")" if "(" in report["device"] else "")
    title = f"{s['method']} fine-tuning, {n} pairs, {world} worker(s), {report['dtype']}, {where}"
    plot_loss(curve, Path(work_dir) / PLOT, title, eval_curve)
    _write_json(Path(work_dir) / REPORT, report)
    if remote:
        publish(work_dir, output_dir, storage_options)
        shutil.rmtree(work_dir, ignore_errors=True)
    _barrier(world)
    return report


def _from_rank0(found: tuple[str, dict[str, Any]] | None) -> tuple[str, dict[str, Any]] | None:
    """Rank 0's checkpoint on every rank, its weights and optimizer state only on rank 0
    (empty elsewhere: FSDP's ``broadcast_from_rank0`` fills the shards)."""
    import torch.distributed as dist

    big = ("model", "optimizer")
    box = [None if found is None else (found[0], {k: v for k, v in found[1].items() if k not in big})]
    dist.broadcast_object_list(box, src=0)
    if box[0] is None:
        return None
    if found is not None:  # rank 0
        return found
    name, rest = box[0]
    return name, {**rest, "model": {}, "optimizer": {}}


def _peak_memory_gib(device: Any) -> float:
    """This process's peak memory so far: CUDA's most allocated on a GPU, the process's max RSS
    (Python and torch themselves included) on a CPU."""
    import torch

    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux


def _barrier(world: int) -> None:
    if world > 1:
        import torch.distributed as dist

        dist.barrier()


def _all_sum(values: list[float], device: Any, world: int) -> list[float]:
    """``values`` summed over the ranks (as they are with one)."""
    if world == 1:
        return values
    import torch
    import torch.distributed as dist

    t = torch.tensor(values, device=device, dtype=torch.float64)
    dist.all_reduce(t)
    return [float(v) for v in t.tolist()]


def _write_json(path: Path, data: Any) -> None:
    tmp = path.with_name(f".tmp-{path.name}")
    tmp.write_text(json.dumps(data, indent=2))
    os.replace(tmp, path)
