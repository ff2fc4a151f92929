"""Scorers for the reliability suite, loaded by `neat-data score --scorer python:reliability_scorers:<fn>`."""

from __future__ import annotations

import time


def slow_length(prompts: list, responses: list[str]) -> list[float]:
    """The response length, after a short sleep per call so that a kill can land between flushes."""
    time.sleep(0.02)
    return [float(len(response)) for response in responses]


def other(prompts: list, responses: list[str]) -> list[float]:
    """A second scorer: a run scored with slow_length refuses it without --overwrite."""
    return [0.0 for _ in responses]


def leaks_its_key(prompts: list, responses: list[str]) -> list[float]:
    """A user scorer that fails with its service key in the message (as a client library might)."""
    import os

    raise PermissionError(f"service rejected key {os.environ.get('SCORER_API_KEY')}")


def leaks_a_handed_secret(prompts: list, responses: list[str]) -> list[float]:
    """A user scorer that fails quoting the value of $X, a variable the recipe names as its api_key_env — having first
    written it where Python's own streams are not involved, as an engine's C code or a child process would: straight
    to file descriptors 1 and 2 (one of them inside a progress-bar line) and from a shell it starts."""
    import os
    import subprocess

    key = os.environ.get("X") or ""
    os.write(1, f"engine: connecting with {key}\n".encode())
    os.write(2, f"\rscoring  10% key={key}\rscoring  50%".encode())
    subprocess.run(["sh", "-c", 'echo "child process: $X"'], check=True)
    raise PermissionError(f"service rejected key {key}")
