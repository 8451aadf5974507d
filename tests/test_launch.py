"""`popi launch` and the SkyPilot task files, offline.

No cloud is contacted: the task files are parsed with ``sky.Task.from_yaml`` (offline schema and
field checks), their ``setup``/``run`` pass ``bash -n``, each ``run`` executes here with fake
``SKYPILOT_*`` variables and stub ``accelerate``/``popi``/``vllm``/``curl`` executables that log
their argv, and ``sky.launch`` / ``sky.jobs.launch`` are replaced to inspect the task handed over.
Tests that need SkyPilot skip when it is not installed (``pip install "popi-sdk[launch]"``).
``import sky`` writes ``~/.sky``, so HOME points at a temporary folder for this whole module.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from popi_sdk import launch as L
from popi_sdk.cli import app
from popi_sdk.errors import ConfigError, MissingDependencyError

REPO = Path(__file__).resolve().parent.parent
TASKS = {"train": REPO / "sky.yaml",
         **{k: REPO / "jobs" / f"{k}.yaml" for k in ("eval", "summarize", "serve", "service")}}


@pytest.fixture(scope="module", autouse=True)
def temporary_home():
    with tempfile.TemporaryDirectory(prefix="popi-launch-home-") as home, pytest.MonkeyPatch.context() as mp:
        mp.setenv("HOME", home)
        mp.delenv("POPI_BUCKET", raising=False)
        yield Path(home)


def _sky():
    return pytest.importorskip("sky", reason='SkyPilot is optional: pip install "popi-sdk[launch]"')


def _raw(kind: str) -> dict:
    return yaml.safe_load(TASKS[kind].read_text())


# -- the task files --------------------------------------------------------------------------
@pytest.mark.parametrize("kind", list(TASKS))
def test_task_file_parses_with_skypilot(kind):
    sky = _sky()
    task = sky.Task.from_yaml(str(TASKS[kind]))
    assert task.name == f"popi-{kind}"
    assert task.setup and task.run
    for resources in task.resources:  # a set of choices in jobs/: SkyPilot picks the cheapest
        assert str(resources.cloud) == "AWS"
        assert resources.accelerators
    mount = task.storage_mounts["/popi-runs"]
    assert mount.name == task.envs["POPI_BUCKET"] and mount.persistent
    assert mount.mode.value == "MOUNT_CACHED"
    secret_names = {ref.name for ref in task._managed_secret_refs}
    assert "HF_TOKEN" in secret_names and not task.secrets  # references only, no values in the file
    assert {"POPI_BUCKET", "RUNS_DIR", "POPI_PIP_SPEC"} <= set(task.envs)


def test_training_task_fields():
    sky = _sky()
    task = sky.Task.from_yaml(str(TASKS["train"]))
    (resources,) = task.resources
    assert resources.accelerators == {"H100": 8}
    assert task.num_nodes == 1
    assert {"MODEL", "BETA", "DATA", "POPI_CONFIG", "RUN_NAME", "ACCELERATE_CONFIG"} <= set(task.envs)
    assert task.envs["MODEL"] == "meta-llama/Llama-3.2-3B-Instruct" and task.envs["BETA"] == "0.01"
    assert 'pip install -e ".[train,vllm]"' in task.setup


def test_serve_task_opens_both_ports():
    sky = _sky()
    task = sky.Task.from_yaml(str(TASKS["serve"]))
    for resources in task.resources:  # SkyPilot may merge the two into a range "8000-8001"
        opened = set()
        for spec in resources.ports:
            low, _, high = str(spec).partition("-")
            opened |= set(range(int(low), int(high or low) + 1))
        assert {8000, 8001} <= opened
    assert "VLLM_API_KEY" in {ref.name for ref in task._managed_secret_refs}


@pytest.mark.parametrize("kind", list(TASKS))
def test_secrets_are_never_written_in_the_files(kind):
    assert all(value is None for value in _raw(kind)["secrets"].values())


@pytest.mark.parametrize("kind", list(TASKS))
def test_shipped_copies_are_the_repository_files(kind):
    assert L.task_path(kind).read_bytes() == TASKS[kind].read_bytes()


@pytest.mark.parametrize("kind", list(TASKS))
@pytest.mark.parametrize("section", ["setup", "run"])
def test_scripts_pass_bash_syntax_check(kind, section):
    out = subprocess.run(["bash", "-n"], input=_raw(kind)[section], text=True, capture_output=True)
    assert out.returncode == 0, out.stderr


# -- the run scripts, executed with stubs ----------------------------------------------------
STUB = r'''#!{python}
import json, os, sys
from pathlib import Path
name = Path(sys.argv[0]).name
argv = sys.argv[1:]
log = Path(os.environ["STUB_LOG"])
keep = ("CUDA_VISIBLE_DEVICES", "OPENAI_BASE_URL", "OPENAI_API_KEY", "POPI_STORE", "POPI_SERVE_API_KEYS")
with log.open("a") as f:
    f.write(json.dumps({{"cmd": name, "argv": argv, "env": {{k: os.environ[k] for k in keep if k in os.environ}}}}) + "\n")
if name == "curl":  # ready once a server was started on the port asked for
    port = argv[-1].split(":")[2].split("/")[0]
    started = [json.loads(l) for l in log.read_text().splitlines()]
    sys.exit(0 if any(e["cmd"] in ("vllm", "popi") and port in e["argv"] for e in started) else 7)
if name == "vllm" or argv[:1] == ["serve"]:  # a server stays up until stopped; three seconds is enough here
    import time
    time.sleep(3)
stage = next((a for a in argv if a in ("stage1", "stage2")), None)
if name == "accelerate" and stage and stage in os.environ.get("STUB_FAIL", ""):
    sys.exit(1)
if name == "accelerate" and stage and os.environ.get("SKYPILOT_NODE_RANK", "0") == "0":
    out = Path(argv[argv.index("--out") + 1]) / stage
    out.mkdir(parents=True, exist_ok=True)
    (out / "model.safetensors").write_bytes(b"w" * 100)
    (out / "popi_stage.json").write_text("{{}}")
'''


@pytest.fixture
def stubs(tmp_path):
    folder = tmp_path / "bin"
    folder.mkdir()
    for name in ("accelerate", "popi", "vllm", "curl"):
        path = folder / name
        path.write_text(STUB.format(python=sys.executable))
        path.chmod(0o755)
    return folder


def run_script(kind, tmp_path, stubs, **env):
    """Execute the task's ``run`` as SkyPilot would: task envs plus SKYPILOT_* variables."""
    task = _raw(kind)
    log = tmp_path / "calls.jsonl"
    (tmp_path / "home").mkdir(exist_ok=True)
    full = {
        **os.environ,
        **{k: str(v) for k, v in task["envs"].items()},
        "RUNS_DIR": str(tmp_path / "bucket"),
        "HOME": str(tmp_path / "home"),
        "PATH": f"{stubs}{os.pathsep}{os.environ['PATH']}",
        "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
        "STUB_LOG": str(log),
        "POPI_POLL_S": "1",  # the serve task's readiness and liveness polls (5 s and 10 s live)
        **{k: str(v) for k, v in env.items()},
    }
    out = subprocess.run(["bash", "-c", task["run"]], env=full, capture_output=True, text=True,
                         timeout=60)
    calls = [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []
    return out, calls


TWO_NODES = {"SKYPILOT_NUM_NODES": "2", "SKYPILOT_NUM_GPUS_PER_NODE": "8",
             "SKYPILOT_NODE_IPS": "10.0.0.1\n10.0.0.2"}


def _accelerate_flags(argv):
    head = argv[: argv.index("-m")]
    return dict(zip(head[1::2], head[2::2]))


@pytest.mark.parametrize("rank", [0, 1])
def test_training_run_calls_both_stages_across_nodes(tmp_path, stubs, rank):
    run = tmp_path / "bucket" / "paper"
    if rank == 1:  # the head already trained stage 1 and its files reached the bucket
        (run / "stage1").mkdir(parents=True)
        (run / "stage1" / "model.safetensors").write_bytes(b"w" * 100)
        (run / "stage1.manifest").write_text("100 ./model.safetensors\n")
    out, calls = run_script("train", tmp_path, stubs, SKYPILOT_NODE_RANK=rank, **TWO_NODES)
    assert out.returncode == 0, out.stderr
    assert [c["cmd"] for c in calls] == ["popi", "accelerate", "accelerate"]
    data_dir = str(tmp_path / "home" / "popi-data" / "review")
    assert calls[0]["argv"] == ["data", "synth", "review", "--users", "2000", "--seed", "0", "--out", data_dir]
    for call, stage in zip(calls[1:], ["stage1", "stage2"]):
        argv = call["argv"]
        assert argv[0] == "launch"
        flags = _accelerate_flags(argv)
        assert flags["--config_file"] == str(REPO / "popi_sdk" / "train" / "accelerate" / "zero3.yaml")
        assert flags["--num_machines"] == "2" and flags["--machine_rank"] == str(rank)
        assert flags["--main_process_ip"] == "10.0.0.1" and flags["--main_process_port"] == "29500"
        assert flags["--num_processes"] == "16"
        assert flags["--rdzv_conf"] == "timeout=4200"  # the head outwaits the stage-1 handoff
        assert argv[argv.index("-m"):] == [
            "-m", "popi_sdk.cli", "train", stage,
            "--config", str(REPO / "popi_sdk" / "train" / "presets" / "paper.yaml"),
            "--data", data_dir, "--out", str(run),
            "--set", "model=meta-llama/Llama-3.2-3B-Instruct", "--set", "beta=0.01",
        ]
    if rank == 0:  # the head lists what stage 2 on the other nodes must see
        manifest = (run / "stage1.manifest").read_text().splitlines()
        assert manifest == ["100 ./model.safetensors", "2 ./popi_stage.json"]


def test_training_run_passes_options_and_a_config_file(tmp_path, stubs):
    config = tmp_path / "mine.yaml"
    config.write_text("beta: 0.05\n")
    out, calls = run_script(
        "train", tmp_path, stubs, SKYPILOT_NODE_RANK=0, SKYPILOT_NUM_NODES=1,
        SKYPILOT_NUM_GPUS_PER_NODE=4, SKYPILOT_NODE_IPS="10.0.0.9", POPI_CONFIG=str(config),
        DATA="/data/alignx", MODEL="", BETA="", MAX_STEPS=5, ACCELERATE_CONFIG="fsdp",
        TRAIN_ARGS="--set stage1.learning_rate=5e-7 --set lora.enabled=true",
    )
    assert out.returncode == 0, out.stderr
    assert [c["cmd"] for c in calls] == ["accelerate", "accelerate"]  # no data to generate
    argv = calls[0]["argv"]
    assert _accelerate_flags(argv)["--num_processes"] == "4"
    assert _accelerate_flags(argv)["--config_file"].endswith("accelerate/fsdp.yaml")
    assert argv[argv.index("-m") + 4:] == [
        "--config", str(config), "--data", "/data/alignx", "--out", str(tmp_path / "bucket" / "paper"),
        "--max-steps", "5", "--set", "stage1.learning_rate=5e-7", "--set", "lora.enabled=true",
    ]


def test_training_run_stops_when_stage1_fails(tmp_path, stubs):
    out, calls = run_script("train", tmp_path, stubs, SKYPILOT_NODE_RANK=0, STUB_FAIL="stage1", **TWO_NODES)
    assert out.returncode != 0
    stages = [c["argv"][c["argv"].index("train") + 1] for c in calls if c["cmd"] == "accelerate"]
    assert stages == ["stage1"]


def test_worker_gives_up_when_stage1_never_reaches_the_bucket(tmp_path, stubs):
    out, calls = run_script("train", tmp_path, stubs, SKYPILOT_NODE_RANK=1, HANDOFF_TIMEOUT=0, **TWO_NODES)
    assert out.returncode == 3
    assert "did not reach the bucket" in out.stderr
    assert len([c for c in calls if c["cmd"] == "accelerate"]) == 1  # stage 2 never started


def test_training_run_names_a_missing_preset(tmp_path, stubs):
    out, calls = run_script("train", tmp_path, stubs, POPI_CONFIG="nope")
    assert out.returncode == 2 and "presets/nope.yaml" in out.stderr and not calls


def test_eval_run_scores_the_run_checkpoints(tmp_path, stubs):
    out, calls = run_script("eval", tmp_path, stubs, SKYPILOT_NUM_GPUS_PER_NODE=1)
    assert out.returncode == 0, out.stderr
    run = tmp_path / "bucket" / "paper"
    data = tmp_path / "home" / "popi-data" / "review"
    assert [c["argv"][:2] for c in calls] == [["data", "synth"], ["eval", "--data"]]
    assert calls[1]["argv"] == [
        "eval", "--data", str(data / "test.jsonl"), "--methods", "base,raw,inference,popi,popi-full",
        "--judge", "oracle", "--out", str(run / "eval"), "--base", "hf:meta-llama/Llama-3.2-3B-Instruct",
        "--summarizer", str(run / "stage1"), "--generator", str(run / "stage2"),
    ]


def test_summarize_run_serves_then_summarizes_through_vllm(tmp_path, stubs):
    out, calls = run_script("summarize", tmp_path, stubs, SKYPILOT_NUM_GPUS_PER_NODE=4,
                            OUT=str(tmp_path / "bucket" / "s" / "u.jsonl"))
    assert out.returncode == 0, out.stderr
    order = [c["cmd"] for c in calls]
    # The server starts in the background, so its log line and the readiness probes interleave
    # in either order; what must hold is that summarizing comes last, after a probe.
    assert order[-1] == "popi" and "vllm" in order and "curl" in order[:-1]
    serve, summarize = calls[order.index("vllm")], calls[-1]
    assert serve["argv"] == [
        "serve", str(tmp_path / "bucket" / "paper" / "stage1"), "--served-model-name", "popi-summarizer",
        "--host", "127.0.0.1", "--port", "8000", "--data-parallel-size", "4",
    ]
    assert summarize["argv"] == [
        "summarize", "/popi-runs/users.jsonl", "--out", str(tmp_path / "bucket" / "s" / "u.jsonl"),
        "--summarizer", "openai:popi-summarizer", "--store", str(tmp_path / "home" / "popi-summaries.sqlite"),
        "--batch-size", "64",
    ]
    assert summarize["env"]["OPENAI_BASE_URL"] == "http://127.0.0.1:8000/v1"


@pytest.mark.parametrize("gpus", [1, 2])
def test_serve_run_starts_generator_then_summarizer(tmp_path, stubs, gpus):
    out, calls = run_script("serve", tmp_path, stubs, SKYPILOT_NUM_GPUS_PER_NODE=gpus,
                            VLLM_API_KEY="k3y", GENERATOR="meta-llama/Llama-3.2-3B-Instruct",
                            POPI_STORE="postgresql://popi@db/popi")
    assert out.returncode == 0, out.stderr
    # Background servers log when their process starts, which may interleave with the other's:
    # identify them by port rather than by log order.
    servers = sorted((c for c in calls if c["cmd"] == "vllm"),
                     key=lambda s: s["argv"][s["argv"].index("--port") + 1])
    assert [s["argv"][1] for s in servers] == [
        "meta-llama/Llama-3.2-3B-Instruct", str(tmp_path / "bucket" / "paper" / "stage1"),
    ]
    assert [s["argv"][s["argv"].index("--port") + 1] for s in servers] == ["8000", "8001"]
    assert all(s["argv"][s["argv"].index("--api-key") + 1] == "k3y" for s in servers)
    curls = [c for c in calls if c["cmd"] == "curl"]
    assert all(["-H", "Authorization: Bearer k3y"] == c["argv"][1:3] for c in curls)
    if gpus == 2:
        assert [s["env"].get("CUDA_VISIBLE_DEVICES") for s in servers] == ["0", "1"]
        assert not any("--gpu-memory-utilization" in s["argv"] for s in servers)
    else:
        assert all("--gpu-memory-utilization" in s["argv"] for s in servers)
    # The personalization proxy starts last, in front of the generator, with the store secret.
    (proxy,) = [c for c in calls if c["cmd"] == "popi"]
    assert calls.index(proxy) > max(calls.index(s) for s in servers)
    assert proxy["argv"] == [
        "serve", "--host", "0.0.0.0", "--port", "8080", "--no-access-log",
        "--generator", "popi-generator=openai:popi-generator@http://127.0.0.1:8000/v1",
        "--summarizer", "openai:popi-summarizer",
    ]
    assert proxy["env"] == {"OPENAI_API_KEY": "k3y", "OPENAI_BASE_URL": "http://127.0.0.1:8001/v1",
                            "POPI_STORE": "postgresql://popi@db/popi", "POPI_SERVE_API_KEYS": "k3y"}


def test_serve_run_without_a_store_secret_says_where_summaries_live(tmp_path, stubs):
    out, calls = run_script("serve", tmp_path, stubs, VLLM_API_KEY="k3y", POPI_SERVE_API_KEYS="proxy-keys")
    assert out.returncode == 0, out.stderr
    (proxy,) = [c for c in calls if c["cmd"] == "popi"]
    assert proxy["env"]["POPI_STORE"] == str(tmp_path / "home" / "popi-summaries.sqlite")
    assert proxy["env"]["POPI_SERVE_API_KEYS"] == "proxy-keys"
    assert "POPI_STORE is not set" in out.stderr


# -- building the task -----------------------------------------------------------------------
def test_build_task_two_nodes_spot():
    task = L.build_task("train", cloud="aws", gpus="H100:8", nodes=2, spot=True,
                        envs={"RUN_NAME": "r1", "POPI_BUCKET": "b1"})
    assert task["num_nodes"] == 2
    assert task["resources"]["accelerators"] == "H100:8"
    assert task["resources"]["use_spot"] is True
    assert task["resources"]["job_recovery"]["strategy"] == "FAILOVER"
    assert task["resources"]["network_tier"] == "best"
    assert task["file_mounts"]["${RUNS_DIR}"]["store"] == "S3"
    assert task["workdir"] == str(REPO)
    assert L.results_location("train", task).startswith("s3://b1/r1/")
    try:
        import sky  # noqa: F401
    except ImportError:
        return
    parsed = L.validate(task)
    (resources,) = parsed.resources
    assert resources.use_spot and parsed.num_nodes == 2


def test_build_task_refuses_unknown_variables_and_bad_gpus():
    with pytest.raises(ConfigError, match="SYNTH_USER.*known: .*SYNTH_USERS"):
        L.build_task("train", envs={"SYNTH_USER": "5"})
    with pytest.raises(ConfigError, match="--gpus"):
        L.build_task("train", gpus="8 x H100")
    with pytest.raises(ConfigError, match="unknown task"):
        L.build_task("finetune")


def test_without_a_checkout_setup_installs_the_same_version(monkeypatch):
    from importlib.metadata import version

    monkeypatch.setattr(L, "repo_root", lambda: None)
    task = L.build_task("train")
    assert "workdir" not in task
    assert task["envs"]["POPI_PIP_SPEC"] == f"popi-sdk[train,vllm]=={version('popi-sdk')}"


def test_upload_sources(tmp_path):
    assert L.upload("synth:elix", "/tmp/popi-launch/data") == ("synth:elix", {})
    assert L.upload("s3://b/users", "/d") == ("/d", {"/d": "s3://b/users"})
    assert L.upload("/popi-runs/users.jsonl", "/d") == ("/popi-runs/users.jsonl", {})
    (tmp_path / "train.jsonl").write_text("{}\n")
    assert L.upload(str(tmp_path), "/d") == ("/d", {"/d": str(tmp_path.resolve())})
    with pytest.raises(ConfigError, match="no such local file"):
        L.upload(str(tmp_path / "missing"), "/d")


def test_dry_run_prints_a_valid_two_node_task():
    result = CliRunner().invoke(app, ["launch", "train", "--cloud", "aws", "--gpus", "H100:8",
                                      "--nodes", "2", "--dry-run"])
    assert result.exit_code == 0, result.output
    printed = result.stdout
    task = yaml.safe_load(printed)
    assert task["num_nodes"] == 2 and task["resources"]["accelerators"] == "H100:8"
    assert task["envs"]["POPI_BUCKET"] == L.default_bucket()
    assert task["secrets"] == {"HF_TOKEN": None}
    assert "Results would land in s3://popi-runs-" in result.stderr
    try:
        import sky
    except ImportError:
        return
    parsed = sky.Task.from_yaml_str(printed)
    assert parsed.num_nodes == 2
    assert list(parsed.resources)[0].accelerators == {"H100": 8}
    assert "Checked offline" in result.stderr


def test_dry_run_uploads_a_local_config_and_data(tmp_path):
    config = tmp_path / "exp.yaml"
    config.write_text("beta: 0.05\n")
    data = tmp_path / "users"
    data.mkdir()
    result = CliRunner().invoke(app, [
        "launch", "train", "--config", str(config), "--data", str(data), "--bucket", "mine",
        "--run-name", "exp1", "--set", "stage1.learning_rate=5e-7", "--max-steps", "10", "--dry-run",
    ])
    assert result.exit_code == 0, result.output
    task = yaml.safe_load(result.stdout)
    assert task["file_mounts"]["/tmp/popi-launch/config.yaml"] == str(config.resolve())
    assert task["file_mounts"]["/tmp/popi-launch/data"] == str(data.resolve())
    expected = {"POPI_CONFIG": "/tmp/popi-launch/config.yaml", "DATA": "/tmp/popi-launch/data",
                "RUN_NAME": "exp1", "POPI_BUCKET": "mine", "MAX_STEPS": "10",
                "TRAIN_ARGS": "--set stage1.learning_rate=5e-7"}
    assert expected.items() <= task["envs"].items()


@pytest.mark.parametrize("argv, key, value", [
    (["eval", "--run", "r9", "--methods", "base,popi"], "METHODS", "base,popi"),
    (["summarize", "/popi-runs/u.jsonl", "--run", "r9"], "OUT", "/popi-runs/summaries/u.summaries.jsonl"),
    (["serve", "--run", "r9"], "RUN_NAME", "r9"),
])
def test_job_dry_runs(argv, key, value):
    result = CliRunner().invoke(app, ["launch", *argv, "--bucket", "mine", "--dry-run"])
    assert result.exit_code == 0, result.output
    task = yaml.safe_load(result.stdout)
    assert task["envs"][key] == value and task["envs"]["POPI_BUCKET"] == "mine"
    try:
        import sky
    except ImportError:
        return
    sky.Task.from_yaml_str(result.stdout)


# -- launching (SkyPilot replaced) -----------------------------------------------------------
class FakeSky:
    """Records what popi hands to SkyPilot; answers like SkyPilot's client SDK."""

    def __init__(self, monkeypatch, sky, enabled=("AWS",)):
        self.calls = []
        self.enabled = list(enabled)
        from sky.client import sdk

        monkeypatch.setattr(sdk, "enabled_clouds", lambda *a, **k: "req-clouds")
        monkeypatch.setattr(sky, "launch", self._launch)
        monkeypatch.setattr(sky.jobs, "launch", self._jobs_launch)
        monkeypatch.setattr(sky, "get", lambda request: self.enabled)
        monkeypatch.setattr(sky, "stream_and_get", lambda request: ([7], None) if request == "req-job" else (3, None))

    def _launch(self, task, **kwargs):
        self.calls.append(("launch", task, kwargs))
        return "req-launch"

    def _jobs_launch(self, task, **kwargs):
        self.calls.append(("jobs.launch", task, kwargs))
        return "req-job"


def test_launch_hands_the_task_to_sky_launch(monkeypatch):
    sky = _sky()
    fake = FakeSky(monkeypatch, sky)
    task = L.build_task("train", cloud="aws", gpus="H100:8", nodes=2, envs={"RUN_NAME": "r1", "POPI_BUCKET": "b1"})
    done = L.launch("train", task, environ={"HF_TOKEN": "hf_secret"})
    ((how, sky_task, kwargs),) = fake.calls
    assert how == "launch" and kwargs == {"cluster_name": "popi-train-r1", "down": True}
    assert sky_task.num_nodes == 2 and sky_task.envs["RUN_NAME"] == "r1"
    assert sky_task.secrets["HF_TOKEN"].get_secret_value() == "hf_secret"
    assert done.job_id == 3 and done.follow == "sky logs popi-train-r1 3"
    assert done.results.startswith("s3://b1/r1/")


def test_spot_launch_is_a_managed_job(monkeypatch):
    sky = _sky()
    fake = FakeSky(monkeypatch, sky)
    task = L.build_task("train", spot=True, envs={"RUN_NAME": "r2"})
    done = L.launch("train", task, managed=True, environ={})
    ((how, sky_task, kwargs),) = fake.calls
    assert how == "jobs.launch" and kwargs == {"name": "popi-train-r2"}
    assert list(sky_task.resources)[0].use_spot
    assert not sky_task.secrets and not sky_task._managed_secret_refs  # HF_TOKEN unset: dropped
    assert any("HF_TOKEN is not set" in n for n in done.notes)
    assert done.job_id == 7 and done.follow == "sky jobs logs 7"


def test_serve_launch_generates_an_api_key(monkeypatch):
    sky = _sky()
    fake = FakeSky(monkeypatch, sky)
    done = L.launch("serve", L.build_task("serve", envs={"RUN_NAME": "r3"}), down=False, environ={})
    ((_, sky_task, kwargs),) = fake.calls
    key = sky_task.secrets["VLLM_API_KEY"].get_secret_value()
    assert len(key) >= 24 and any(key in note for note in done.notes)
    assert kwargs["down"] is False and done.follow == "sky status --endpoints popi-serve-r3"


@pytest.mark.parametrize("enabled, expected", [
    ((), "no cloud is enabled in SkyPilot. To use aws: run `aws configure`"),
    (("GCP",), r"aws is not enabled in SkyPilot \(enabled: gcp\).*`aws configure`.*`sky check aws`"),
])
def test_launch_explains_missing_cloud_credentials(monkeypatch, enabled, expected):
    sky = _sky()
    fake = FakeSky(monkeypatch, sky, enabled=enabled)
    with pytest.raises(L.CloudSetupError, match=expected):
        L.launch("train", L.build_task("train"), environ={})
    assert not fake.calls


def test_launch_explains_rejected_credentials(monkeypatch):
    sky = _sky()
    FakeSky(monkeypatch, sky)

    def refuse(task, **kwargs):
        raise sky.exceptions.CloudUserIdentityError("The AWS access key is invalid")

    monkeypatch.setattr(sky, "launch", refuse)
    with pytest.raises(L.CloudSetupError, match="aws credentials are missing or rejected.*aws configure"):
        L.launch("train", L.build_task("train"), environ={})


def test_missing_skypilot_gives_the_install_command(monkeypatch):
    monkeypatch.setitem(sys.modules, "sky", None)  # makes `import sky` raise ImportError
    with pytest.raises(MissingDependencyError, match=r'pip install "popi-sdk\[launch\]"'):
        L.launch("train", L.build_task("train"), environ={})
    result = CliRunner().invoke(app, ["launch", "train", "--dry-run"])
    assert result.exit_code == 0 and "Not checked: SkyPilot is not installed" in result.stderr
    code = ("import sys; sys.modules['sky'] = None; sys.argv = ['popi', 'launch', 'train', '--bucket', 'b']\n"
            "from popi_sdk.cli import main; main()")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 1 and not out.stdout
    assert out.stderr.startswith('Error: SkyPilot is not installed. Install it with:\n    pip install "popi-sdk[launch]"')


def test_wheel_ships_the_task_files(tmp_path):
    """The package's launch_tasks/ are symbolic links in a checkout; a wheel must hold the files."""
    pytest.importorskip("setuptools", minversion="68")  # the build-system requirement
    import shutil
    import zipfile

    src = tmp_path / "src"
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info")
    shutil.copytree(REPO / "popi_sdk", src / "popi_sdk", symlinks=True, ignore=ignore)
    shutil.copytree(REPO / "jobs", src / "jobs")
    for name in ("pyproject.toml", "README.md", "sky.yaml"):
        shutil.copy(REPO / name, src / name)
    out = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
         "-w", str(tmp_path / "dist"), str(src)],
        capture_output=True, text=True, timeout=300,
    )
    assert out.returncode == 0, out.stderr
    (wheel,) = (tmp_path / "dist").glob("popi_sdk-*.whl")
    with zipfile.ZipFile(wheel) as z:
        for kind, path in TASKS.items():
            assert z.read(f"popi_sdk/launch_tasks/{L.TASK_FILES[kind]}") == path.read_bytes()


