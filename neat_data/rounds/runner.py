"""Online NEAT rounds from a recipe: generate → score → rank → audit → export → train → evaluate, round after round.

In:  a recipe YAML (`pipelines/*.yaml`, schema `Recipe`; `--set key=value` overrides, dotted for nesting).
Out: runs/<name>/
       manifest.json                 the resolved recipe, each stage's config path, seconds, finished flags
       prompts/heldout.jsonl, prompts/round_NN.jsonl   the deterministic split (held-out never trained on)
       round_00/eval/                the base model on the held-out prompts (+ the preferred set for perplexity)
       round_NN/{generations,scored,ranked,audit,export,model,eval}, round_NN/configs/<stage>.json
       rounds.json, rounds.md, rounds.png   the per-round table and curve
Run: `neat-data run pipelines/quickstart.yaml [--set rounds=3]`.

Round k generates with round k−1's policy (the base model for k = 1) on a fresh prompt slice. Scores use a
fixed reference (the base model unless the recipe names another), so rounds are comparable. Each stage runs
in its own process (`neat-data stage NAME CONFIG.json`), so vLLM and the trainer never hold memory at the
same time; a killed run resumes at the first unfinished stage (the stage itself resumes where it can). The audit's
gate (a FAIL of a check in the recipe's audit.fail_on) stops the round before its exports with exit 5 and one line; its
section may change on the same folder: the audit runs again, and every stage that reads it, directly or not. A stage
runs in a process group of its own: SIGTERM / SIGINT / SIGHUP to the run is passed on to it and waited for, and the
run exits 128 + the signal's number without recording the stage, so no stage outlives its run.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

from neat_data.core.errors import (
    EXIT_CHECK_FAILED,
    EXIT_PENDING,
    NeatError,
    child_environment,
    redact_secrets,
    secret_values,
    with_path,
)
from neat_data.core.files import atomic_write_bytes, atomic_write_json
from neat_data.core.layout import round_folder
from neat_data.core.manifest import MANIFEST, Manifest, edit_manifest, read_manifest, write_manifest
from neat_data.core.runfolder import RunLock, empty_folder
from neat_data.rounds.publish import push_round
from neat_data.rounds.recipe import Recipe, changed_fields, plan_round, recipe_identity, variant_recipe
from neat_data.rounds.split import Split, plan_split, split_files
from neat_data.rounds.stages import PlannedStage
from neat_data.rounds.variants import StageCache, materialize, stage_key


def write_split(recipe: Recipe, run_dir: Path, split: Split) -> None:
    """prompts/heldout.jsonl and one file per round (files already there are kept: a run extended by rounds)."""
    for index, (path, chunk) in enumerate(zip(split_files(recipe, run_dir), split.slices)):
        if not path.exists():
            # a round's prompts from a preference file (prompts.responses: keep) are its rows as read, answers and all;
            # held-out prompts (index 0) are only ever prompts
            rows = [row for r in chunk for row in r.rows] if index and recipe.prompts.responses == "keep" else None
            rows = rows or [{"prompt_id": r.prompt_id, "messages": r.messages} for r in chunk]
            lines = "".join(json.dumps(row, ensure_ascii=False, default=str) + "\n" for row in rows)
            atomic_write_bytes(path, lines.encode("utf-8"))


def check_models(recipe: Recipe) -> None:
    """The policy and a named scorer model must exist before the run folder records the recipe."""
    from neat_data.core.models import resolve_model

    resolve_model(recipe.model)
    judge_on_server = recipe.score.scorer == "judge" and recipe.score.stage_fields().get("judge_backend", "openai") == "openai"
    if recipe.score.model and not recipe.score.scorer.startswith("python:") and not judge_on_server:
        resolve_model(recipe.score.model)


def record_stage(run_dir: Path, k: int, name: str, record: dict[str, Any]) -> None:
    with edit_manifest(run_dir) as manifest:
        manifest.rounds.setdefault(str(k), {})[name] = {"finished": True, **record}


def run_stage(
    stage: PlannedStage,
    folder: Path,
    run_dir: Path,
    k: int,
    echo: Any,
    *,
    cache: StageCache | None = None,
    key: str | None = None,
    again: bool = False,
) -> float:
    """Run one stage in its own process unless the manifest says it finished (and not `again`) — or, with a `cache` of
    a variants run, another variant finished the stage with the same `key` (then its result is linked in); returns its
    seconds. A stage that stops the round on purpose (exit 5: the audit's gate) is recorded unfinished, with its line."""
    name, config = stage.label, stage.config_json()
    done = read_manifest(run_dir).finished_in_round(k, name)
    if done.get("finished") and not again:
        echo(f"round {k} · {name}: done ({done['seconds']:.0f} s), skipped")
        return 0.0
    config_path = folder / "configs" / f"{name}.json"
    shared = cache.find(key, run_dir) if cache is not None and key is not None else None
    if shared is not None:
        materialize(stage, shared, folder)
        atomic_write_json(config_path, config)
        source = f"{shared['run']}/round_{shared['round']:02d}"
        echo(f"round {k} · {name}: the same as in {source} (identical inputs), shared")
        record_stage(run_dir, k, name, {"seconds": 0.0, "config": str(config_path), "shared_from": source, "key": key})
        return 0.0
    log_path, summary_path = folder / "logs" / f"{name}.log", folder / "logs" / f"{name}.summary"
    atomic_write_json(config_path, config)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    summary_path.unlink(missing_ok=True)
    echo(f"round {k} · {name} … (log: {log_path})")
    started = time.time()
    # The stage's own output (engine logs, progress bars) goes to its log, scrubbed of secrets; the terminal gets its
    # summary.
    with open(log_path, "ab") as log:
        returncode, stopped_by = run_stage_process(
            [sys.executable, "-m", "neat_data.cli", "stage", stage.kind.name, str(config_path), "--summary", str(summary_path)],
            log,
            env=child_environment(),  # the names of the secrets: the stage scrubs its own lines and files of their values
        )
    if stopped_by is not None:
        name_of = signal.Signals(stopped_by).name
        raise NeatError(
            f"round {k} · {name}: stopped by {name_of}, and the stage with it; run the same command again to resume "
            "(finished stages are kept)",
            file=config_path,
            exit_code=128 + stopped_by,  # the shell's convention for a process ended by a signal
        )
    if returncode == EXIT_PENDING:
        raise NeatError(
            f"round {k} · {name}: its batch requests are submitted and not answered yet (`neat-data batch status "
            f"{folder}`); run the same command again later to collect them and go on",
            file=config_path,
            exit_code=EXIT_PENDING,
        )
    if returncode == EXIT_CHECK_FAILED:
        line = summary_path.read_text(encoding="utf-8").strip() if summary_path.exists() else f"see {log_path}"
        with edit_manifest(run_dir) as manifest:
            manifest.rounds.setdefault(str(k), {})[name] = {"finished": False, "stopped": line, "config": str(config_path), "key": key}
        raise NeatError(f"round {k} · {name}: {line}", exit_code=EXIT_CHECK_FAILED)
    if returncode != 0:
        tail = log_path.read_text(encoding="utf-8", errors="replace").splitlines()[-15:]
        echo("\n".join(f"    {redact_secrets(line)}" for line in tail))
        raise NeatError(
            f"stage {name} of round {k} failed (exit code {returncode}; log above and in {log_path}); "
            "fix and re-run: finished stages are kept",
            file=config_path,
        )
    seconds = time.time() - started
    if summary_path.exists():
        for line in summary_path.read_text(encoding="utf-8").splitlines():
            echo(f"    {line}")
    record_stage(run_dir, k, name, {"seconds": round(seconds, 2), "config": str(config_path), "key": key})
    if cache is not None and key is not None:
        cache.record(key, run_dir, k, stage)
    return seconds


STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)  # what `timeout`, systemd, a scheduler or Ctrl-C send
STOP_GRACE_SECONDS = 30.0  # how long a stage has to end after the signal is passed on, before it is killed


