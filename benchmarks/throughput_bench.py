"""Throughput of the pipeline's stages against the plain libraries, in one run.

(a) generation: ``synth_empathy.stages.generation.Generation`` on Ray Data + ray.data.llm
    versus ``vllm.LLM.chat`` on the same prompts, model, engine arguments and sampling
    (temperature 0.8, top-p 0.9, ``max_tokens`` fixed and ``ignore_eos`` so every
    answer has exactly ``max_tokens`` tokens on both paths);
(b) embedding: ``synth_empathy.stages.quality.score_stage`` (the quality stage, which embeds
    target, discriminator answer and instruction+target of every kept row) versus
    plain sentence-transformers ``encode`` of the same texts in the same batches.

Every measurement runs in its own child process (a fresh local Ray for the pipeline
paths), one after the other, the paths alternating. The parent watches the children
with psutil: threads, CPU affinity, ``OMP_NUM_THREADS`` and CPU seconds of each engine
and embedding process, so the two paths can be checked to get the same CPU.

    .venv/bin/python benchmarks/throughput_bench.py 2>&1 | tee benchmarks/out/throughput.log

Results: ``benchmarks/out/throughput.json`` and a Markdown table on stdout.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import threading
import time
from typing import Any

from machine import cpu_name

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "out")

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


# --------------------------------------------------------------------------- inputs


def seed_rows(n: int) -> list[dict[str, Any]]:
    """n generation rows from the shipped seeds (cycled), as the pipeline expands them."""
    from synth_empathy.stages.seed_sources import default_seed_path, read_seeds

    seeds = read_seeds(default_seed_path()).to_arrow().to_pylist()
    return [dict(seeds[i % len(seeds)], sample_id=f"{seeds[i % len(seeds)]['seed_id']}#g{i}") for i in range(n)]


def embed_rows(n: int) -> list[dict[str, Any]]:
    """n discriminated-like rows built from the shipped seed texts (real sentence lengths)."""
    seeds = seed_rows(n)
    rows = []
    for i, s in enumerate(seeds):
        lines = [ln.split(":", 1)[-1].strip() for ln in s["context"].splitlines() if ln.strip()]
        other = seeds[(i * 7 + 3) % len(seeds)]
        rows.append(
            {
                "sample_id": s["sample_id"],
                "instruction": " ".join(lines),
                "output": s["response"],
                "disc_response": other["response"],
                "disc_error": None,
            }
        )
    return rows


OVERRIDES: list[str] = []  # --set key=value, applied to both paths alike


def config():
    from synth_empathy.config import load_config

    return load_config("default", OVERRIDES)


# --------------------------------------------------------------------------- children


def llm_plain(args) -> dict[str, Any]:
    from vllm import LLM, SamplingParams

    from synth_empathy.engines.options import engine_env, engine_kwargs
    from synth_empathy.models.weights import resolve_model
    from synth_empathy.stages.generation import generation_messages

    cfg = config().generation
    kwargs = engine_kwargs(cfg.engine)
    # The pipeline hands the engine this env through the actor's runtime_env; the plain
    # engine gets the same (an explicit --bind, already in the env, still wins).
    for k, v in engine_env(cfg.engine).items():
        os.environ.setdefault(k, v)
    if args.plain_executor:
        kwargs["distributed_executor_backend"] = args.plain_executor
    prompts = [generation_messages(r) for r in seed_rows(args.rows)]
    sp = SamplingParams(
        temperature=cfg.sampling.temperature, top_p=cfg.sampling.top_p, max_tokens=args.max_tokens, ignore_eos=True
    )
    t0 = time.perf_counter()
    llm = LLM(model=str(resolve_model(cfg.engine.model)), **kwargs)
    start_s = time.perf_counter() - t0
    runs = []
    for _ in range(args.plain_repeats):
        t, epoch = time.perf_counter(), time.time()
        outs = llm.chat(prompts, sp, use_tqdm=False, add_generation_prompt=False, continue_final_message=True)
        runs.append(
            {
                "seconds": time.perf_counter() - t,
                "window": [epoch, time.time()],
                "generated_tokens": sum(len(o.outputs[0].token_ids) for o in outs),
                "prompt_tokens": sum(len(o.prompt_token_ids) for o in outs),
            }
        )
    return {"engine_start_s": start_s, "runs": runs, "rows": len(prompts), "engine_kwargs": kwargs}


def fixed_length(args):
    from synth_empathy.stages.generation import Generation

    class FixedLength(Generation):
        """The pipeline's stage; sampling adds ignore_eos, output adds timing columns."""

        def sampling_params(self):
            return {**super().sampling_params(), "max_tokens": args.max_tokens, "ignore_eos": True}

        def postprocess(self, row):
            out = super().postprocess(row)
            out["t_done"] = time.time()
            out["time_taken_llm"] = float(row.get("time_taken_llm") or -1.0)
            out["num_input_tokens"] = int(row.get("num_input_tokens") or 0)
            return out

    return FixedLength


