"""Run popi on rented GPUs with SkyPilot: training (``sky.yaml``), evaluation, batch summarization
through a vLLM server, and serving (``jobs/*.yaml``).

A task file is read as plain YAML, the command-line overrides are applied to that dictionary
(:func:`build_task`), and the result is what ``--dry-run`` prints and what SkyPilot receives
(:func:`launch`). Everything up to the launch works without SkyPilot and without a network; SkyPilot
itself (``pip install "popi-sdk[launch]"``) is imported only to validate and launch.

``popi launch serve --replicas N`` launches ``jobs/service.yaml`` instead, a SkyPilot Serve service
(``sky.serve.up``): replicas behind SkyPilot's load balancer, scaled on the request rate, sharing
the PostgreSQL store in ``POPI_STORE`` (:func:`set_replicas`).

Task files ship inside the package as ``popi_sdk/launch_tasks/*.yaml``, symbolic links to the
repository's ``sky.yaml`` and ``jobs/`` (a wheel build stores the files themselves), so a checkout and
an installed wheel read the same tasks. From a checkout the repository is the task's workdir and
setup installs it (``pip install -e``); from a wheel there is no workdir and setup installs
``popi-sdk`` of the same version from PyPI.
"""

from __future__ import annotations

import copy
import getpass
import hashlib
import os
import re
import secrets as _secrets
import shlex
import socket
from dataclasses import dataclass, field
from datetime import datetime, timezone
from importlib.resources import files
from pathlib import Path
from typing import Any

import yaml

from popi_sdk.errors import CloudSetupError, ConfigError, LaunchError, MissingDependencyError

SKY_INSTALL = 'pip install "popi-sdk[launch]"'
TASK_FILES = {
    "train": "sky.yaml",
    "eval": "eval.yaml",
    "summarize": "summarize.yaml",
    "serve": "serve.yaml",
    "service": "service.yaml",
}
# Local files a task needs (a config, a data folder, a users table) are copied to these places.
UPLOAD_DIR = "/tmp/popi-launch"
_STORES = {"aws": ("S3", "s3://"), "gcp": ("GCS", "gs://")}
_GPUS = re.compile(r"^[A-Za-z][A-Za-z0-9_.-]*(:\d+(\.\d+)?)?$")
_CREDENTIAL_HINTS = {
    "aws": "run `aws configure` (or export AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY)",
    "gcp": "run `gcloud auth login` and `gcloud auth application-default login`",
    "azure": "run `az login`",
    "kubernetes": "point ~/.kube/config at your cluster",
    "lambda": "put your API key in ~/.lambda_cloud/lambda_keys",
    "runpod": "run `runpod config`",
}


@dataclass
class Launched:
    """What :func:`launch` started: a cluster job or a managed job, and where its results go."""

    kind: str
    managed: bool
    name: str
    job_id: int | None
    results: str
    follow: str
    notes: list[str] = field(default_factory=list)


# -- task files ------------------------------------------------------------------------------
def task_path(kind: str) -> Path:
    """The shipped task file of ``kind`` (train, eval, summarize, serve)."""
    if kind not in TASK_FILES:
        raise ConfigError(f"unknown task {kind!r}; known: {', '.join(TASK_FILES)}")
    return Path(str(files("popi_sdk") / "launch_tasks" / TASK_FILES[kind]))


def repo_root() -> Path | None:
    """The popi-sdk checkout this package runs from, or None for an installed wheel."""
    root = Path(__file__).resolve().parent.parent
    project = root / "pyproject.toml"
    if project.is_file() and 'name = "popi-sdk"' in project.read_text(encoding="utf-8"):
        return root
    return None


def load_task(kind: str) -> dict[str, Any]:
    """The task file as a plain dictionary (no SkyPilot needed)."""
    path = task_path(kind)
    task = yaml.safe_load(path.read_text(encoding="utf-8"))
    if not isinstance(task, dict):
        raise ConfigError(f"{path}: a SkyPilot task must be a mapping")
    return task


