"""The training loop: supervised fine-tuning with transformers (+ peft for LoRA), no Ray.

:func:`train_loop` takes plain settings (the ``train`` config section as a dict, plus
``model_path``), tokenised examples (``input_ids``, ``labels``; see
:mod:`synth_empathy.core.sft_data`) and an output folder, and writes into that folder:

* ``checkpoints/step-NNNNNNN/state.pt`` every ``save_steps`` optimizer steps (the
  trainable weights, optimizer, scheduler, loss curve, counters); a checkpoint folder
  appears only once complete (written aside and renamed), older ones are removed down
  to ``keep_checkpoints``;
* ``model/``: the fine-tuned model (a LoRA adapter is merged into the base weights) as
  safetensors with the tokenizer and its chat template, a folder vLLM and transformers
  load; written aside and renamed, so it exists only when whole;
* ``train_report.json`` and ``loss.png`` (see :func:`train_loop`).

Started again on the same folder it resumes from the last complete checkpoint: same
weights, optimizer moments, learning-rate schedule and data order (each epoch's order
is a fixed permutation of ``(seed, epoch)``), so a killed run continues where its last
checkpoint was taken, not from step 0.

Data parallel: when ``torch.distributed`` is initialised (Ray Train's ``TorchTrainer``
does it; so does ``torchrun``) the model is wrapped in ``DistributedDataParallel``,
every rank trains on its own share of each epoch's order, and rank 0 writes the
checkpoints, the model and the report. Without it the loop runs in this process alone.

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


def lr_factor(kind: str, step: int, total: int, warmup: int) -> float:
    if warmup and step < warmup:
        return (step + 1) / warmup
    if kind == "constant":
        return 1.0
    progress = (step - warmup) / max(1, total - warmup)
    if kind == "linear":
        return max(0.0, 1.0 - progress)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


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


# --------------------------------------------------------------------------- checkpoints


def checkpoints(output_dir: str) -> list[Path]:
    """Complete checkpoints, oldest first."""
    root = Path(output_dir) / CHECKPOINTS
    if not root.is_dir():
        return []
    done = [p for p in root.iterdir() if p.name.startswith("step-") and (p / STATE).is_file()]
    return sorted(done, key=lambda p: int(p.name.split("-", 1)[1]))


def save_checkpoint(output_dir: str, step: int, payload: dict[str, Any], keep: int) -> Path:
    import torch

    root = Path(output_dir) / CHECKPOINTS
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step-{step:07d}"
    tmp = root / f".tmp-step-{step:07d}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    torch.save(payload, tmp / STATE)
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    for old in checkpoints(output_dir)[: -max(1, keep)]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def _clear_partial(output_dir: str) -> None:
    root = Path(output_dir) / CHECKPOINTS
    if root.is_dir():
        for p in root.iterdir():
            if p.name.startswith(".tmp-"):
                shutil.rmtree(p, ignore_errors=True)


# --------------------------------------------------------------------------- outputs


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


def plot_loss(curve: list[list[float]], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    if curve:
        ax.plot([c[0] for c in curve], [c[1] for c in curve], lw=1.2)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("training loss (answer tokens)")
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


def train_loop(
    settings: dict[str, Any], examples: list[dict[str, list[int]]], output_dir: str, extra_report: dict | None = None
) -> dict[str, Any] | None:
    """Fine-tune ``settings["model_path"]`` on ``examples`` into ``output_dir``.

    Returns the report on rank 0 (None on other ranks). The report holds: ``steps``
    (optimizer steps in all), ``resumed_from_step`` (0 for a fresh start), ``examples``,
    ``epochs``, ``tokens`` (non-padding tokens this call trained on, all ranks),
    ``target_tokens`` (of those, answer tokens in the loss), ``train_seconds`` (this
    call's optimizer steps, checkpoint writes included), ``tokens_per_s`` (tokens /
    train_seconds), ``loss_first`` / ``loss_last`` (first and last logged step of the
    whole run), ``loss_curve``, ``seconds`` (this call, model load and save included),
    ``device``, ``dtype`` (compute), ``weights_dtype``, plus ``extra_report``.
    """
    import torch
    import torch.distributed as dist
    import torch.nn.functional as F
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
    Path(output_dir).mkdir(parents=True, exist_ok=True)
    if rank == 0:
        _clear_partial(output_dir)

    tokenizer = AutoTokenizer.from_pretrained(s["model_path"])
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    model = load_model(s, device, dtype)
    model.train()
    if world > 1:
        from torch.nn.parallel import DistributedDataParallel

        model = DistributedDataParallel(model, device_ids=[local_rank] if use_cuda else None)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=s["learning_rate"], weight_decay=s["weight_decay"])
    n = len(examples)
    total = total_steps(s, n, world)
    warmup = int(round(float(s["warmup_ratio"]) * total))
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_factor(s["lr_scheduler"], step, total, warmup)
    )

    start, curve, tokens_before, target_before = 0, [], 0, 0
    found = checkpoints(output_dir)
    if found:
        state = torch.load(found[-1] / STATE, map_location="cpu", weights_only=False)
        missing = set(trainable_state(model)) - set(state["model"])
        if missing:
            raise RuntimeError(f"checkpoint {found[-1]} lacks {len(missing)} trainable tensors")
        _unwrap(model).load_state_dict(state["model"], strict=False)
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        torch.set_rng_state(state["torch_rng"])
        start, curve = int(state["step"]), list(state["curve"])
        tokens_before, target_before = int(state["tokens"]), int(state["target_tokens"])
        if rank == 0:
            log.info("[train] resuming from %s (step %d of %d)", found[-1].name, start, total)

    autocast = torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32)
    tokens = target_tokens = 0
    t_train = time.perf_counter()
    for step in range(start, total):
        batches = step_batches(s, n, step, rank, world)
        parts = [collate([examples[i] for i in b], pad_id) for b in batches if b]
        n_target = sum(sum(1 for x in row[1:] if x != IGNORE_INDEX) for p in parts for row in p["labels"])
        step_loss = 0.0
        for j, p in enumerate(parts):
            ids = torch.tensor(p["input_ids"], device=device)
            labels = torch.tensor(p["labels"], device=device)
            mask = torch.tensor(p["attention_mask"], device=device)
            sync = j == len(parts) - 1 or world == 1
            ctx = model.no_sync() if (world > 1 and not sync) else _null()
            with ctx:
                with autocast:
                    logits = model(input_ids=ids, attention_mask=mask).logits
                loss_sum = F.cross_entropy(
                    logits[:, :-1].float().reshape(-1, logits.size(-1)),
                    labels[:, 1:].reshape(-1),
                    ignore_index=IGNORE_INDEX,
                    reduction="sum",
                )
                (loss_sum / max(1, n_target)).backward()
            step_loss += float(loss_sum.detach())
            tokens += int(mask.sum())
        target_tokens += n_target
        if s["max_grad_norm"]:
            torch.nn.utils.clip_grad_norm_(params, s["max_grad_norm"])
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        loss = step_loss / max(1, n_target)
        if world > 1:
            t = torch.tensor([loss], device=device)
            dist.all_reduce(t)
            loss = float(t) / world
        done = step + 1
        curve.append([done, round(loss, 5)])
        if rank == 0 and (done % max(1, s["log_steps"]) == 0 or done == total):
            log.info("[train] step %d/%d loss %.4f lr %.2e", done, total, loss, scheduler.get_last_lr()[0])
        if s["save_steps"] and done % s["save_steps"] == 0 and done < total:
            all_tokens, all_target = _sum_over_ranks([tokens, target_tokens], device, world)
            if rank == 0:
                save_checkpoint(
                    output_dir,
                    done,
                    {
                        "step": done,
                        "model": trainable_state(model),
                        "optimizer": optimizer.state_dict(),
                        "scheduler": scheduler.state_dict(),
                        "torch_rng": torch.get_rng_state(),
                        "curve": curve,
                        "tokens": tokens_before + all_tokens,
                        "target_tokens": target_before + all_target,
                    },
                    s["keep_checkpoints"],
                )
            if world > 1:
                dist.barrier()
    train_seconds = time.perf_counter() - t_train
    tokens, target_tokens = _sum_over_ranks([tokens, target_tokens], device, world)
    if rank != 0:
        if world > 1:
            dist.barrier()
        return None
    save_model(model, tokenizer, output_dir, s["method"], s["save_dtype"])
    report = {
        "steps": total,
        "resumed_from_step": start,
        "examples": n,
        "workers": world,
        "epochs": round(total / steps_per_epoch(n, world, s["batch_size"], s["gradient_accumulation"]), 3),
        "tokens": tokens,
        "target_tokens": target_tokens,
        "tokens_whole_run": tokens_before + tokens,
        "train_seconds": round(train_seconds, 2),
        "tokens_per_s": round(tokens / train_seconds, 2) if train_seconds > 0 and tokens else None,
        "loss_first": curve[0][1] if curve else None,
        "loss_last": curve[-1][1] if curve else None,
        "seconds": round(time.perf_counter() - t_call, 2),
        "device": device_description(device),
        "dtype": str(dtype).replace("torch.", ""),
        "weights_dtype": "float32" if s["method"] == "full" else str(dtype).replace("torch.", ""),
        "method": s["method"],
        "model": str(Path(output_dir) / MODEL),
        "loss_curve": curve,
        **(extra_report or {}),
    }
    where = report["device"].split(";")[0] + (")" if "(" in report["device"] else "")
    plot_loss(curve, Path(output_dir) / PLOT, f"{s['method']} fine-tuning, {n} pairs, {report['dtype']}, {where}")
    _write_json(Path(output_dir) / REPORT, report)
    if world > 1:
        dist.barrier()
    return report


class _null:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def _sum_over_ranks(values: list[int], device: Any, world: int) -> list[int]:
    if world == 1:
        return values
    import torch
    import torch.distributed as dist

    t = torch.tensor(values, device=device, dtype=torch.long)
    dist.all_reduce(t)
    return [int(v) for v in t.tolist()]


def _write_json(path: Path, data: Any) -> None:
    tmp = path.with_name(f".tmp-{path.name}")
    tmp.write_text(json.dumps(data, indent=2))
    os.replace(tmp, path)