def llm_pipeline(args) -> dict[str, Any]:
    import ray

    from synth_empathy.cluster.ray_init import init_ray
    from synth_empathy.models.weights import resolve_model

    cfg = config()
    init_ray(cfg)
    g = cfg.generation

    rows = seed_rows(args.rows)
    t0 = time.perf_counter()
    ds = fixed_length(args)(g.engine, g.sampling, g.min_rounds)(
        ray.data.from_items(rows), model_path=str(resolve_model(g.engine.model))
    )
    table = ds.to_pandas()
    wall = time.perf_counter() - t0
    errors = int(table["error"].notna().sum())
    t_end = float(table["t_done"].max())
    t_start = float((table["t_done"] - table["time_taken_llm"]).min())
    ray.shutdown()
    return {
        "wall_s": wall,
        "engine_window_s": t_end - t_start,
        "window": [t_start, t_end],
        "rows": len(table),
        "errors": errors,
        "generated_tokens": int(table["num_generated_tokens"].sum()),
        "prompt_tokens": int(table["num_input_tokens"].sum()),
    }


def llm_shared(args) -> dict[str, Any]:
    """The generation stage against a shared engine (``ray.engines=shared``: one Ray Serve
    deployment, the CPU default's path). The clock starts once the deployment serves, so
    the engine's start is out of it as it is out of the plain path's "fresh engine" call;
    the stage's own set-up (Ray Data's plan, the sender actors) is in it."""
    import ray

    from synth_empathy.cluster.ray_init import init_ray, started_here
    from synth_empathy.engines.shared import SharedEngines
    from synth_empathy.models.weights import resolve_model

    OVERRIDES.append("ray.engines=shared")
    cfg = config()
    init_ray(cfg)
    g = cfg.generation
    path = str(resolve_model(g.engine.model))
    stage = fixed_length(args)(g.engine, g.sampling, g.min_rounds)
    rows = seed_rows(args.rows)
    t_start = time.perf_counter()
    with SharedEngines(cfg, ray_ends_with_us=started_here()) as engines:
        served = engines.for_stage("generation", g.engine, path)
        assert served is not None, "the default preset's generation did not share an engine"
        start_s = time.perf_counter() - t_start
        t0, epoch = time.perf_counter(), time.time()
        table = stage(ray.data.from_items(rows), model_path=path, served=served).to_pandas()
        window = time.perf_counter() - t0
        epochs = [epoch, time.time()]
    ray.shutdown()
    return {
        "wall_s": time.perf_counter() - t_start,
        "engine_start_s": start_s,
        "engine_window_s": window,
        "window": epochs,
        "rows": len(table),
        "errors": int(table["error"].notna().sum()),
        "generated_tokens": int(table["num_generated_tokens"].sum()),
    }


def _texts(rows):
    from synth_empathy.stages.quality import diversity_text

    return (
        [r["output"] for r in rows] + [r["disc_response"] for r in rows],
        [diversity_text(r["instruction"], r["output"]) for r in rows],
    )