def default_bucket() -> str:
    """``popi-runs-<user>-<hash>``: bucket names are global, so a bare name would collide."""
    try:
        login = getpass.getuser()
    except (KeyError, OSError):  # a container user with no name
        login = "user"
    user = re.sub(r"[^a-z0-9-]", "", login.lower())[:20] or "user"
    digest = hashlib.sha1(f"{login}@{socket.gethostname()}".encode()).hexdigest()[:8]
    return f"popi-runs-{user}-{digest}"


def default_run_name(prefix: str) -> str:
    stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M")
    return f"{_slug(prefix)}-{stamp}"


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9-]+", "-", text.lower()).strip("-") or "run"


def parse_env(items: list[str] | None) -> dict[str, str]:
    """``["KEY=value", ...]`` -> dict; the error names the bad item."""
    out: dict[str, str] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not re.match(r"^[A-Za-z_][A-Za-z0-9_]*$", key):
            raise ConfigError(f"--env {item!r}: expected KEY=VALUE, e.g. --env SYNTH_USERS=500")
        out[key] = value
    return out


# -- the training config, checked before anything is rented --------------------------------
def train_config(task: dict[str, Any], config_file: str | os.PathLike | None = None) -> Any:
    """The :class:`~popi_sdk.train.config.TrainConfig` the train task's run script will build on
    the node (its ``POPI_CONFIG``, ``MODEL``, ``BETA``, ``MAX_STEPS`` and ``TRAIN_ARGS``), resolved
    and checked here, so a bad value fails now and not on a node already paid for.

    ``config_file`` is the local file uploaded as ``POPI_CONFIG``. Returns None when the config
    file is a path that exists only on the node (it is checked there). Raises
    :class:`ConfigError` naming the bad field.
    """
    from popi_sdk.train.config import load_config

    envs = task.get("envs") or {}
    source = str(envs.get("POPI_CONFIG", "") or "")
    config, preset = None, None
    if config_file is not None and source == f"{UPLOAD_DIR}/config.yaml":
        config = Path(config_file)
    elif "/" in source or source.endswith((".yaml", ".yml")):
        if not Path(source).expanduser().is_file():
            return None
        config = Path(source).expanduser()
    else:
        preset = source
    overrides = [f"{key}={envs[name]}" for name, key in (("MODEL", "model"), ("BETA", "beta"))
                 if envs.get(name)]
    max_steps = _whole(envs.get("MAX_STEPS"), "MAX_STEPS (--max-steps)")
    extra, extra_steps = _train_args(str(envs.get("TRAIN_ARGS", "") or ""))
    try:
        return load_config(
            config, preset=preset, overrides=[*overrides, *extra],
            max_steps=extra_steps if extra_steps is not None else max_steps,
        )
    except ConfigError as e:
        raise ConfigError(
            f"{e}\nThe node would refuse this config, so nothing was launched (--model, --beta "
            "and --set reach it as --set model=..., --set beta=..., --set KEY=VALUE)."
        ) from None


def _whole(raw: Any, what: str) -> int | None:
    if raw is None or str(raw).strip() == "":
        return None
    try:
        value = int(str(raw))
    except ValueError:
        raise ConfigError(f"{what}: expected a whole number of steps, got {raw!r}") from None
    if value < 1:
        raise ConfigError(f"{what}: must be at least 1, got {value}")
    return value


