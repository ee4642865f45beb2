"""``synth-empathy submit``: send a job in ``jobs/`` to a Ray cluster and follow it
(what it does and its exit codes: :mod:`synth_empathy.cluster.submit`)."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from synth_empathy.cli.common import Parser, exits_on_bad_input, positive
from synth_empathy.cluster import submit as cs
from synth_empathy.cluster.image import check_cluster_file, check_cluster_ray


def _parser() -> argparse.ArgumentParser:
    p = Parser(  # a bad flag is one error: line and exit 2, as in every command
        prog="synth-empathy submit",
        description="Submit a job in jobs/ to a Ray cluster and follow its logs.",
        epilog="Everything after -- goes to the job, e.g. -- --preset paper seeds.limit=100",
    )
    p.add_argument(
        "--address",
        default=os.environ.get("RAY_ADDRESS", ""),
        help="the cluster's dashboard, e.g. http://head:8265 (default: $RAY_ADDRESS)",
    )
    p.add_argument("--job", choices=sorted(cs.JOBS), default="run", help="which jobs/ entry point (default: run)")
    p.add_argument("--working-dir", default=".", help="shipped as the job's working directory (default: .)")
    p.add_argument("--no-follow", action="store_true", help="submit and return without waiting")
    p.add_argument(
        "--timeout",
        type=positive,
        default=None,
        help="stop the job after this many seconds (> 0); needs following, so not with --no-follow",
    )
    p.add_argument(
        "--pip",
        action="store_true",
        help="install pyproject.toml's dependencies and gpu,models extras in the job's runtime env "
        "(clusters that keep their own image instead of cluster/Dockerfile's)",
    )
    p.add_argument(
        "--cluster-file",
        default=None,
        help="the cluster's definition (cluster/aws-gpu.yaml, a RayCluster or RayJob manifest): its "
        "images and versions must be the package's, and the resource check also counts the nodes its "
        "autoscaler can add",
    )
    p.add_argument(
        "--skip-resource-check",
        action="store_true",
        help="do not compare the run's GPU needs with the cluster's nodes before submitting",
    )
    p.add_argument("job_args", nargs=argparse.REMAINDER, help="arguments of the job (after --)")
    return p


def _precheck_run(address: str, job_args: list[str], cluster_file: str | None = None) -> None:
    """For ``--job run``: load the config here (bad keys fail before submitting) and
    check its GPU needs against the cluster's nodes, and the node types of
    ``cluster_file`` (which the autoscaler can add). Only what the config asks for is
    checked here: paths such as a model folder on the cluster's volume are the job's to
    check, on the cluster."""
    from synth_empathy.config import load_config

    preset, overrides, it = "default", [], iter(job_args)
    for a in it:
        if a == "--preset":
            preset = next(it, "default")
        elif a.startswith("--preset="):
            preset = a.split("=", 1)[1]
        elif not a.startswith("-"):
            overrides.append(a)
    cfg = load_config(preset, overrides)
    node_types = cs.cluster_file_node_types(cluster_file) if cluster_file else None
    try:
        nodes = cs.node_resources(address)
    except Exception as e:  # the job checks again inside the cluster (pipeline.run)
        print(
            f"[submit] could not list the cluster's nodes ({type(e).__name__}); skipping the resource check here",
            file=sys.stderr,
        )
        return
    totals: dict[str, float] = {}
    for n in nodes:
        for k, v in n.items():
            totals[k] = totals.get(k, 0.0) + float(v)
    try:
        cs.check_resources(cfg, totals, nodes, node_types=node_types)
    except cs.ClusterError as e:
        if node_types is not None:
            raise
        # Only the nodes that are up were seen; the autoscaler may add what is missing.
        raise cs.ClusterError(
            f"{e}; if the cluster's autoscaler can add such nodes, pass --cluster-file with its definition "
            "(or --skip-resource-check: the job checks the autoscaler's node types itself)"
        ) from None


@exits_on_bad_input
def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(list(sys.argv[1:] if argv is None else argv))
    job_args = list(args.job_args)
    if job_args[:1] == ["--"]:
        job_args = job_args[1:]
    if args.timeout is not None and args.no_follow:
        # The timeout is enforced by this process, which --no-follow ends at once.
        raise cs.ClusterError(
            "--timeout needs the job followed (it is stopped from here); drop --no-follow, "
            "or stop it later with `ray job stop <id>`"
        )
    if not os.path.isdir(args.working_dir):
        raise cs.ClusterError(f"--working-dir {args.working_dir!r} is not a folder; run from the repository root")
    if args.job not in cs.JOBS or not os.path.isfile(os.path.join(args.working_dir, cs.JOBS[args.job])):
        raise cs.ClusterError(
            f"no {cs.JOBS[args.job]} under {args.working_dir!r}"
            + ("" if args.job != "judge" else " (this version has no judge job)")
        )
    # The versions the job's code pins (its pyproject.toml travels with it) against the
    # cluster's definition and the Ray it runs: one line before any job exists.
    pyproject = Path(args.working_dir) / "pyproject.toml"
    pyproject = pyproject if pyproject.is_file() else None
    if args.cluster_file:
        check_cluster_file(args.cluster_file, pyproject)
    cs.connect(args.address)  # fail fast, in one line, on an unreachable address or a missing token
    check_cluster_ray(cs.cluster_ray_version(args.address), pyproject)
    if args.job == "run" and not args.skip_resource_check:
        _precheck_run(args.address, job_args, args.cluster_file)
    status = cs.submit(
        args.address,
        job_args,
        working_dir=args.working_dir,
        follow=not args.no_follow,
        timeout=args.timeout,
        job=args.job,
        pip=args.pip,
        out=sys.stderr,  # stdout holds the job id alone, for scripts
        on_submitted=lambda job_id: print(job_id, flush=True),
    )
    if args.no_follow:
        return cs.EXIT_OK
    if status == cs.LOST:
        return cs.EXIT_LOST
    return cs.EXIT_OK if status == "SUCCEEDED" else cs.EXIT_FAILED