LOG_DRAIN_SECONDS = 10.0  # how long the log copy may go on after the stage ended (a worker it left may hold the pipe)
_LOG_PIECE_MAX = 1 << 16  # a line longer than this (no newline, no carriage return) is scrubbed and written in pieces


class StageLogCopy:
    """Copies a stage's output (its stdout and stderr: one pipe) into its log, scrubbed of every secret value
    (`secret_values`, read once: a stage's environment does not change), whoever wrote it — our code, an engine's C
    code or worker processes, a user's scorer, a child process. In a thread of its own, so the stage never blocks.

    A line at a time (up to a newline or a carriage return, so progress bars reach the log as they move); a line over
    _LOG_PIECE_MAX is written in pieces, each cut where no secret is (`cut_outside`), so every secret is scrubbed whole.
    Bytes that are not UTF-8 pass through unchanged. When the log cannot be written (a full disk), the copy keeps
    reading and drops what it reads — the stage must not block on a full pipe — and keeps the error for the runner."""

    def __init__(self, source: IO[bytes], log: IO[bytes]):
        self.source, self.log = source, log  # the pipe's file stays referenced (and open) while the thread reads it
        self.secrets = secret_values()
        self.encoded = [value.encode("utf-8", errors="surrogateescape") for value in self.secrets]
        self.longest = max((len(value) for value in self.encoded), default=0)
        self.error: OSError | None = None
        self.writing = True
        self.thread = threading.Thread(target=self._copy, name="stage-log", daemon=True)

    def start(self) -> StageLogCopy:
        self.thread.start()
        return self

    def _copy(self) -> None:
        pending = b""
        while chunk := os.read(self.source.fileno(), _LOG_PIECE_MAX):  # b"" once every writer has closed the pipe
            pending += chunk
            cut = max(pending.rfind(b"\n"), pending.rfind(b"\r")) + 1
            if cut == 0 and len(pending) >= _LOG_PIECE_MAX:  # a secret at the end may go on in the next read
                cut = max(cut_outside(pending, len(pending) - self.longest, self.encoded), 0)
            if cut:
                self._write(pending[:cut])
                pending = pending[cut:]
        if pending:
            self._write(pending)

    def _write(self, data: bytes) -> None:
        if not self.writing:
            return
        text = redact_secrets(data.decode("utf-8", errors="surrogateescape"), self.secrets)
        try:
            self.log.write(text.encode("utf-8", errors="surrogateescape"))
            self.log.flush()
        except ValueError:  # the log is closed: the runner went on while a worker the stage left still writes
            self.writing = False
        except OSError as error:  # a full disk, a quota, an I/O error
            self.writing, self.error = False, error


