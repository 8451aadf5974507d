"""``popi launch``: train, evaluate, summarize and serve on rented GPUs with SkyPilot.

Each command builds its task from the shipped YAML (``sky.yaml``, ``jobs/*.yaml``) with the options
applied; ``--dry-run`` prints that task and touches no network. See docs/launch.md.
"""

from __future__ import annotations

import os
import shlex
from pathlib import Path
from typing import Any, Optional

import typer

app = typer.Typer(
    help="Run training, evaluation, batch summarization or serving on cloud GPUs (SkyPilot).",
    no_args_is_help=True,
)

_CLOUD = typer.Option("aws", "--cloud", help="SkyPilot infra: aws, aws/us-east-1, gcp, k8s, ...")
_SPOT = typer.Option(False, "--spot", help="Spot instances as a managed job: recovered when preempted.")
_BUCKET = typer.Option(
    None, "--bucket", help="Bucket for runs and results (env POPI_BUCKET; default popi-runs-<you>-<hash>)."
)
_ENV = typer.Option(None, "--env", help="Override a task variable: --env SYNTH_USERS=500 (repeatable).")
_CLUSTER = typer.Option(None, "--cluster", help="Cluster or managed-job name (default popi-<task>-<run>).")
_DRY_RUN = typer.Option(False, "--dry-run", help="Print the resolved task YAML; launch nothing.")


def _bucket(bucket: Optional[str]) -> str:
    from popi_sdk.launch import default_bucket

    return bucket or os.environ.get("POPI_BUCKET") or default_bucket()


def _envs(bucket: Optional[str], env: Optional[list[str]], **values: Any) -> dict[str, str]:
    """The task variables a command sets: ``POPI_BUCKET``, then each value given (``None`` keeps
    the task file's own), then the ``--env KEY=VALUE`` overrides, which win."""
    from popi_sdk import launch as L

    envs = {"POPI_BUCKET": _bucket(bucket)}
    envs.update({key: str(value) for key, value in values.items() if value is not None})
    envs.update(L.parse_env(env))
    return envs


def _finish(kind: str, task: dict[str, Any], *, dry_run: bool, spot: bool, cluster: Optional[str],
            down: bool) -> None:
    from popi_sdk import launch as L

    if dry_run:
        typer.echo(L.to_yaml(task), nl=False)
        try:
            L.validate(task)
            typer.echo("# Checked offline with sky.Task.from_yaml_config.", err=True)
        except ImportError:
            typer.echo(f"# Not checked: SkyPilot is not installed ({L.SKY_INSTALL}).", err=True)
        secrets = ", ".join(task.get("secrets") or {}) or "none"
        typer.echo(f"# Secrets taken from your shell at launch: {secrets}.", err=True)
        typer.echo(f"# Results would land in {L.results_location(kind, task)}", err=True)
        return
    L.import_sky()  # before announcing anything: without SkyPilot, say how to install it
    nodes = task.get("num_nodes", 1)
    gpus = (task.get("resources") or {}).get("accelerators")
    how = "a managed spot job" if spot else "an on-demand cluster"
    typer.echo(f"Launching popi {kind} on {L._cloud_of(task)}: {nodes} node(s) x {gpus}, as {how}.")
    done = L.launch(kind, task, managed=spot, cluster=cluster, down=down)
    for note in done.notes:
        typer.echo(f"Note: {note}")
    typer.echo(f"Submitted {done.name} (job {done.job_id}). Follow it with: {done.follow}")
    typer.echo(f"Results land in {done.results}")