def _train_args(text: str) -> tuple[list[str], int | None]:
    """TRAIN_ARGS as the run script passes it to `popi train`: ``--set`` items and ``--max-steps``."""
    words = shlex.split(text)
    items: list[str] = []
    max_steps = None
    i = 0
    while i < len(words):
        word = words[i]
        name, eq, inline = word.partition("=")
        if name in ("--set", "--max-steps"):
            if eq:
                value = inline
            elif i + 1 < len(words):
                i += 1
                value = words[i]
            else:
                raise ConfigError(f"TRAIN_ARGS: {name} needs a value")
            if name == "--set":
                items.append(value)
            else:
                max_steps = _whole(value, "TRAIN_ARGS --max-steps")
        else:
            raise ConfigError(
                f"TRAIN_ARGS: {word!r} is not an option the training run takes here; use "
                "--set KEY=VALUE (repeatable) or --max-steps N"
            )
        i += 1
    return items, max_steps


# -- overrides -------------------------------------------------------------------------------
def build_task(
    kind: str,
    *,
    cloud: str | None = None,
    gpus: str | None = None,
    nodes: int | None = None,
    spot: bool = False,
    envs: dict[str, str] | None = None,
    uploads: dict[str, str] | None = None,
    name: str | None = None,
    workdir: str | None | bool = True,
) -> dict[str, Any]:
    """The task of ``kind`` with overrides applied, as the dictionary SkyPilot will receive.

    ``cloud`` is a SkyPilot infra string (``aws``, ``aws/us-east-1``, ``gcp``, ``k8s``); ``gpus``
    an accelerator spec like ``H100:8``; ``envs`` replace task environment variables (unknown names
    are refused: a typo must not pass silently); ``uploads`` maps node paths to local files or
    bucket URIs to copy there. ``workdir=True`` means the checkout when there is one.
    """
    task = load_task(kind)
    resources = task.setdefault("resources", {})
    if cloud:
        resources.pop("cloud", None)
        resources["infra"] = cloud
    if gpus:
        if not _GPUS.match(gpus):
            raise ConfigError(f"--gpus {gpus!r}: expected NAME or NAME:COUNT, e.g. H100:8 or L4:1")
        resources["accelerators"] = gpus
    if nodes is not None:
        if nodes < 1:
            raise ConfigError(f"--nodes {nodes}: must be at least 1")
        task["num_nodes"] = nodes
        if nodes > 1 and _cloud_of(task) == "aws":
            # EFA between nodes (p4d/p5): NCCL over plain TCP makes ZeRO-3 all-gathers the bottleneck.
            resources["network_tier"] = "best"
    if spot:
        resources["use_spot"] = True
        # A preempted job comes back on new machines and resumes from the bucket's checkpoints;
        # one retry on a user-code failure covers a transient NCCL or download error.
        resources["job_recovery"] = {"strategy": "FAILOVER", "max_restarts_on_errors": 1}
    if name:
        task["name"] = name

    declared = task.setdefault("envs", {})
    for key, value in (envs or {}).items():
        if key not in declared:
            raise ConfigError(
                f"--env {key}: the {kind} task has no such variable; known: {', '.join(declared)}"
            )
        declared[key] = str(value)

    for dest, source in (uploads or {}).items():
        task.setdefault("file_mounts", {})[dest] = source

    store = _STORES.get(_cloud_of(task))
    for mount in (task.get("file_mounts") or {}).values():
        if isinstance(mount, dict) and store and "store" not in mount and "source" not in mount:
            mount["store"] = store[0]

    if workdir is True:
        root = repo_root()
        if root is None:
            task.pop("workdir", None)
            _pin_wheel_version(task)
        else:
            task["workdir"] = str(root)
    elif workdir is None or workdir is False:
        task.pop("workdir", None)
        _pin_wheel_version(task)
    else:
        task["workdir"] = str(workdir)
    return task


