"""Load benchmark of `popi serve`: the latency it adds in front of an instant upstream, its
throughput with 1, 2, 4 worker processes, and LiteLLM's proxy beside it as a peer.

One run starts, on loopback: an instant OpenAI-compatible upstream (a bare ASGI app on uvicorn that
answers at once with the system message it received); one `popi serve` per `--workers` count in
front of it, all on one SQLite store of `--users` users; with `--peer litellm`, LiteLLM's proxy in
front of the same upstream (no database, one worker); and this script as the load generator
(aiohttp, `--clients` concurrent clients). It sends the same requests straight to the upstream
(with the summary already in the system message, as an app using the SDK would), through each
popi proxy (with `user=`) and through LiteLLM (the direct request: it relays, it does not
personalize), in rounds whose order rotates, so that a change in the machine's load hits every
path alike.

It prints, per path: requests, errors, throughput, latency p50/p99, the p50/p99 added over direct,
CPU per request (the proxy's whole process tree, from /proc), and mixed-up users (an answer that
lacks the requesting user's summary or carries another user's; must be 0). A second, sequential
pass (one client) gives the added latency without queueing: each proxy's own cost per request.

    python benchmarks/serve.py --clients 64 --requests 5000
    python benchmarks/serve.py --clients 64 --requests 2000 --workers 1,2,4 --peer litellm

LiteLLM is not a dependency of popi-sdk, and its proxy extra pins versions of packages popi's own
environment uses (huggingface_hub, rich), so give it an environment of its own and point
`--litellm` (or `POPI_BENCH_LITELLM`) at its executable::

    python -m venv /opt/litellm && /opt/litellm/bin/pip install "litellm[proxy]==1.108.7"
    python benchmarks/serve.py --peer litellm --litellm /opt/litellm/bin/litellm
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import shutil
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
import urllib.request
from pathlib import Path

UPSTREAM = textwrap.dedent('''
    import json

    async def app(scope, receive, send):
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                else:
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        if scope["path"] == "/health":
            await send({"type": "http.response.start", "status": 200, "headers": []})
            await send({"type": "http.response.body", "body": b"ok"})
            return
        if scope["method"] != "POST":  # anything but a completion: a proxy's probe at start-up
            await send({"type": "http.response.start", "status": 404, "headers": []})
            await send({"type": "http.response.body", "body": b""})
            return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        request = json.loads(body)
        system = next((m["content"] for m in request["messages"] if m["role"] == "system"), "")
        answer = json.dumps({
            "id": "chatcmpl-0", "object": "chat.completion", "created": 0,
            "model": request["model"],
            "choices": [{"index": 0, "message": {"role": "assistant", "content": system},
                         "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
        }).encode()
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"application/json")]})
        await send({"type": "http.response.body", "body": answer})
''')


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_ready(url: str, proc: subprocess.Popen, what: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"{what} exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=1):
                return
        except OSError:
            time.sleep(0.1)
    raise SystemExit(f"{what} was not ready within {timeout:g} s")


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU time of a process and its children (Linux ``/proc``), or None elsewhere.
    The children are ``popi serve --workers``' worker processes."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        own = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except (OSError, ValueError, IndexError):
        return None
    return own + sum(cpu_seconds(int(c)) or 0.0 for c in children)


def wait_settled(pid: int, children: int, timeout: float = 180) -> None:
    """Wait until ``pid`` has ``children`` worker processes and its tree's CPU time stops growing:
    the health check answers once the first worker is up, while the others are still starting."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            found = len(Path(f"/proc/{pid}/task/{pid}/children").read_text().split())
        except OSError:
            return  # no /proc: nothing to wait on
        used = cpu_seconds(pid)
        time.sleep(0.5)
        if found >= children and cpu_seconds(pid) == used:
            return
    raise SystemExit(f"the workers of process {pid} did not settle within {timeout:g} s")


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q / 100 * (len(ordered) - 1))))]


async def run_round(session, url, jobs, clients, results, summaries):
    """Send ``jobs`` (user, body) with ``clients`` concurrent workers; append to ``results``."""
    queue = list(jobs)
    queue.reverse()

    async def worker():
        while queue:
            user, body = queue.pop()
            started = time.perf_counter()
            try:
                async with session.post(url, json=body) as r:
                    data = await r.read()
                    ok = r.status == 200
            except Exception:
                ok, data = False, b""
            elapsed = time.perf_counter() - started
            mixed = False
            if ok:
                text = json.loads(data)["choices"][0]["message"]["content"]
                mixed = summaries[user] not in text or text.count("Marker-") != 1
            results.append((elapsed, ok, mixed))

    t = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(clients)))
    return time.perf_counter() - t