@app.command()
def train(
    cloud: str = _CLOUD,
    gpus: Optional[str] = typer.Option(None, "--gpus", help="GPUs per node (default H100:8)."),
    nodes: int = typer.Option(1, "--nodes", min=1, help="Nodes; accelerate spans all their GPUs."),
    spot: bool = _SPOT,
    config: Optional[Path] = typer.Option(None, "--config", help="Training config file (uploaded)."),
    preset: str = typer.Option("paper", "--preset", help="Shipped preset when no --config: paper."),
    data: Optional[str] = typer.Option(
        None, "--data", help="synth:KIND, a local folder with train.jsonl, or a bucket URI (default synth:review)."
    ),
    model: Optional[str] = typer.Option(None, "--model", help="Base model (default Llama-3.2-3B-Instruct)."),
    beta: Optional[float] = typer.Option(None, "--beta", help="β of the summary-augmented loss (default 0.01)."),
    max_steps: Optional[int] = typer.Option(None, "--max-steps", min=1, help="Cap each stage's steps."),
    set_: Optional[list[str]] = typer.Option(None, "--set", help="Config override for both stages (repeatable)."),
    bucket: Optional[str] = _BUCKET,
    run_name: Optional[str] = typer.Option(None, "--run-name", help="Run folder in the bucket (default PRESET-DATE)."),
    env: Optional[list[str]] = _ENV,
    cluster: Optional[str] = _CLUSTER,
    down: bool = typer.Option(True, "--down/--keep", help="Tear the cluster down when training ends."),
    dry_run: bool = _DRY_RUN,
) -> None:
    """Train both POPI stages: stage 1 then stage 2 over every GPU of every node.

    Checkpoints go to the bucket; relaunching with the same --run-name resumes from them.
    """
    from popi_sdk import launch as L

    uploads: dict[str, str] = {}
    popi_config = preset
    if config is not None:
        popi_config, more = L.upload(str(config), f"{L.UPLOAD_DIR}/config.yaml")
        uploads.update(more)
    data_value = None
    if data is not None:
        data_value, more = L.upload(data, f"{L.UPLOAD_DIR}/data")
        uploads.update(more)
    envs = _envs(
        bucket, env,
        RUN_NAME=run_name or L.default_run_name(config.stem if config else preset),
        POPI_CONFIG=popi_config, DATA=data_value, MODEL=model, BETA=beta, MAX_STEPS=max_steps,
        TRAIN_ARGS=" ".join(f"--set {shlex.quote(item)}" for item in set_) if set_ else None,
    )
    task = L.build_task("train", cloud=cloud, gpus=gpus, nodes=nodes, spot=spot, envs=envs,
                        uploads=uploads)
    checked = L.train_config(task, config)  # before anything is rented: bad values fail here
    if dry_run and checked is None:
        typer.echo(f"# The config file {task['envs']['POPI_CONFIG']} is on the node; it is checked "
                   "there.", err=True)
    elif dry_run:
        typer.echo("# Training config resolved and checked here, as the node will build it.", err=True)
    _finish("train", task, dry_run=dry_run, spot=spot, cluster=cluster, down=down)


@app.command("eval")
def eval_(
    run: str = typer.Option(..., "--run", help="Run name in the bucket (its stage1/ and stage2/)."),
    data: Optional[str] = typer.Option(
        None, "--data", help="synth:KIND (its test users), a local JSONL file, or a bucket URI."
    ),
    methods: Optional[str] = typer.Option(None, "--methods", help="Methods (default base,raw,inference,popi,popi-full)."),
    judge: Optional[str] = typer.Option(None, "--judge", help="oracle or a judge backend (default oracle)."),
    base: Optional[str] = typer.Option(
        None, "--base", help="Base model backend (default hf:meta-llama/Llama-3.2-3B-Instruct)."
    ),
    cloud: str = _CLOUD,
    gpus: Optional[str] = typer.Option(None, "--gpus", help="GPUs (default: the cheapest of L4/A10G/L40S/A100/H100:1)."),
    spot: bool = _SPOT,
    bucket: Optional[str] = _BUCKET,
    env: Optional[list[str]] = _ENV,
    cluster: Optional[str] = _CLUSTER,
    dry_run: bool = _DRY_RUN,
) -> None:
    """Evaluate a trained run on held-out users; results.md lands next to the run in the bucket."""
    from popi_sdk import launch as L

    uploads: dict[str, str] = {}
    data_value = None
    if data is not None:
        name = Path(data).name if "://" not in data and not data.startswith("synth:") else "test.jsonl"
        data_value, uploads = L.upload(data, f"{L.UPLOAD_DIR}/{name}")
    envs = _envs(bucket, env, RUN_NAME=run, DATA=data_value, METHODS=methods, JUDGE=judge,
                 BASE_MODEL=base)
    task = L.build_task("eval", cloud=cloud, gpus=gpus, spot=spot, envs=envs, uploads=uploads)
    _finish("eval", task, dry_run=dry_run, spot=spot, cluster=cluster, down=True)