def set_replicas(task: dict[str, Any], replicas: int, *, max_replicas: int | None = None,
                 qps_per_replica: float | None = None) -> dict[str, Any]:
    """Size a service task: at least ``replicas``, up to ``max_replicas`` (default: the larger of
    ``replicas`` and the file's) while each replica gets more than ``qps_per_replica`` requests per
    second. When the two counts are equal the service keeps that many and does not autoscale."""
    service = task.get("service")
    if not isinstance(service, dict):
        raise ConfigError("this task has no service: section; --replicas applies to `popi launch serve`")
    policy = service.setdefault("replica_policy", {})
    if replicas < 1:
        raise ConfigError(f"--replicas {replicas}: must be at least 1")
    top = max_replicas if max_replicas is not None else max(replicas, int(policy.get("max_replicas", 0)))
    if top < replicas:
        raise ConfigError(f"--max-replicas {top} is below --replicas {replicas}; give at least {replicas}")
    if qps_per_replica is not None and qps_per_replica <= 0:
        raise ConfigError(f"--qps-per-replica {qps_per_replica}: must be above 0")
    policy["min_replicas"] = replicas
    if top == replicas:  # a fixed count: SkyPilot refuses autoscaling fields without a range
        for key in ("max_replicas", "target_qps_per_replica", "upscale_delay_seconds",
                    "downscale_delay_seconds"):
            policy.pop(key, None)
    else:
        policy["max_replicas"] = top
        if qps_per_replica is not None:
            policy["target_qps_per_replica"] = qps_per_replica
    return task


def _pin_wheel_version(task: dict[str, Any]) -> None:
    """Without a checkout, setup installs this very version of popi-sdk from PyPI."""
    from importlib.metadata import PackageNotFoundError, version

    envs = task.get("envs") or {}
    spec = envs.get("POPI_PIP_SPEC")
    if not spec or "==" in spec:
        return
    try:
        envs["POPI_PIP_SPEC"] = f"{spec}=={version('popi-sdk')}"
    except PackageNotFoundError:
        pass


def _cloud_of(task: dict[str, Any]) -> str:
    resources = task.get("resources") or {}
    infra = str(resources.get("infra") or resources.get("cloud") or "")
    cloud = infra.split("/")[0].lower()
    return "kubernetes" if cloud == "k8s" else cloud


def upload(value: str, dest: str) -> tuple[str, dict[str, str]]:
    """Where the node finds ``value`` and what to copy there.

    ``synth:KIND`` passes through (generated on the node); a bucket URI (``s3://...``) or an
    existing local file or folder is copied to ``dest``; a path under the runs bucket mount
    (``/popi-runs/...``) is already there.
    """
    if value.startswith("synth:"):
        return value, {}
    if "://" in value:
        return dest, {dest: value}
    if value.startswith("/popi-runs/"):
        return value, {}
    local = Path(value).expanduser()
    if not local.exists():
        raise ConfigError(
            f"{value}: no such local file or folder. Give a local path (it is uploaded), a bucket "
            "URI such as s3://bucket/path, a path under /popi-runs/ (the runs bucket), or synth:KIND"
        )
    return dest, {dest: str(local.resolve())}


# -- output ----------------------------------------------------------------------------------
def to_yaml(task: dict[str, Any]) -> str:
    """The task as YAML, in the file's own key order; secret values never appear (only names)."""
    shown = copy.deepcopy(task)
    if isinstance(shown.get("secrets"), dict):
        shown["secrets"] = {key: None for key in shown["secrets"]}
    return yaml.dump(shown, Dumper=_BlockDumper, sort_keys=False, default_flow_style=False, width=100)


class _BlockDumper(yaml.SafeDumper):
    """Multi-line strings (setup, run) as ``|`` blocks, readable the way the task file writes them."""


def _str_block(dumper: yaml.SafeDumper, value: str) -> yaml.Node:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_BlockDumper.add_representer(str, _str_block)


def bucket_url(task: dict[str, Any], path: str = "") -> str:
    """Where a path under the runs mount lands: ``s3://BUCKET/path`` on AWS, ``gs://`` on GCP."""
    envs = task.get("envs") or {}
    bucket = envs.get("POPI_BUCKET", "")
    store = _STORES.get(_cloud_of(task))
    prefix = store[1] if store else ""
    url = f"{prefix}{bucket}/{path.strip('/')}".rstrip("/") + "/"
    return url if store else f"bucket {url}"