def embed_plain(args) -> dict[str, Any]:
    import torch
    from sentence_transformers import SentenceTransformer

    from synth_empathy.models.weights import resolve_model

    q = config().quality
    rows = embed_rows(args.embed_rows)
    t0 = time.perf_counter()
    model = SentenceTransformer(str(resolve_model(q.embedder)))
    load_s = time.perf_counter() - t0
    runs = []
    for _ in range(args.embed_repeats):
        t = time.perf_counter()
        # What score_batch does, batch by batch: both score texts, then the kept rows' texts.
        for b in range(0, len(rows), q.batch_size):
            pair, div = _texts(rows[b : b + q.batch_size])
            model.encode(pair, batch_size=q.batch_size, normalize_embeddings=True, show_progress_bar=False)
            model.encode(div, batch_size=q.batch_size, normalize_embeddings=True, show_progress_bar=False)
        runs.append(time.perf_counter() - t)
    return {
        "load_s": load_s,
        "runs_s": runs,
        "rows": len(rows),
        "texts": 3 * len(rows),
        "torch_threads": torch.get_num_threads(),
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
    }


def embed_pipeline(args) -> dict[str, Any]:
    import ray
    from omegaconf import OmegaConf

    from synth_empathy.cluster.ray_init import init_ray
    from synth_empathy.stages.quality import score_stage

    cfg = config()
    init_ray(cfg)
    q = OmegaConf.to_container(cfg.quality)
    q["threshold"] = -101.0  # keep every row: the stage embeds 3 texts per row, like the plain path
    q = OmegaConf.create(q)
    rows = embed_rows(args.embed_rows)
    import pyarrow as pa

    table = pa.Table.from_pylist(
        rows,
        schema=pa.schema(
            [
                ("sample_id", pa.string()),
                ("instruction", pa.string()),
                ("output", pa.string()),
                ("disc_response", pa.string()),
                ("disc_error", pa.string()),
            ]
        ),
    )

    runs = []
    for _ in range(args.embed_repeats):
        # One input block per embedding batch, as a multi-file Parquet read gives,
        # so results stream out batch by batch and the steady rate can be seen.
        blocks = [table.slice(i, q.batch_size) for i in range(0, table.num_rows, q.batch_size)]
        source = ray.data.from_arrow(blocks)
        ds = score_stage(source, q, 60.0 if q.threshold == "auto" else q.threshold)  # the rate, not T, is measured
        t0 = time.perf_counter()
        arrivals = []
        n = 0
        for batch in ds.iter_batches(batch_size=None, batch_format="pyarrow"):
            n += batch.num_rows
            arrivals.append((time.perf_counter(), batch.num_rows))
        wall = time.perf_counter() - t0
        first_t, first_n = arrivals[0]
        steady = (n - first_n) / (arrivals[-1][0] - first_t) if len(arrivals) > 1 else None
        runs.append({"wall_s": wall, "rows": n, "steady_rows_per_s": steady, "batches": len(arrivals)})
    threads = (
        ray.data.range(1)
        .map_batches(
            ThreadProbe,
            batch_size=1,
            concurrency=q.replicas,
            num_gpus=q.gpus_per_replica or None,
            num_cpus=q.cpus_per_replica,
        )
        .take_all()[0]
    )
    ray.shutdown()
    return {"runs": runs, "rows": len(rows), "texts": 3 * len(rows), "actor_threads": threads}


class ThreadProbe:
    """An actor scheduled as score_stage schedules QualityScorer: what threads does torch get?"""

    def __call__(self, batch):
        import torch

        return {"omp_num_threads": [os.environ.get("OMP_NUM_THREADS")], "torch_threads": [torch.get_num_threads()]}


CHILDREN = {
    "llm-plain": llm_plain,
    "llm-pipeline": llm_pipeline,
    "llm-shared": llm_shared,
    "embed-plain": embed_plain,
    "embed-pipeline": embed_pipeline,
}


# --------------------------------------------------------------------------- watching

# The engine's own processes (vLLM's V1 engine core, the scheduler, and its worker, the
# model's forward passes: both name themselves ``VLLM::...``); everything else a path
# runs (vLLM's front end in the caller, Ray's raylet, GCS and helper actors, Ray Data's
# tasks, Serve's replica and controller) is what the path adds around the engine.
ENGINE_CORE = "VLLM::"