@app.command()
def summarize(
    users: str = typer.Argument(..., help="Users file: local JSONL (uploaded), bucket URI, or /popi-runs/ path."),
    run: Optional[str] = typer.Option(None, "--run", help="Use this run's stage1/ as the summarizer."),
    summarizer: Optional[str] = typer.Option(None, "--summarizer", help="Or a hub id / checkpoint path."),
    out: Optional[str] = typer.Option(None, "--out", help="Output name in the bucket (default summaries/<users>.jsonl)."),
    cloud: str = _CLOUD,
    gpus: Optional[str] = typer.Option(None, "--gpus", help="GPUs; vLLM runs one replica per GPU."),
    spot: bool = _SPOT,
    bucket: Optional[str] = _BUCKET,
    env: Optional[list[str]] = _ENV,
    cluster: Optional[str] = _CLUSTER,
    dry_run: bool = _DRY_RUN,
) -> None:
    """Summarize every user of USERS through a vLLM server started in the same task."""
    from popi_sdk import launch as L
    from popi_sdk.errors import ConfigError

    if (run is None) == (summarizer is None):
        raise ConfigError("give the summarizer: --run NAME (its stage1/) or --summarizer MODEL, one of them")
    stem = Path(users.rstrip("/")).name.removesuffix(".jsonl") or "users"
    value, uploads = L.upload(users, f"{L.UPLOAD_DIR}/{stem}.jsonl")
    envs = _envs(
        bucket, env, USERS=value, RUN_NAME=run, SUMMARIZER=summarizer,
        OUT="/popi-runs/" + (out or f"summaries/{stem}.summaries.jsonl").lstrip("/"),
    )
    task = L.build_task("summarize", cloud=cloud, gpus=gpus, spot=spot, envs=envs, uploads=uploads)
    _finish("summarize", task, dry_run=dry_run, spot=spot, cluster=cluster, down=True)


@app.command()
def serve(
    run: Optional[str] = typer.Option(None, "--run", help="Serve this run's stage1/ and stage2/."),
    summarizer: Optional[str] = typer.Option(None, "--summarizer", help="Summarizer hub id or path instead."),
    generator: Optional[str] = typer.Option(None, "--generator", help="Generator hub id or path instead."),
    cloud: str = _CLOUD,
    gpus: Optional[str] = typer.Option(None, "--gpus", help="GPUs (two or more: one per server)."),
    bucket: Optional[str] = _BUCKET,
    env: Optional[list[str]] = _ENV,
    cluster: Optional[str] = _CLUSTER,
    replicas: Optional[int] = typer.Option(
        None, "--replicas", min=1,
        help="Run as a SkyPilot Serve service with at least N replicas (needs POPI_STORE=postgresql://...)."),
    max_replicas: Optional[int] = typer.Option(
        None, "--max-replicas", min=1, help="With --replicas: scale up to M replicas on request rate."),
    qps_per_replica: Optional[float] = typer.Option(
        None, "--qps-per-replica", help="With --replicas: requests/s per replica above which to scale up (default 4)."),
    workers: Optional[int] = typer.Option(
        None, "--workers", min=1, help="With --replicas: popi serve worker processes per replica (default 2)."),
    dry_run: bool = _DRY_RUN,
) -> None:
    """Serve the summarizer (port 8001) and generator (port 8000) with vllm serve, and popi serve
    (the personalization proxy, port 8080) in front of the generator.

    All three are OpenAI-compatible; the cluster stays up until you `sky down` it. With --replicas,
    the same stack runs as a SkyPilot Serve service: replicas behind one endpoint, scaled on the
    request rate, sharing the PostgreSQL store in POPI_STORE; it stays up until `sky serve down`.
    """
    from popi_sdk import launch as L
    from popi_sdk.errors import ConfigError

    if run is None and (summarizer is None or generator is None):
        raise ConfigError("give --run NAME, or both --summarizer and --generator")
    if replicas is None and (max_replicas, qps_per_replica, workers) != (None, None, None):
        raise ConfigError("--max-replicas, --qps-per-replica and --workers size a service: add --replicas N")
    kind = "serve" if replicas is None else "service"
    values = {"PROXY_WORKERS": workers} if workers is not None else {}
    envs = _envs(bucket, env, RUN_NAME=run, SUMMARIZER=summarizer, GENERATOR=generator, **values)
    task = L.build_task(kind, cloud=cloud, gpus=gpus, envs=envs)
    if replicas is not None:
        L.set_replicas(task, replicas, max_replicas=max_replicas, qps_per_replica=qps_per_replica)
        if dry_run:
            typer.echo("# A service: launched with sky.serve.up; set POPI_STORE=postgresql://... in your "
                       "shell first, every replica shares that store.", err=True)
    _finish(kind, task, dry_run=dry_run, spot=False, cluster=cluster, down=False)