def results_location(kind: str, task: dict[str, Any]) -> str:
    envs = task.get("envs") or {}
    run = envs.get("RUN_NAME", "")
    if kind == "train":
        return bucket_url(task, run) + " (stage1/, stage2/, metrics.jsonl, rewards.png)"
    if kind == "eval":
        return bucket_url(task, f"{run}/eval") + " (results.md, results.json)"
    if kind == "summarize":
        out = envs.get("OUT", "")
        runs = envs.get("RUNS_DIR", "/popi-runs").rstrip("/") + "/"
        if out.startswith(runs):
            return bucket_url(task, out[len(runs):]).rstrip("/")
        return f"{out} on the node"
    if kind == "service":
        return "the endpoint printed by `sky serve status --endpoint` for the service"
    return "the endpoints printed by `sky status --endpoints` for the cluster"


# -- SkyPilot --------------------------------------------------------------------------------
def import_sky() -> Any:
    """SkyPilot, or an error that gives the install command."""
    try:
        import sky
    except ImportError as e:
        raise MissingDependencyError("SkyPilot", SKY_INSTALL) from e
    return sky


def validate(task: dict[str, Any]) -> Any:
    """Parse ``task`` with ``sky.Task.from_yaml_config``: offline schema and field checks (no cloud
    is contacted). Returns the ``sky.Task``; raises :class:`ConfigError` naming the problem."""
    sky = import_sky()
    try:
        return sky.Task.from_yaml_config(copy.deepcopy(task))
    except Exception as e:  # SkyPilot raises ValueError, jsonschema or its own spec errors
        raise ConfigError(f"SkyPilot rejects the task: {e}") from e


def resolve_secrets(task: dict[str, Any], environ: dict[str, str] | None = None) -> tuple[
    list[tuple[str, str]], list[str]
]:
    """Values for the task's secrets from the local environment (never from a file).

    Returns ``(overrides, notes)``. A missing ``VLLM_API_KEY`` is generated (and shown once in the
    notes, since clients need it); any other missing secret is dropped from the task with a note.
    """
    environ = dict(os.environ if environ is None else environ)
    overrides: list[tuple[str, str]] = []
    notes: list[str] = []
    for key in list((task.get("secrets") or {}).keys()):
        value = environ.get(key) or (task["secrets"][key] if task["secrets"][key] else None)
        if value is None and key == "HF_TOKEN":
            value = _saved_hf_token(environ)
        if value is None and key == "VLLM_API_KEY":
            value = _secrets.token_urlsafe(24)
            notes.append(f"API key for the servers (set OPENAI_API_KEY to it): {value}")
        if value is None:
            del task["secrets"][key]
            notes.append(f"{key} is not set in your shell, so the task runs without it"
                         + (" (gated models such as Llama-3.2 need it)" if key == "HF_TOKEN" else ""))
            continue
        overrides.append((key, value))
    if not task.get("secrets"):
        task.pop("secrets", None)
    return overrides, notes


def _saved_hf_token(environ: dict[str, str]) -> str | None:
    """The token `hf auth login` saved ($HF_HOME/token, default ~/.cache/huggingface/token)."""
    home = environ.get("HF_HOME") or os.path.join(os.path.expanduser("~"), ".cache", "huggingface")
    path = Path(home) / "token"
    token = path.read_text(encoding="utf-8").strip() if path.is_file() else ""
    return token or None


