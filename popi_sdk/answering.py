"""Answering many conversations at once: concurrent requests for a server backend, batches for
a local model. The SDK's ``*_many`` methods and the evaluation share these."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from typing import Any

from popi_sdk.backends import Backend, GenerateOptions
from popi_sdk.backends.base import Message
from popi_sdk.errors import InputError


def server_concurrency(backend: Backend, requested: int | None = None) -> int | None:
    """How many requests to keep in flight for ``backend``, or ``None`` for a local model (which
    batches instead). A backend declares itself a server by its ``max_concurrency``, as the
    ``openai`` and ``anthropic`` backends do; ``requested`` overrides it."""
    if backend.max_concurrency is None:
        return None
    n = requested if requested is not None else backend.max_concurrency
    if n < 1:
        raise InputError(f"max_concurrency must be at least 1, got {n}")
    return n


def answer_all(
    backend: Backend,
    conversations: Sequence[Sequence[Message]],
    options: GenerateOptions,
    *,
    on_answer: Callable[[int, str], None],
    advance: Callable[[int], Any],
    batch_size: int | None = None,
    max_concurrency: int | None = None,
) -> None:
    """Answer every conversation, calling ``on_answer(i, text)`` as each one is done.

    A server backend gets concurrent requests, at most ``max_concurrency`` in flight (default:
    the backend's own), so answers arrive one by one and nothing done is lost when a later request
    fails. A local model gets batches of ``batch_size`` (default: everything in one call)."""
    if not conversations:
        return
    workers = server_concurrency(backend, max_concurrency)
    if workers is None:
        step = batch_size or len(conversations)
        for start in range(0, len(conversations), step):
            texts = backend.generate_batch_reporting(conversations[start : start + step], options, advance)
            for i, text in enumerate(texts, start=start):
                on_answer(i, text)
        return
    with ThreadPoolExecutor(max_workers=min(workers, len(conversations))) as pool:
        futures = {pool.submit(backend.generate, c, options): i for i, c in enumerate(conversations)}
        try:
            for future in as_completed(futures):
                on_answer(futures[future], future.result())
                advance(1)
        except BaseException:
            for future in futures:
                future.cancel()
            raise


async def gather_bounded(jobs: Sequence[Callable[[], Any]], limit: int, advance: Callable) -> list:
    """Run async ``jobs`` with at most ``limit`` at once, in order; the first failure cancels the
    rest and is raised."""
    gate = asyncio.Semaphore(limit)

    async def one(job: Callable[[], Any]) -> Any:
        async with gate:
            result = await job()
        advance(1)
        return result

    tasks = [asyncio.ensure_future(one(job)) for job in jobs]
    try:
        return await asyncio.gather(*tasks)
    except BaseException:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        raise