async def measure(paths, n_requests, clients, rounds, summaries):
    """``paths``: (name, url, jobs). Warm each path up, then ``rounds`` rounds of every path, the
    order rotated each round. Returns {name: (results, wall seconds)}."""
    import aiohttp

    out = {name: ([], 0.0) for name, _, _ in paths}
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as session:
        warm = min(200, n_requests)
        for _, url, jobs in paths:
            await run_round(session, url, jobs[:warm], clients, [], summaries)
        size = -(-n_requests // rounds)
        for r in range(rounds):
            part = slice(r * size, (r + 1) * size)
            shift = r % len(paths)
            for name, url, jobs in paths[shift:] + paths[:shift]:
                results, wall = out[name]
                wall += await run_round(session, url, jobs[part], clients, results, summaries)
                out[name] = (results, wall)
    return out


def jobs_for(summaries, n_requests, seed):
    """The same users in the same order for every path: (direct jobs, popi jobs)."""
    from popi_sdk.templates import summary_messages

    rng = random.Random(seed)
    users = sorted(summaries)
    prompt = "Recommend a book for the weekend."
    picks = [rng.choice(users) for _ in range(n_requests)]
    direct = [(u, {"model": "bench", "messages": summary_messages(prompt, summaries[u])})
              for u in picks]
    popi = [(u, {"model": "bench", "user": u, "messages": [{"role": "user", "content": prompt}]})
            for u in picks]
    return direct, popi


def report(title, out, clients, cpu=None):
    """A Markdown table, one row per path; ``cpu``: {name: CPU ms per request}."""
    lines = [f"{title}: {clients} concurrent client(s)",
             "| path | requests | errors | mixed-up users | throughput (req/s) | p50 (ms) | p99 (ms) "
             "| added p50 (ms) | added p99 (ms) | CPU per request (ms) |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    stats = {}
    for name, (results, wall) in out.items():
        ok = [e for e, good, _ in results if good] or [float("nan")]
        stats[name] = percentile(ok, 50) * 1e3, percentile(ok, 99) * 1e3
    for name, (results, wall) in out.items():
        errors = sum(not good for _, good, _ in results)
        mixed = sum(m for _, _, m in results)
        p50, p99 = stats[name]
        added = ("", "") if name == "direct" else (
            f"{p50 - stats['direct'][0]:+.2f}", f"{p99 - stats['direct'][1]:+.2f}")
        used = f"{cpu[name]:.2f}" if cpu and name in cpu else ""
        lines.append(f"| {name} | {len(results)} | {errors} | {mixed} | {len(results) / wall:.0f} "
                     f"| {p50:.2f} | {p99:.2f} | {added[0]} | {added[1]} | {used} |")
    return "\n".join(lines)


LITELLM_CONFIG = """\
model_list:
  - model_name: bench
    litellm_params:
      model: openai/bench
      api_base: {base}
      api_key: sk-bench
"""


def start_litellm(executable: str, upstream_base: str, work: Path, port: int, env: dict):
    """LiteLLM's proxy in front of the upstream, as its docs start it: a config file, no
    database, no master key, one worker; its log goes to ``litellm.log`` in the work folder. Its model cost map is read from the installed package
    instead of fetched (the benchmark runs offline)."""
    (work / "litellm.yaml").write_text(LITELLM_CONFIG.format(base=upstream_base))
    # Without a key, as popi serve runs here (loopback, no --api-key): LiteLLM 1.108 refuses to
    # start with no master key unless told this is local development.
    env = {**env, "LITELLM_LOCAL_MODEL_COST_MAP": "True", "LITELLM_LOG": "ERROR",
           "DISABLE_SCHEMA_UPDATE": "True", "LITELLM_DANGEROUSLY_PERMIT_WEAK_OR_UNSET_MASTER_KEY": "true"}
    env.pop("DATABASE_URL", None)
    env.pop("PYTHONPATH", None)  # its own environment, not popi's
    log = open(work / "litellm.log", "wb")
    return subprocess.Popen([executable, "--config", str(work / "litellm.yaml"), "--host",
                             "127.0.0.1", "--port", str(port), "--num_workers", "1"],
                            env=env, stdout=log, stderr=subprocess.STDOUT, cwd=work)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=64, help="concurrent clients")
    parser.add_argument("--requests", type=int, default=5000, help="requests per path")
    parser.add_argument("--sequential", type=int, default=500,
                        help="requests per path in the one-client pass (0: skip it)")
    parser.add_argument("--users", type=int, default=200, help="users in the store")
    parser.add_argument("--rounds", type=int, default=4, help="rounds of every path per pass")
    parser.add_argument("--workers", default="1",
                        help="comma-separated `popi serve --workers` counts, one proxy each")
    parser.add_argument("--peer", choices=["litellm"], help="also measure this proxy")
    parser.add_argument("--litellm", default=os.environ.get("POPI_BENCH_LITELLM", "litellm"),
                        help="LiteLLM's executable (env POPI_BENCH_LITELLM)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    try:
        counts = [int(w) for w in args.workers.split(",")]
    except ValueError:
        parser.error(f"--workers takes counts like 1,2,4, got {args.workers!r}")
    if any(w < 1 for w in counts):
        parser.error("--workers counts must be at least 1")
    litellm = None
    if args.peer == "litellm":
        litellm = shutil.which(args.litellm)
        if litellm is None:
            parser.error(f"--peer litellm: no executable {args.litellm!r}; install LiteLLM's proxy "
                         "(see this script's docstring) and pass --litellm PATH")

    from popi_sdk.signals import Summary
    from popi_sdk.store import SQLiteStore

    work = Path(tempfile.mkdtemp(prefix="popi-serve-bench-"))
    (work / "instant_upstream.py").write_text(UPSTREAM)
    store = SQLiteStore(work / "summaries.sqlite")
    summaries = {f"u{i:04d}": f"Marker-{i:04d}: the user likes short, concrete answers about "
                 f"topic {i}." for i in range(args.users)}
    for user, text in summaries.items():
        store.put(Summary(user_id=user, text=text, summarizer="bench", signals_hash="h", n_tokens=12))
    store.close()

    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(
        [str(Path(__file__).resolve().parent.parent), os.environ.get("PYTHONPATH", "")])}
    up_port = free_port()
    upstream = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "instant_upstream:app", "--port", str(up_port),
         "--log-level", "warning", "--no-access-log"], cwd=work, env=env)
    base = f"http://127.0.0.1:{up_port}/v1"
    procs: dict[str, tuple[subprocess.Popen, str]] = {}
    try:
        for w in counts:
            port = free_port()
            name = f"popi, {w} worker{'s' if w > 1 else ''}"
            procs[name] = (subprocess.Popen(
                [sys.executable, "-m", "popi_sdk.cli", "serve", "--port", str(port),
                 "--generator", f"bench=openai:bench@{base}", "--workers", str(w),
                 "--store", str(work / "summaries.sqlite"), "--log-level", "warning",
                 "--no-access-log"], env=env), f"http://127.0.0.1:{port}")
        if litellm:
            port = free_port()
            procs["LiteLLM"] = (start_litellm(litellm, base, work, port, env),
                                f"http://127.0.0.1:{port}")
        wait_ready(f"http://127.0.0.1:{up_port}/health", upstream, "the upstream")
        for name, (proc, url) in procs.items():
            health = url + ("/health/liveliness" if name == "LiteLLM" else "/health")
            wait_ready(health, proc, name, timeout=180)
        for w, (proc, _) in zip(counts, procs.values()):
            wait_settled(proc.pid, w if w > 1 else 0)
        print(f"machine: {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f} at start")
        if litellm:
            version = subprocess.run([str(Path(litellm).parent / "python"), "-c",
                                      "import importlib.metadata as m; print(m.version('litellm'))"],
                                     capture_output=True, text=True).stdout.strip()
            print(f"LiteLLM {version or '(version unknown)'}, one worker, no database")

        def paths(n):
            direct, popi = jobs_for(summaries, n, args.seed)
            out = [("direct", f"{base}/chat/completions", direct)]
            for name, (_, url) in procs.items():
                out.append((name, f"{url}/v1/chat/completions", direct if name == "LiteLLM" else popi))
            return out

        watched = {name: proc.pid for name, (proc, _) in procs.items()} | {"upstream": upstream.pid}
        before = {name: cpu_seconds(pid) for name, pid in watched.items()}
        out = asyncio.run(measure(paths(args.requests), args.requests, args.clients, args.rounds,
                                  summaries))
        after = {name: cpu_seconds(pid) for name, pid in watched.items()}
        served = args.requests + min(200, args.requests)  # each path's requests, warm-up included
        cpu = {name: (after[name] - before[name]) / served * 1e3 for name in procs
               if None not in (before[name], after[name])}
        if None not in (before["upstream"], after["upstream"]):
            # The upstream serves every path's requests.
            cpu["direct"] = ((after["upstream"] - before["upstream"])
                             / (served * (1 + len(procs))) * 1e3)
        print(report("Load", out, args.clients, cpu))
        first = next(iter(procs))
        for name in list(procs)[1:]:
            ratio = len(out[name][0]) / out[name][1] / (len(out[first][0]) / out[first][1])
            print(f"throughput {name} / {first}: {ratio:.2f}x")
        print("(CPU per request of direct: the upstream's, for every path's requests)")
        if args.sequential:
            out = asyncio.run(measure(paths(args.sequential), args.sequential, 1, 2, summaries))
            print(report("\nSequential", out, 1))
        print(f"load average {os.getloadavg()[0]:.1f} at the end")
    finally:
        for proc in [p for p, _ in procs.values()] + [upstream]:
            proc.terminate()
        for proc in [p for p, _ in procs.values()] + [upstream]:
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()


if __name__ == "__main__":
    main()