def check_cloud(sky: Any, cloud: str) -> None:
    """Fail early, with the fix, when SkyPilot has no usable credentials for ``cloud``."""
    from sky.client import sdk

    try:
        enabled = [str(c).lower() for c in sky.get(sdk.enabled_clouds())]
    except Exception as e:
        raise CloudSetupError(
            f"SkyPilot could not list the enabled clouds ({e}). Run `sky check` to see why; "
            "`sky api start` starts the local SkyPilot server if it is down."
        ) from e
    hint = _CREDENTIAL_HINTS.get(cloud, f"set up {cloud} credentials")
    if not enabled:
        raise CloudSetupError(
            f"no cloud is enabled in SkyPilot. To use {cloud}: {hint}, then run `sky check {cloud}`."
        )
    if cloud and not any(c == cloud or c.startswith(cloud + "/") for c in enabled):
        raise CloudSetupError(
            f"{cloud} is not enabled in SkyPilot (enabled: {', '.join(enabled)}): its credentials "
            f"are missing or rejected. Fix: {hint}, then run `sky check {cloud}`."
        )


def launch(
    kind: str,
    task: dict[str, Any],
    *,
    managed: bool = False,
    cluster: str | None = None,
    down: bool = True,
    environ: dict[str, str] | None = None,
) -> Launched:
    """Launch ``task`` on a cluster (``sky.launch``) or as a managed job (``sky.jobs.launch``, which
    recovers a preempted spot job on new machines; the task's stages resume from the bucket)."""
    sky = import_sky()
    from sky import exceptions as sky_errors

    task = copy.deepcopy(task)
    overrides, notes = resolve_secrets(task, environ)
    if "service" in task and not any(
        k == "POPI_STORE" and v.startswith(("postgresql://", "postgres://")) for k, v in overrides
    ):
        raise ConfigError(
            "the service's replicas must share one summary store: set POPI_STORE to a "
            "postgresql://USER:PASSWORD@HOST:5432/DB URL that every replica can reach, then launch again"
        )
    cloud = _cloud_of(task)
    check_cloud(sky, cloud)
    # from_yaml_config consumes the dictionary it is given.
    sky_task = sky.Task.from_yaml_config(copy.deepcopy(task), secrets_overrides=overrides or None)
    name = cluster or _slug(f"popi-{kind}-{(task.get('envs') or {}).get('RUN_NAME', '')}")[:60]
    hint = _CREDENTIAL_HINTS.get(cloud, f"set up {cloud} credentials")
    try:
        if "service" in task:
            request = sky.serve.up(sky_task, service_name=name)
        elif managed:
            request = sky.jobs.launch(sky_task, name=name)
        else:
            request = sky.launch(sky_task, cluster_name=name, down=down)
        job_ids, handle = sky.stream_and_get(request)
    except sky_errors.NoCloudAccessError as e:
        raise CloudSetupError(f"no cloud is enabled in SkyPilot: {hint}, then `sky check`.") from e
    except (sky_errors.CloudUserIdentityError, sky_errors.InvalidCloudCredentials) as e:
        raise CloudSetupError(f"{cloud} credentials are missing or rejected ({e}). Fix: {hint}.") from e
    except sky_errors.ResourcesUnavailableError as e:
        raise LaunchError(
            f"no {cloud} capacity for this task ({e}). Try another region (--cloud {cloud}/REGION), "
            "--spot, fewer nodes, or ask the provider for more GPU quota."
        ) from e
    if "service" in task:  # sky.serve.up's result is (service name, endpoint)
        endpoint = handle  # a cluster launch answers (job id, handle)
        if endpoint:
            notes.append(f"service endpoint: http://{endpoint}/v1 (it answers once a replica is ready)")
        return Launched(kind, False, name, None, results_location(kind, task),
                        f"sky serve status {name} --endpoint", notes)
    job_id = job_ids[0] if isinstance(job_ids, list) and job_ids else job_ids
    follow = f"sky jobs logs {job_id}" if managed else f"sky logs {name} {job_id or ''}".rstrip()
    if kind == "serve":
        follow = f"sky status --endpoints {name}"
    return Launched(kind, managed, name, job_id, results_location(kind, task), follow, notes)