def test_hf_token_falls_back_to_the_saved_login(tmp_path):
    (tmp_path / "token").write_text("hf_saved\n")
    task = L.build_task("train")
    overrides, notes = L.resolve_secrets(task, {"HF_HOME": str(tmp_path)})
    assert overrides == [("HF_TOKEN", "hf_saved")] and not notes
    overrides, _ = L.resolve_secrets(L.build_task("train"), {"HF_HOME": str(tmp_path), "HF_TOKEN": "hf_env"})
    assert overrides == [("HF_TOKEN", "hf_env")]


PROBE = """
import os, pathlib, torch, torch.distributed as dist
dist.init_process_group("gloo")
total = torch.tensor([float(dist.get_rank() + 1)])
dist.all_reduce(total)
line = f"rank {dist.get_rank()} of {dist.get_world_size()} on node {os.environ['GROUP_RANK']}: sum {total.item():.0f}"
pathlib.Path(f"probe-{dist.get_rank()}.txt").write_text(line)  # one file each: a shared pipe interleaves
dist.barrier()
dist.destroy_process_group()
"""


def test_accelerate_accepts_the_run_scripts_flags_across_two_nodes(tmp_path, stubs):
    """Replay the exact `accelerate launch` flags the two nodes' run scripts pass, with the real
    accelerate (plain data parallelism on CPU, gloo) and a probe module in place of the trainer:
    the two "nodes" must meet and all-reduce across all four processes."""
    pytest.importorskip("accelerate")
    pytest.importorskip("torch")
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    (tmp_path / "probe.py").write_text(PROBE)
    launches = []
    for rank in (0, 1):
        if rank == 1:
            stage1 = tmp_path / "bucket" / "paper" / "stage1"
            (tmp_path / "bucket" / "paper" / "stage1.manifest").write_text("")
            stage1.mkdir(parents=True, exist_ok=True)
        out, calls = run_script("train", tmp_path, stubs, SKYPILOT_NODE_RANK=rank, SKYPILOT_NUM_NODES=2,
                                SKYPILOT_NUM_GPUS_PER_NODE=2, SKYPILOT_NODE_IPS="127.0.0.1\n127.0.0.2",
                                MAIN_PROCESS_PORT=port, ACCELERATE_CONFIG="ddp", DATA="/data")
        assert out.returncode == 0, out.stderr
        (tmp_path / "calls.jsonl").unlink()
        argv = calls[0]["argv"]
        launches.append([sys.executable, "-m", "accelerate.commands.launch", *argv[1:argv.index("-m")],
                         "-m", "probe"])
    env = {**os.environ, "PYTHONPATH": str(tmp_path), "CUDA_VISIBLE_DEVICES": ""}
    nodes = [subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True) for cmd in launches]
    outputs = [node.communicate(timeout=120)[0] for node in nodes]
    assert [node.returncode for node in nodes] == [0, 0], outputs
    lines = [(tmp_path / f"probe-{r}.txt").read_text() for r in range(4)]
    assert lines == [f"rank {r} of 4 on node {r // 2}: sum 10" for r in range(4)]
