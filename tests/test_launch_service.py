"""`popi launch serve --replicas N`: the proxy as a SkyPilot Serve service (``jobs/service.yaml``),
offline. The task parses with SkyPilot as a service, its run script (executed with the stub
executables of ``test_launch.py``) refuses a store the replicas would not share and starts vLLM on
loopback then ``popi serve --workers``, and the launch goes through ``sky.serve.up`` (replaced).
The generic checks (``bash -n``, secrets, shipped copies, the wheel) cover the file in
``test_launch.py``."""

from __future__ import annotations

import pytest
import yaml
from test_launch import FakeSky, _sky, run_script, stubs, temporary_home  # noqa: F401 (fixtures)
from typer.testing import CliRunner

from popi_sdk import launch as L
from popi_sdk.cli import app
from popi_sdk.errors import ConfigError

STORE = "postgresql://popi:pw@db.internal:5432/popi"


def dry_run(*argv):
    result = CliRunner().invoke(app, ["launch", "serve", "--run", "r9", "--bucket", "mine",
                                      *argv, "--dry-run"])
    return result


def test_service_task_parses_as_a_skypilot_serve_service():
    sky = _sky()
    task = sky.Task.from_yaml(str(L.task_path("service")))
    service = task.service
    assert service is not None
    assert service.readiness_path == "/health"
    assert (service.min_replicas, service.max_replicas, service.target_qps_per_replica) == (1, 4, 4)
    for resources in task.resources:
        assert [str(p) for p in resources.ports] == ["8080"]  # only the proxy is exposed
    assert "POPI_STORE" in {ref.name for ref in task._managed_secret_refs}


def test_replicas_dry_run_prints_a_service_skypilot_parses():
    result = dry_run("--replicas", "2")
    assert result.exit_code == 0, result.output
    task = yaml.safe_load(result.stdout)
    assert task["service"]["replica_policy"]["min_replicas"] == 2
    assert task["service"]["replica_policy"]["max_replicas"] == 4  # the file's, still autoscaling
    assert task["service"]["readiness_probe"]["path"] == "/health"
    assert task["envs"]["RUN_NAME"] == "r9" and task["envs"]["POPI_BUCKET"] == "mine"
    assert "every replica shares that store" in result.stderr
    sky = _sky()
    parsed = sky.Task.from_yaml_str(result.stdout)
    assert parsed.service.min_replicas == 2 and parsed.service.max_replicas == 4


def test_replica_options_size_the_service():
    task = yaml.safe_load(dry_run("--replicas", "2", "--max-replicas", "8", "--qps-per-replica",
                                  "2.5", "--workers", "4").stdout)
    policy = task["service"]["replica_policy"]
    assert (policy["min_replicas"], policy["max_replicas"], policy["target_qps_per_replica"]) == (2, 8, 2.5)
    assert task["envs"]["PROXY_WORKERS"] == "4"

    fixed = yaml.safe_load(dry_run("--replicas", "3", "--max-replicas", "3").stdout)
    assert fixed["service"]["replica_policy"] == {"min_replicas": 3}
    sky = _sky()
    service = sky.Task.from_yaml_str(yaml.safe_dump(fixed)).service
    assert service.min_replicas == 3 and service.max_replicas is None  # SkyPilot's fixed count


@pytest.mark.parametrize("argv, says", [
    (["--replicas", "4", "--max-replicas", "2"], "--max-replicas 2 is below --replicas 4"),
    (["--workers", "4"], "add --replicas N"),
    (["--replicas", "2", "--qps-per-replica", "0"], "must be above 0"),
])
def test_bad_replica_options_say_how_to_fix(argv, says):
    result = dry_run(*argv)  # the CLI's entry point prints a ConfigError as "Error: ..."
    assert isinstance(result.exception, ConfigError) and says in str(result.exception)


def test_plain_serve_is_still_a_cluster():
    task = yaml.safe_load(dry_run().stdout)
    assert "service" not in task and task["name"] == "popi-serve"


def test_service_run_refuses_a_store_the_replicas_would_not_share(tmp_path, stubs):  # noqa: F811
    out, calls = run_script("service", tmp_path, stubs, VLLM_API_KEY="k3y",
                            POPI_STORE=str(tmp_path / "summaries.sqlite"))
    assert out.returncode == 2 and not calls
    assert "every replica must share one store" in out.stderr


def test_service_run_starts_vllm_on_loopback_then_the_proxy_with_workers(tmp_path, stubs):  # noqa: F811
    out, calls = run_script("service", tmp_path, stubs, VLLM_API_KEY="k3y", POPI_STORE=STORE)
    assert "popi: replica ready" in out.stdout, out.stderr
    servers = [c for c in calls if c["cmd"] == "vllm"]
    assert len(servers) == 2
    assert all(s["argv"][s["argv"].index("--host") + 1] == "127.0.0.1" for s in servers)
    (proxy,) = [c for c in calls if c["cmd"] == "popi"]
    argv = proxy["argv"]
    assert argv[:5] == ["serve", "--host", "0.0.0.0", "--port", "8080"]
    assert argv[argv.index("--workers") + 1] == "2"
    assert proxy["env"]["POPI_STORE"] == STORE
    assert proxy["env"]["OPENAI_BASE_URL"] == "http://127.0.0.1:8001/v1"


def test_service_launch_goes_through_sky_serve_up(monkeypatch):
    sky = _sky()
    fake = FakeSky(monkeypatch, sky)
    monkeypatch.setattr(sky.serve, "up", lambda task, **kw: fake.calls.append(("serve.up", task, kw))
                        or "req-serve")
    monkeypatch.setattr(sky, "stream_and_get", lambda request: ("popi-service-r3", "3.4.5.6:30001"))
    task = L.set_replicas(L.build_task("service", envs={"RUN_NAME": "r3"}), 2)
    done = L.launch("service", task, environ={"POPI_STORE": STORE})
    ((how, sky_task, kwargs),) = fake.calls
    assert how == "serve.up" and kwargs == {"service_name": "popi-service-r3"}
    assert sky_task.service.min_replicas == 2
    assert sky_task.secrets["POPI_STORE"].get_secret_value() == STORE
    assert done.follow == "sky serve status popi-service-r3 --endpoint"
    assert any("http://3.4.5.6:30001/v1" in note for note in done.notes)


def test_service_launch_needs_a_postgres_store(monkeypatch):
    sky = _sky()
    fake = FakeSky(monkeypatch, sky)
    task = L.set_replicas(L.build_task("service", envs={"RUN_NAME": "r3"}), 2)
    with pytest.raises(ConfigError, match="set POPI_STORE to a postgresql://"):
        L.launch("service", task, environ={"POPI_STORE": "/tmp/summaries.sqlite"})
    assert not fake.calls
