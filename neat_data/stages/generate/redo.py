"""Targeted re-generation: `neat-data generate … --max-tokens 256 --redo truncated` generates exactly the existing rows
of the named classes again, with this command's sampling, and leaves every other row as it is.

The rows keep their content keys: keys (and the steering pair each prompt gets) are derived from the run folder's own
sampling, read from its manifest, which also stays the run's identity — so a later plain `generate` with the folder's
settings finds every row done. Each regenerated row records the sampling that produced it (`sampling`,
`settings_hash`); the request seed follows this command's --seed. `score` then scores again exactly the rows whose
text changed (stages/score.py: a score follows the row it scored). The manifest's `generate.passes` lists every pass.
A pass that was killed or stopped at a cap, run again, goes on where it stopped: a row whose `sampling` is already this
command's is not selected again (with the folder's own sampling the passes' rows look alike; it draws the same samples).
    truncated   finish_reason "length" (cut at max_tokens)     error    status "error"
    refused     an AdvBench refusal prefix in the response (neat_data/safety/metrics.py, the evaluation's rule)
    steering=S  every row of that steering (pos, neg, none)
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pyarrow as pa

from neat_data.core import layout
from neat_data.core.errors import NeatError
from neat_data.core.manifest import read_manifest
from neat_data.core.schemas import is_truncated
from neat_data.engines.base import Sampling
from neat_data.stages.generate.plan import GenerateConfig, RedoClass, sampling_json, settings_hash

REDO_COLUMNS = ["status", "finish_reason", "response", "steering", "sampling"]  # read with the key


def redo_keys(rows: pa.Table, classes: Sequence[RedoClass], redone_with: str | None = None) -> set[str]:
    """The keys of the rows (columns key + REDO_COLUMNS) that fall in any of `classes`, less those whose `sampling`
    is `redone_with` (`redone_sampling`: the rows this --redo pass already made, before it was killed or stopped)."""
    if not classes or rows.num_rows == 0:
        return set()
    prefixes = None
    keys: set[str] = set()
    for key, status, finish, response, steering, sampling in zip(*(rows.column(name).to_pylist() for name in ["key", *REDO_COLUMNS])):
        if (redone_with is not None and sampling == redone_with) or steering == "dataset":
            continue  # a dataset response is the source's text: no engine made it, none makes it again
        for kind in classes:
            if kind == "truncated":
                hit = status == "ok" and is_truncated(finish)
            elif kind == "error":
                hit = status == "error"
            elif kind == "refused":
                from neat_data.safety.metrics import is_refusal, refusal_prefixes

                prefixes = prefixes or refusal_prefixes()
                hit = status == "ok" and response is not None and is_refusal(response, prefixes)
            else:
                hit = steering == kind.split("=", 1)[1]
            if hit:
                keys.add(key)
                break
    return keys


def redone_sampling(send: GenerateConfig, config: GenerateConfig) -> str | None:
    """The `sampling` column of the rows this --redo pass makes (`send`: this command; `config`: the folder's keys
    config), so that a resumed pass does not redo them again; None when it is the folder's own sampling (its rows
    cannot be told from the first pass's then — and the same sampling draws the same samples again)."""
    if not send.redo or send.sampling == config.sampling:
        return None
    return sampling_json(send)


def keys_config(config: GenerateConfig, run_dir: Path) -> GenerateConfig:
    """The config whose keys, pairs and identity are the folder's: this command's, with the folder's own sampling."""
    previous = read_manifest(run_dir).stage("generate").config
    if not previous or not layout.GENERATIONS.path(run_dir).is_dir():
        raise NeatError("nothing to --redo: this run folder has no generations yet (run generate without --redo first)", file=run_dir)
    return config.model_copy(update={"sampling": Sampling.model_validate(previous["sampling"]), "redo": []})


def pass_record(send: GenerateConfig, backend_name: str | None, rows: int, redone: int, argv: list[str] | None) -> dict[str, Any]:
    return {
        "redo": list(send.redo),
        "sampling": send.sampling.model_dump(mode="json"),
        "settings_hash": settings_hash(send, backend_name or send.backend),
        "rows_written": rows,
        "rows_selected_for_redo": redone,
        "command": argv,
    }
