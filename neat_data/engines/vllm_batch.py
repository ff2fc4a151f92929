"""Backend `vllm-batch`: the openai-batch files, run offline by vLLM's own batch runner.

In:  requests (each with an `id`), a local model (alias, folder or Hub id), VLLMOptions, a state folder + journal.
Out: (index, RequestResult) per request, mapped from run_batch's output by the same code as openai-batch
     (neat_data.engines.batch_core) — so GPU users get the offline batch path with identical files, and the file
     format is checked against a real implementation.

Each batch file runs as `python -m vllm.entrypoints.openai.run_batch -i <name>.input.jsonl -o <part> --model …
--served-model-name <model as given>` in a subprocess (its log: `<name>.log` in the state folder). The output is
written under a temporary name and renamed when the run succeeds, so a killed run leaves no half output; the
next run finds the record `running` without output and runs the file again (nothing is paid twice locally).
Engine flags follow the vllm backend: dtype float32, eager and a 16384-token step budget on CPU,
`VLLM_CPU_KVCACHE_SPACE` from kv_cache_gb (default 2), prefix caching, the run seed.

System role: as the vllm backend does, the chat template decides before anything is sent — a template that
rejects the system role gets the merged messages (rows record system_mode "merged"). Fewer choices than n cannot
happen (vLLM honours n). A run that fails (exit status ≠ 0) makes every request of its file an error row with the
log's last line; `--retry-errors` runs them again.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from neat_data.engines.base import narrow
from neat_data.engines.batch_base import BatchBackendBase, ControlError
from neat_data.engines.batch_journal import BatchJournal, BatchRecord
from neat_data.engines.openai_batch import OpenAIBatchOptions
from neat_data.engines.vllm_backend import VLLMOptions

_PROGRESS = re.compile(r"Running batch:.*?\|\s*(\d+)/(\d+)")


class VLLMBatchBackend(BatchBackendBase):
    name = "vllm-batch"

    def __init__(
        self,
        model: str,
        options: VLLMOptions,
        batch_options: OpenAIBatchOptions,
        *,
        state_dir: Path,
        journal: BatchJournal | None = None,
        seed: int = 0,
        model_path: str | None = None,
        progress: bool = True,
    ):
        """`model`: the user's spec, recorded in rows and served under that name; `model_path`: what vLLM loads
        (default: `resolve_model(model)`)."""
        super().__init__(
            model,
            state_dir=state_dir,
            journal=journal,
            secret=None,
            max_requests=batch_options.batch_max_requests,
            max_bytes=batch_options.batch_max_bytes,
            no_wait=False,
            poll_interval=1.0,
            poll_max=1.0,
            progress=progress,
        )
        if model_path is None:
            from neat_data.core.models import resolve_model

            model_path = resolve_model(model)
        self.model_path = model_path
        self.options = options
        self.seed = seed
        self._system_ok: bool | None = None

    @classmethod
    def from_options(
        cls, model: str, options: Any, *, seed: int = 0, state_dir: Path, journal: BatchJournal | None = None, progress: bool = True
    ) -> VLLMBatchBackend:
        vllm_options, batch_options = narrow(options, VLLMOptions), narrow(options, OpenAIBatchOptions)
        return cls(model, vllm_options, batch_options, state_dir=state_dir, journal=journal, seed=seed, progress=progress)

    def _merge_system(self) -> bool:
        """True when the model's chat template rejects the system role (checked once, as the vllm backend does)."""
        if self._system_ok is None:
            from neat_data.core.messages import template_accepts_system

            try:
                from transformers import AutoTokenizer

                self._system_ok = template_accepts_system(AutoTokenizer.from_pretrained(self.model_path))
            except Exception:  # no tokenizer to ask: send the system role and let the server say no (an error row)
                self._system_ok = True
        return not self._system_ok

    def command(self, input_path: Path, output_path: Path) -> tuple[list[str], dict[str, str]]:
        """The run_batch command line and environment for one file."""
        from neat_data.core.errors import NeatError

        try:
            from vllm.platforms import current_platform
        except ImportError:
            raise NeatError(
                "backend 'vllm-batch' needs vLLM: pip install 'neat-data[vllm]' (GPU) or run scripts/setup.sh (CPU)", field="backend"
            ) from None

        args = self.options.engine_args(self.model_path, seed=self.seed, on_cpu=current_platform.is_cpu())
        command = [sys.executable, "-m", "vllm.entrypoints.openai.run_batch", "-i", str(input_path), "-o", str(output_path)]
        command += ["--served-model-name", self.model]
        env = {**os.environ}
        if current_platform.is_cpu():
            from neat_data.engines.vllm_backend import cpu_engine_environment

            env.update(cpu_engine_environment(env))
        for name, value in args.items():  # the vllm backend's engine arguments, as run_batch's flags
            if name == "kv_cache_memory_bytes":  # the CPU KV cache: run_batch reads it from the environment, in GiB
                env["VLLM_CPU_KVCACHE_SPACE"] = str(max(1, round(value / 2**30)))
            elif value is True:
                command.append("--" + name.replace("_", "-"))
            elif value is not False:
                command += ["--" + name.replace("_", "-"), str(value)]
        return command, env

    def _submit(self, record: BatchRecord, fresh: bool) -> None:
        """Run the file to the end (a local run has nothing to attach to: a killed one is simply run again)."""
        from tqdm.auto import tqdm

        from neat_data.core.files import atomic_write_bytes

        input_path = self.state_dir / record.input_file
        output_path = self.state_dir / f"{record.name}.output.jsonl"
        part = self.state_dir / f".{record.name}.output.{os.getpid()}.part"
        log_path = self.state_dir / f"{record.name}.log"
        command, env = self.command(input_path, part)
        for stale in self.state_dir.glob(f".{record.name}.output.*.part"):  # a killed run's half output
            stale.unlink(missing_ok=True)
        record.status, record.errors = "running", []
        self._save()
        self.stats["batches_submitted"] += 1
        bar = tqdm(total=record.requests, unit="req", desc=f"vllm-batch {record.name}", disable=not self.progress)
        try:
            with open(log_path, "wb") as log:
                process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env, preexec_fn=_die_with_parent)
                try:
                    while process.poll() is None:
                        time.sleep(1.0)
                        bar.n = _progress(log_path, bar.n)
                        bar.refresh()
                except BaseException:  # Ctrl-C or an error here: no engine may outlive its run
                    process.kill()
                    process.wait()
                    raise
        finally:
            bar.close()
        if process.returncode != 0 or not part.exists():
            part.unlink(missing_ok=True)
            record.status, record.collected = "failed", True
            record.errors = [f"run_batch exited with {process.returncode}: {_last_error_line(log_path)} (log {log_path})"]
        else:
            atomic_write_bytes(output_path, part.read_bytes())
            part.unlink()
            record.status, record.collected = "completed", True
            record.request_counts = {"total": record.requests, "completed": record.requests, "failed": 0}
        self._save()

    def _refresh(self, record: BatchRecord) -> None:
        if record.status == "running":  # a run killed with its parent: run it again
            self._submit(record, fresh=False)

    def _download(self, record: BatchRecord) -> None:
        if not (self.state_dir / f"{record.name}.output.jsonl").exists() and record.status == "completed":
            raise ControlError(f"the output of {record.name} is missing from {self.state_dir}")


def _die_with_parent() -> None:
    """In the child, before exec: on Linux, be killed when the parent dies (a SIGKILLed stage leaves no engine
    holding the GPU while its re-run starts another). Elsewhere nothing."""
    try:
        import ctypes
        import signal

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG = 1
    except (OSError, AttributeError):
        pass


def _progress(log_path: Path, current: int) -> int:
    """Requests done, from run_batch's progress lines ("Running batch: 40% Completed | 4/10 [...]")."""
    try:
        with open(log_path, "rb") as handle:
            handle.seek(max(0, log_path.stat().st_size - 4096))
            tail = handle.read().decode("utf-8", "replace")
    except OSError:
        return current
    found = _PROGRESS.findall(tail)
    return int(found[-1][0]) if found else current


def _last_error_line(log_path: Path) -> str:
    try:
        lines = [line.strip() for line in log_path.read_text(encoding="utf-8", errors="replace").splitlines() if line.strip()]
    except OSError:
        return "no log"
    errors = [line for line in lines if re.search(r"(Error|Exception)\b", line)]
    return (errors or lines or ["no output"])[-1][:300]
