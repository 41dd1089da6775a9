"""Answers collected by reader threads while versions flip, and event-based waits on them.

A test under load must not judge by how many requests a busy machine managed in a sleep. The
readers record every answer here; the test waits (bounded) for an event such as "every reader
has been answered from version V" before the next flip, then checks every answer.
"""

from __future__ import annotations

import random
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import httpx

WAIT_SECONDS = 60.0
"""The longest a test waits for one event; a loaded CI machine answers within seconds."""


class Answers:
    """Every answer of every reader, with the versions each reader has been served."""

    def __init__(self, readers: int) -> None:
        self.readers = readers
        self.rows: list[tuple[Any, ...]] = []
        self.failures: list[str] = []
        self._seen: list[set[str]] = [set() for _ in range(readers)]
        self._changed = threading.Condition()

    def add(self, reader: int, version: str, rows: list[tuple[Any, ...]]) -> None:
        """Record one answer: ``rows`` read by ``reader`` from ``version``."""
        with self._changed:
            self.rows.extend(rows)
            self._seen[reader].add(version)
            self._changed.notify_all()

    def fail(self, problem: str) -> None:
        """Record a failed request (or a reader that stopped); every wait ends at once."""
        with self._changed:
            self.failures.append(problem)
            self._changed.notify_all()

    def versions(self) -> set[str]:
        """Every version any reader was served."""
        with self._changed:
            return set().union(*self._seen)

    def wait_until_every_reader_saw(self, version: str) -> None:
        """Block until each reader has had an answer from ``version`` (or a failure).

        Raises
        ------
        AssertionError
            After :data:`WAIT_SECONDS` without it, naming the readers still waiting.
        """
        self._wait(lambda: all(version in seen for seen in self._seen), f"version {version}")

    def wait_until_every_reader_answered(self) -> None:
        """Block until each reader has had at least one answer (or a failure)."""
        self._wait(lambda: all(self._seen), "a first answer")

    def _wait(self, event: Callable[[], bool], what: str) -> None:
        with self._changed:
            if not self._changed.wait_for(lambda: bool(self.failures) or event(), WAIT_SECONDS):
                seen = [sorted(versions) for versions in self._seen]
                msg = f"not every reader got {what} within {WAIT_SECONDS:.0f} s; seen: {seen}"
                raise AssertionError(msg)


Ask = Callable[[httpx.Client, random.Random], tuple[str, list[tuple[Any, ...]]] | None]
"""One request: ``(version, rows)`` of its answer, or None after ``Answers.fail``."""


@contextmanager
def readers_running(base_url: str, answers: Answers, ask: Ask) -> Iterator[None]:
    """``answers.readers`` threads calling ``ask`` without pause until the block ends.

    Each has its own HTTP client and a random generator seeded with its number; an exception
    in one is recorded as a failure (ending every wait) instead of dying silently.
    """
    stop = threading.Event()

    def read(reader: int) -> None:
        rng = random.Random(reader)
        try:
            with httpx.Client(base_url=base_url, timeout=5) as http:
                while not stop.is_set():
                    answer = ask(http, rng)
                    if answer is not None:
                        answers.add(reader, *answer)
        except Exception as exc:  # noqa: BLE001 - any error is a finding, reported by the test
            answers.fail(f"reader {reader}: {type(exc).__name__}: {exc}")

    threads = [threading.Thread(target=read, args=(n,)) for n in range(answers.readers)]
    for thread in threads:
        thread.start()
    try:
        yield
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=WAIT_SECONDS)
