"""Load benchmark of `popi serve`: the latency it adds in front of an instant upstream.

One run starts three processes on loopback: an instant OpenAI-compatible upstream (a bare ASGI app
on uvicorn that answers at once with the system message it received), `popi serve` in front of it
with a SQLite store of `--users` users, and this script as the load generator (aiohttp, `--clients`
concurrent clients). It sends the same requests straight to the upstream (with the summary already
in the system message, as an app using the SDK would) and through the proxy (with `user=`),
alternating rounds between the two so that a change in the machine's load hits both alike.

It prints, per path: requests, errors, throughput, latency p50/p99, and for the proxy the added
p50/p99 and mixed-up users (an answer that lacks the requesting user's summary or carries another
user's; must be 0). A second, sequential pass (one client) gives the added latency without
queueing: the proxy's own cost per request.

    python benchmarks/serve.py --clients 64 --requests 5000
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
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
    """User + system CPU time of a process (Linux ``/proc``), or None elsewhere."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None


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


async def measure(direct_url, proxy_url, summaries, n_requests, clients, rounds, seed):
    import aiohttp

    from popi_sdk.templates import summary_messages

    rng = random.Random(seed)
    users = sorted(summaries)
    prompt = "Recommend a book for the weekend."
    picks = [rng.choice(users) for _ in range(n_requests)]
    direct_jobs = [(u, {"model": "bench", "messages": summary_messages(prompt, summaries[u])})
                   for u in picks]
    proxy_jobs = [(u, {"model": "bench", "user": u,
                       "messages": [{"role": "user", "content": prompt}]}) for u in picks]
    out = {"direct": ([], 0.0), "proxy": ([], 0.0)}
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as session:
        warm = min(200, n_requests)
        await run_round(session, direct_url, direct_jobs[:warm], clients, [], summaries)
        await run_round(session, proxy_url, proxy_jobs[:warm], clients, [], summaries)
        size = -(-n_requests // rounds)
        for r in range(rounds):
            part = slice(r * size, (r + 1) * size)
            order = [("direct", direct_url, direct_jobs), ("proxy", proxy_url, proxy_jobs)]
            if r % 2:
                order.reverse()
            for name, url, jobs in order:
                results, wall = out[name]
                wall += await run_round(session, url, jobs[part], clients, results, summaries)
                out[name] = (results, wall)
    return out


def report(title, out, clients):
    lines = [f"{title}: {clients} concurrent client(s)",
             "| path | requests | errors | mixed-up users | throughput (req/s) | p50 (ms) | p99 (ms) |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    stats = {}
    for name in ("direct", "proxy"):
        results, wall = out[name]
        ok = [e for e, good, _ in results if good]
        errors = sum(not good for _, good, _ in results)
        mixed = sum(m for _, _, m in results)
        p50, p99 = percentile(ok, 50) * 1e3, percentile(ok, 99) * 1e3
        stats[name] = (p50, p99)
        lines.append(f"| {name} | {len(results)} | {errors} | {mixed} | {len(results) / wall:.0f} "
                     f"| {p50:.2f} | {p99:.2f} |")
    added = (stats["proxy"][0] - stats["direct"][0], stats["proxy"][1] - stats["direct"][1])
    lines.append(f"added by the proxy: p50 {added[0]:+.2f} ms, p99 {added[1]:+.2f} ms")
    return "\n".join(lines), added


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=64, help="concurrent clients")
    parser.add_argument("--requests", type=int, default=5000, help="requests per path")
    parser.add_argument("--sequential", type=int, default=500,
                        help="requests per path in the one-client pass (0: skip it)")
    parser.add_argument("--users", type=int, default=200, help="users in the store")
    parser.add_argument("--rounds", type=int, default=4, help="alternating rounds per pass")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    from popi_sdk.signals import Summary
    from popi_sdk.store import SQLiteStore

    work = Path(tempfile.mkdtemp(prefix="popi-serve-bench-"))
    (work / "instant_upstream.py").write_text(UPSTREAM)
    store = SQLiteStore(work / "summaries.sqlite")
    summaries = {f"u{i:04d}": f"Marker-{i:04d}: the user likes short, concrete answers about topic {i}."
                 for i in range(args.users)}
    for user, text in summaries.items():
        store.put(Summary(user_id=user, text=text, summarizer="bench", signals_hash="h", n_tokens=12))
    store.close()

    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(
        [str(Path(__file__).resolve().parent.parent), os.environ.get("PYTHONPATH", "")])}
    up_port, proxy_port = free_port(), free_port()
    upstream = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "instant_upstream:app", "--port", str(up_port),
         "--log-level", "warning", "--no-access-log"], cwd=work, env=env)
    proxy = subprocess.Popen(
        [sys.executable, "-m", "popi_sdk.cli", "serve", "--port", str(proxy_port),
         "--generator", f"bench=openai:bench@http://127.0.0.1:{up_port}/v1",
         "--store", str(work / "summaries.sqlite"), "--log-level", "warning", "--no-access-log"],
        env=env)
    try:
        wait_ready(f"http://127.0.0.1:{up_port}/health", upstream, "the upstream")
        wait_ready(f"http://127.0.0.1:{proxy_port}/health", proxy, "popi serve")
        direct = f"http://127.0.0.1:{up_port}/v1/chat/completions"
        through = f"http://127.0.0.1:{proxy_port}/v1/chat/completions"
        print(f"machine: {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f} at start")
        before = cpu_seconds(proxy.pid), cpu_seconds(upstream.pid)
        out = asyncio.run(measure(direct, through, summaries, args.requests, args.clients,
                                  args.rounds, args.seed))
        after = cpu_seconds(proxy.pid), cpu_seconds(upstream.pid)
        table, _ = report("Load", out, args.clients)
        print(table)
        if None not in before + after:
            # CPU time does not depend on how busy the machine is, unlike wall time. The upstream
            # serves every request of both paths (twice the proxy's count, plus warm-up).
            n_proxy = args.requests + min(200, args.requests)
            print(f"CPU per request: proxy {(after[0] - before[0]) / n_proxy * 1e3:.2f} ms, "
                  f"upstream {(after[1] - before[1]) / (2 * n_proxy) * 1e3:.2f} ms")
        if args.sequential:
            out = asyncio.run(measure(direct, through, summaries, args.sequential, 1, 2, args.seed))
            table, _ = report("\nSequential", out, 1)
            print(table)
        print(f"load average {os.getloadavg()[0]:.1f} at the end")
    finally:
        for proc in (proxy, upstream):
            proc.terminate()
            proc.wait(timeout=30)


if __name__ == "__main__":
    main()