def cut_outside(data: bytes, cut: int, secrets: list[bytes]) -> int:
    """The largest position ≤ `cut` that falls inside no occurrence of any of `secrets` in `data`."""
    moved = True
    while moved and cut > 0:
        moved = False
        for value in secrets:
            start = data.rfind(value, 0, cut + len(value) - 1)  # the last occurrence that starts before `cut`
            if start != -1 and start + len(value) > cut:
                cut, moved = start, True
    return cut


def run_stage_process(argv: list[str], log: IO[bytes], *, env: dict[str, str] | None = None) -> tuple[int, int | None]:
    """Run a stage's process in a process group of its own; returns (its exit code, the stop signal received or None).
    Its output goes to `log` through a `StageLogCopy`; an error writing the log is raised once the stage has ended.

    SIGTERM, SIGINT or SIGHUP to `neat-data run` is passed on to that group and the stage is waited for —
    STOP_GRACE_SECONDS, then SIGKILL — and whatever is left in the group (an engine's workers) is killed: no stage
    outlives the run that started it, so a re-run never finds a second trainer writing beside its own. Without
    this, the stage would be orphaned and go on writing. What the stage left behind still holding its output after it
    ended (workers of a stage killed by the kernel) is killed too, after LOG_DRAIN_SECONDS."""
    child: subprocess.Popen[bytes] | None = None
    received: list[int] = []
    deadline: list[threading.Timer] = []
    copy: StageLogCopy | None = None

    def pass_on(signum: int, frame: object) -> None:
        received.append(signum)
        if child is None:  # it is being started: it gets the signal as soon as it exists
            return
        _signal_group(child.pid, signum)
        if not deadline:
            deadline.append(threading.Timer(STOP_GRACE_SECONDS, _signal_group, (child.pid, signal.SIGKILL)))
            deadline[0].start()

    in_main_thread = threading.current_thread() is threading.main_thread()  # only there can Python handle signals
    previous = {sig: signal.signal(sig, pass_on) for sig in STOP_SIGNALS} if in_main_thread else {}
    try:
        child = subprocess.Popen(
            argv,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
            preexec_fn=_ended_with(os.getpid()),
        )
        assert child.stdout is not None
        copy = StageLogCopy(child.stdout, log).start()
        if received:
            pass_on(received.pop(), None)
        returncode = child.wait()
    finally:
        if child is not None:
            if received:
                _signal_group(child.pid, signal.SIGKILL)  # what the stage started and left behind goes too
            if copy is not None:
                copy.thread.join(LOG_DRAIN_SECONDS)
                if copy.thread.is_alive():  # a process the stage left still holds its output
                    _signal_group(child.pid, signal.SIGKILL)
                    copy.thread.join(LOG_DRAIN_SECONDS)
        for timer in deadline:
            timer.cancel()
        for sig, handler in previous.items():  # only now: a stop while the log drains is still passed on
            signal.signal(sig, handler)
    if copy is not None and copy.error is not None:
        raise with_path(copy.error, log.name)
    return returncode, received[0] if received else None


def _ended_with(parent: int) -> Callable[[], None]:
    """For the stage's process, before it starts: SIGTERM when `parent` dies, however it dies (SIGKILL included, which
    cannot be passed on); the stage then ends its whole group (cli.rounds.stage). Linux only; elsewhere nothing."""

    def set_parent_death_signal() -> None:
        if sys.platform.startswith("linux"):
            import ctypes

            ctypes.CDLL(None).prctl(1, int(signal.SIGTERM))  # PR_SET_PDEATHSIG
        if os.getppid() != parent:  # it died while this process was being started
            os.kill(os.getpid(), signal.SIGTERM)

    return set_parent_death_signal