def engine_split(procs, used) -> dict[str, float]:
    """CPU seconds of a measurement's processes, vLLM's engine and the rest: ``used(p)`` gives
    what process ``p`` counts."""
    out = {"engine_cpu_s": 0.0, "other_cpu_s": 0.0}
    for p in procs:
        out["engine_cpu_s" if p["name"].startswith(ENGINE_CORE) else "other_cpu_s"] += used(p)
    return {k: round(v, 1) for k, v in out.items()}


def in_window(p, start: float, end: float) -> float:
    """CPU seconds of process ``p`` inside ``[start, end]`` (epoch seconds), from its samples
    nearest the two ends."""

    def at(series, t):
        before = [c for ts, c in series if ts <= t]
        return before[-1] if before else 0.0

    series = p.get("series") or []
    return at(series, end) - at(series, start)


def window_cpu(procs, start: float, end: float) -> dict[str, float]:
    """:func:`engine_split` inside ``[start, end]`` (epoch seconds: the engine's busy window)
    - the CPU that competed with the engine, without the start-ups before it."""
    return engine_split(procs, lambda p: in_window(p, start, end))


class Watch(threading.Thread):
    """Samples the child process tree (every process in it: Ray's too): threads, affinity,
    OMP_NUM_THREADS, CPU seconds."""

    def __init__(self, interval: float = 1.0) -> None:
        super().__init__(daemon=True)
        self.interval, self.stop, self.procs = interval, threading.Event(), {}

    def run(self) -> None:
        import psutil

        me = psutil.Process()
        while not self.stop.is_set():
            for p in me.children(recursive=True):
                try:
                    with p.oneshot():
                        name = p.name()
                        cmd = " ".join(p.cmdline())[:160]
                        rec = self.procs.setdefault(p.pid, {"pid": p.pid, "name": name, "cmd": cmd, "threads_max": 0})
                        rec["name"] = name  # setproctitle changes it after start
                        rec["threads_max"] = max(rec["threads_max"], p.num_threads())
                        rec["affinity"] = p.cpu_affinity()
                        t = p.cpu_times()
                        rec["cpu_s"] = round(t.user + t.system, 1)
                        rec.setdefault("series", []).append((round(time.time(), 2), rec["cpu_s"]))
                        if "omp" not in rec:
                            env = p.environ()
                            rec["omp"] = env.get("OMP_NUM_THREADS")
                            rec["vllm_bind"] = env.get("VLLM_CPU_OMP_THREADS_BIND")
                except (psutil.Error, OSError):
                    continue
            self.stop.wait(self.interval)


def run_child(part: str, args) -> dict[str, Any]:
    out = os.path.join(OUT, f"_child_{part}.json")
    cmd = [sys.executable, os.path.abspath(__file__), "--child", part, "--child-out", out] + args.passthrough
    watch = Watch()
    watch.start()
    load_before = os.getloadavg()[0]
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True)
    watch.stop.set()
    watch.join()
    with open(out) as f:
        result = json.load(f)
    os.remove(out)
    window = result.get("window") or (result.get("runs") or [{}])[0].get("window")  # plain: the fresh engine's call
    if window:
        result["window_cpu_s"] = window_cpu(watch.procs.values(), *window)
        for p in watch.procs.values():  # who competed with the engine, process by process
            p["window_cpu_s"] = round(in_window(p, *window), 1)
    result["all_cpu_s"] = engine_split(watch.procs.values(), lambda p: p.get("cpu_s", 0.0))  # every process
    for p in watch.procs.values():
        p.pop("series", None)
    busy = sorted((p for p in watch.procs.values() if p.get("cpu_s", 0) >= 0.5), key=lambda p: -p["cpu_s"])
    result.update(
        part=part,
        child_wall_s=time.perf_counter() - t0,
        load_1min_before=load_before,
        load_1min_after=os.getloadavg()[0],
        processes=busy[:16],
    )
    return result


# --------------------------------------------------------------------------- report