def _signal_group(group: int, signum: int) -> None:
    try:
        os.killpg(group, signum)
    except ProcessLookupError:  # the group is already gone
        pass


def run_rounds(recipe: Recipe, *, overwrite: bool = False, echo: Any = print, cache: StageCache | None = None) -> list[dict[str, Any]]:
    """Execute every unfinished stage of every round; returns the per-round table rows."""
    from neat_data.stages.round_report import round_rows, write_round_report

    run_dir = recipe.run_dir()
    # Everything that can be wrong with the recipe is found before the run folder is touched (or, with --overwrite,
    # emptied): the prompts and the split sizes, the models.
    slices = None if all(path.exists() for path in split_files(recipe, run_dir)) and not overwrite else plan_split(recipe)
    check_models(recipe)
    with RunLock(run_dir):
        manifest = read_manifest(run_dir)
        if overwrite and not manifest.is_empty():
            empty_folder(run_dir)
            manifest = Manifest()
        if not manifest.is_empty() and manifest.recipe is None:
            raise NeatError(
                "this folder holds a single-stage run, not a `neat-data run`; use another name/out or --overwrite",
                file=run_dir / MANIFEST,
            )
        changed = changed_fields(manifest.recipe, recipe) if manifest.recipe else []
        if changed:
            raise NeatError(
                f"run folder was made with another recipe (changed: {', '.join(changed)}); use --overwrite or another name",
                file=run_dir / MANIFEST,
                field=changed[0] if changed else None,
            )
        if slices is not None:
            write_split(recipe, run_dir, slices)
            manifest.split = {
                "heldout": len(slices.slices[0]),
                "per_round": [len(s) for s in slices.slices[1:]],
                "decontaminated": slices.decontaminated,
            }
        manifest.recipe, manifest.rounds_planned, manifest.command = recipe_identity(recipe), recipe.rounds, " ".join(sys.argv)
        write_manifest(run_dir, manifest)
        keys: dict[tuple[str, int], str] = {}  # each stage's key: its config and the keys of the stages it reads
        again: set[tuple[str, int]] = set()  # finished stages run again: their section changed, or what they read did
        for k in range(0, recipe.rounds + 1):
            folder = round_folder(run_dir, k)
            for stage in plan_round(recipe, run_dir, k):
                inputs = [keys[read] for read in stage.reads if read in keys]
                key = keys[(stage.label, k)] = stage_key(stage.label, stage.config_json(), run_dir, inputs)
                recorded = read_manifest(run_dir).finished_in_round(k, stage.label).get("key")
                if any(read in again for read in stage.reads) or (stage.kind.section_may_change and recorded not in (None, key)):
                    again.add((stage.label, k))
                run_stage(stage, folder, run_dir, k, echo, cache=cache, key=key, again=(stage.label, k) in again)
            push_round(recipe.push, run_dir, k, rounds=recipe.rounds, exports=list(recipe.exports), echo=echo)
        rows = round_rows(run_dir, recipe.rounds)
        write_round_report(run_dir, rows)
    return rows


def run_variants(recipe: Recipe, *, overwrite: bool = False, echo: Any = print) -> dict[str, list[dict[str, Any]]]:
    """Every variant of the recipe in turn (each resumable), sharing identical stages; then the comparison."""
    from neat_data.rounds.comparison import write_comparison

    parent = recipe.run_dir()
    recipes = {name: variant_recipe(recipe, name) for name in recipe.variants}
    for variant in recipes.values():  # everything checked before anything is written
        if not all(path.exists() for path in split_files(variant, variant.run_dir())) or overwrite:
            plan_split(variant)
        check_models(variant)
    with RunLock(parent, check_shards=False):
        manifest = read_manifest(parent)
        if overwrite and not manifest.is_empty():
            empty_folder(parent)
            manifest = Manifest()
        if not manifest.is_empty() and changed_fields(manifest.variants_recipe or {}, recipe):
            raise NeatError("run folder was made with another recipe; use --overwrite or another name", file=parent / MANIFEST)
        manifest.variants_recipe, manifest.variants = recipe_identity(recipe), list(recipes)
        write_manifest(parent, manifest)
    cache = StageCache(parent)
    results = {}
    for name, variant in recipes.items():
        echo(f"== variant {name}")
        results[name] = run_rounds(variant, echo=echo, cache=cache)
    write_comparison(parent, recipe, results)
    return results