def med(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def ratio(a, b):
    return a / b if a is not None and b else None


def summarise(results: list[dict[str, Any]], args) -> dict[str, Any]:
    by = {k: [r for r in results if r["part"] == k] for k in CHILDREN}
    s: dict[str, Any] = {}
    if by["llm-plain"] and by["llm-pipeline"]:
        # "Started engine": the calls after an engine's first (all calls if there is one).
        plain_runs = [run for r in by["llm-plain"] for run in (r["runs"][1:] or r["runs"])]
        plain_tok_s = med([run["generated_tokens"] / run["seconds"] for run in plain_runs])
        # The first call on a freshly started engine is ~6 s slower on the CPU backend
        # (measured on both paths); the pipeline's single pass is such a first call.
        plain_fresh = med([r["runs"][0]["generated_tokens"] / r["runs"][0]["seconds"] for r in by["llm-plain"]])
        plain_first = med(
            [
                r["runs"][0]["generated_tokens"] / (r["engine_start_s"] + r["runs"][0]["seconds"])
                for r in by["llm-plain"]
            ]
        )
        pipe = by["llm-pipeline"]
        pipe_tok_s = med([r["generated_tokens"] / r["engine_window_s"] for r in pipe])
        pipe_wall = med([r["generated_tokens"] / r["wall_s"] for r in pipe])
        s["generation"] = {
            "rows": args.rows,
            "max_tokens": args.max_tokens,
            "plain_tokens_per_s": plain_tok_s,
            "pipeline_tokens_per_s": pipe_tok_s,
            "plain_fresh_engine_tokens_per_s": plain_fresh,
            "ratio_fresh_engine": ratio(pipe_tok_s, plain_fresh),
            "ratio_without_start": ratio(pipe_tok_s, plain_tok_s),
            "plain_tokens_per_s_with_start": plain_first,
            "pipeline_tokens_per_s_with_start": pipe_wall,
            "ratio_with_start": ratio(pipe_wall, plain_first),
            "plain_rows_per_s": plain_tok_s / args.max_tokens,
            "pipeline_rows_per_s": pipe_tok_s / args.max_tokens,
            "plain_engine_start_s": med([r["engine_start_s"] for r in by["llm-plain"]]),
            "plain_measurements": len(plain_runs),
            "pipeline_measurements": len(pipe),
        }
    if s.get("generation") and by["llm-shared"]:
        shared = med([r["generated_tokens"] / r["engine_window_s"] for r in by["llm-shared"]])
        s["generation"].update(
            shared_tokens_per_s=shared,
            shared_ratio_fresh_engine=ratio(shared, s["generation"]["plain_fresh_engine_tokens_per_s"]),
            shared_measurements=len(by["llm-shared"]),
        )
    if s.get("generation"):
        # Where each path's CPU went (medians over its measurements), every process of it: in
        # all, start-ups included, and inside the engine's busy window (what competed with it).
        for name, key in (("cpu_s", "all_cpu_s"), ("cpu_s_in_window", "window_cpu_s")):
            s["generation"][name] = {
                part: {k: med([r[key][k] for r in by[part] if key in r]) for k in ("engine_cpu_s", "other_cpu_s")}
                for part in ("llm-plain", "llm-pipeline", "llm-shared")
                if by[part]
            }
    if by["embed-plain"] and by["embed-pipeline"]:
        texts = 3 * args.embed_rows
        plain = med([texts / t for r in by["embed-plain"] for t in r["runs_s"]])
        plain_start = med([texts / (r["load_s"] + r["runs_s"][0]) for r in by["embed-plain"]])
        runs = [run for r in by["embed-pipeline"] for run in r["runs"]]
        pipe_steady = med([3 * run["steady_rows_per_s"] for run in runs if run["steady_rows_per_s"]])
        pipe_wall = med([texts / run["wall_s"] for run in runs])
        s["embedding"] = {
            "rows": args.embed_rows,
            "texts": texts,
            "plain_texts_per_s": plain,
            "pipeline_texts_per_s_steady": pipe_steady,
            "ratio_steady": ratio(pipe_steady, plain),
            "plain_texts_per_s_with_load": plain_start,
            "pipeline_texts_per_s_with_start": pipe_wall,
            "ratio_with_start": ratio(pipe_wall, plain_start),
            "plain_torch_threads": by["embed-plain"][0]["torch_threads"],
            "pipeline_actor_threads": by["embed-pipeline"][0].get("actor_threads"),
        }
    return s


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--part", default="all", choices=["all", "llm", "embed"])
    ap.add_argument("--rows", type=int, default=64, help="generation prompts")
    ap.add_argument("--max-tokens", type=int, default=64, help="tokens per answer (ignore_eos: exactly this many)")
    ap.add_argument("--plain-repeats", type=int, default=3, help="plain chat() calls on one engine")
    ap.add_argument("--llm-rounds", type=int, default=2, help="alternating plain/pipeline rounds")
    ap.add_argument("--shared", action="store_true", help="also the stage against a shared engine (Ray Serve)")
    ap.add_argument("--plain-executor", default="", help="distributed_executor_backend for the plain engine")
    ap.add_argument("--embed-rows", type=int, default=1500, help="rows for the quality stage (3 texts each)")
    ap.add_argument("--embed-repeats", type=int, default=3)
    ap.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="config override for both paths, e.g. generation.engine.memory_utilization=0.1",
    )
    ap.add_argument("--bind", default="", help="VLLM_CPU_OMP_THREADS_BIND for both paths (default: vLLM's auto)")
    ap.add_argument("--child", default="", help=argparse.SUPPRESS)
    ap.add_argument("--child-out", default="", help=argparse.SUPPRESS)
    ap.add_argument("--summarise", metavar="JSON", help="recompute the summary of an earlier throughput.json and exit")
    args = ap.parse_args()
    if args.summarise:
        with open(args.summarise) as f:
            doc = json.load(f)
        doc["summary"] = summarise(doc["results"], argparse.Namespace(**doc["args"]))
        with open(args.summarise, "w") as f:
            json.dump(doc, f, indent=1, default=str)
        print(json.dumps(doc["summary"], indent=1))
        return

    OVERRIDES[:] = args.set
    if args.bind:
        os.environ["VLLM_CPU_OMP_THREADS_BIND"] = args.bind  # inherited by the local Ray and its actors
    if args.child:
        result = CHILDREN[args.child](args)
        with open(args.child_out, "w") as f:
            json.dump(result, f)
        return

    os.makedirs(OUT, exist_ok=True)
    args.passthrough = (
        [
            "--rows",
            str(args.rows),
            "--max-tokens",
            str(args.max_tokens),
            "--plain-repeats",
            str(args.plain_repeats),
            "--embed-rows",
            str(args.embed_rows),
            "--embed-repeats",
            str(args.embed_repeats),
        ]
        + (["--plain-executor", args.plain_executor] if args.plain_executor else [])
        + [a for kv in args.set for a in ("--set", kv)]
        + (["--bind", args.bind] if args.bind else [])
    )
    plan: list[str] = []
    if args.part in ("all", "embed"):
        plan += ["embed-plain", "embed-pipeline"]
    if args.part in ("all", "llm"):
        for i in range(args.llm_rounds):  # alternate which path goes first
            paths = ["llm-plain", "llm-pipeline"] + (["llm-shared"] if args.shared else [])
            plan += paths if i % 2 == 0 else paths[::-1]
    results = []
    t0 = time.perf_counter()
    for part in plan:
        print(f"[bench] {part} (load {os.getloadavg()[0]:.2f})", file=sys.stderr, flush=True)
        results.append(run_child(part, args))
        with open(os.path.join(OUT, "throughput_partial.json"), "w") as f:
            json.dump(results, f, indent=1, default=str)
    summary = summarise(results, args)
    doc = {
        "machine": {"cpus": os.cpu_count(), "cpu": cpu_name(), "python": platform.python_version()},
        "args": {k: v for k, v in vars(args).items() if k not in ("child", "child_out", "passthrough")},
        "total_s": time.perf_counter() - t0,
        "summary": summary,
        "results": results,
    }
    path = os.path.join(OUT, "throughput.json")
    with open(path, "w") as f:
        json.dump(doc, f, indent=1, default=str)
    print(json.dumps(summary, indent=1))
    print(f"written {path}")


if __name__ == "__main__":
    main()
