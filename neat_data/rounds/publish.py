"""Publishing a `neat-data run`: each finished round's exports go to a Hub dataset repo as it finishes.

In:  a recipe's `push:` section (`PushSpec`), the run folder, a finished round k ≥ 1.
Out: on the Hub: config `round_NN` = the round's `ranked` export (what the trainer used; every run has it)
     and `round_NN-<format>` for each other export of the recipe (`round_01-trl`, …), each with its section
     of the merged dataset card (`neat_data.stages.push.run_push`); then `neat-data/rounds.png`,
     `neat-data/view.html` (`neat-data view` of the whole run) and a `rounds` card section with the
     per-round table. In the run manifest: `push.<k>` = {finished, repo_id, configs, attempts, seconds} or,
     after a failure, {finished: false, error, attempts}.
Run: by `neat-data run RECIPE` (`rounds.run_rounds` calls `push_round` after each round's stages).

A failed push never fails the round: the reason is recorded (without the token) and printed, and the next
`neat-data run` of the folder retries it (finished stages are skipped, unfinished pushes are not).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from neat_data.core.errors import NeatError, redact_secrets, register_secret_env
from neat_data.core.layout import round_folder
from neat_data.core.manifest import edit_manifest, read_manifest

MAIN_EXPORT = "ranked"  # config round_NN; the other exports get round_NN-<format>


class PushSpec(BaseModel):
    """A recipe's `push:` section."""

    model_config = ConfigDict(extra="forbid")

    repo_id: str = Field(pattern=r"^[A-Za-z0-9][\w.-]*/[\w.-]+$", description="Dataset repo, e.g. me/neat-hh.")
    private: bool = Field(True, description="Create the repo private (the default) or public.")
    token_env: str = Field("HF_TOKEN", description="Environment variable holding the Hub token (never written anywhere).")
    max_retries: int = Field(5, ge=0, description="Retries of each Hub call on 429 / 412 / 409 / 5xx.")
    backoff_base: float = Field(2.0, ge=0, description="First retry delay in seconds, doubling.")


def config_names(k: int, exports: list[str]) -> dict[str, str]:
    """export format → dataset config of round k: ranked → round_NN, any other → round_NN-<format>."""
    return {fmt: f"round_{k:02d}" if fmt == MAIN_EXPORT else f"round_{k:02d}-{fmt}" for fmt in exports}


def _without_secret(text: str, spec: PushSpec) -> str:
    register_secret_env(spec.token_env)
    return redact_secrets(text)


def rounds_card_section(run_dir: Path) -> str:
    table = (run_dir / "rounds.md").read_text(encoding="utf-8") if (run_dir / "rounds.md").is_file() else ""
    return "\n".join(
        [
            "<!-- neat-data:begin rounds -->",
            "## Rounds",
            "",
            "Held-out evaluation of the base model (round 0) and of the policy after each round "
            "(`neat-data run`): reward with its 95% interval, win rate against the base model, perplexity.",
            "",
            table.strip(),
            "",
            "![rounds](neat-data/rounds.png)",
            "",
            "`neat-data/view.html` shows every prompt, response, score and pair (download it and open it in a browser).",
            "<!-- neat-data:end rounds -->",
        ]
    )


def upload_run_files(spec: PushSpec, run_dir: Path) -> list[str]:
    """rounds.png, view.html and the card's `rounds` section (merged like the per-config sections)."""
    from huggingface_hub import HfApi

    from neat_data.stages.push import download_card, merge_card, upload_file
    from neat_data.view.page import readable_bytes

    token = os.environ.get(spec.token_env) or None
    api = HfApi(token=token)
    retry: dict[str, Any] = {"max_retries": spec.max_retries, "backoff_base": spec.backoff_base}
    uploaded = []
    for name in ("rounds.png", "view.html"):
        if (run_dir / name).is_file():
            data = (run_dir / name).read_bytes()
            readable = readable_bytes(data) if name == "view.html" else None  # its data is packed: search it unpacked
            upload_file(api, spec.repo_id, f"neat-data/{name}", data, token=token, readable=readable, **retry)
            uploaded.append(f"neat-data/{name}")
    existing = download_card(api, spec.repo_id, **retry)
    card = merge_card(existing, rounds_card_section(run_dir), "rounds", spec.repo_id)
    upload_file(api, spec.repo_id, "README.md", card.encode("utf-8"), token=token, **retry)
    return uploaded + ["README.md"]


def push_round(
    spec: PushSpec | None, run_dir: Path, k: int, *, rounds: int, exports: list[str], echo: Callable[[str], Any]
) -> dict[str, Any] | None:
    """Push finished round k unless the manifest says it was pushed; record the outcome. Never raises for a
    Hub or data problem (only KeyboardInterrupt and the like pass through)."""
    if spec is None or k < 1:
        return None
    done = read_manifest(run_dir).push.get(str(k), {})
    if done.get("finished"):
        echo(f"round {k} · push: done ({', '.join(done.get('configs', {}).values())}), skipped")
        return done
    from neat_data.stages.push import PushConfig, run_push
    from neat_data.stages.round_report import round_rows, write_round_report
    from neat_data.view import ViewConfig, build_view

    started = time.time()
    attempts = int(done.get("attempts", 0)) + 1
    configs = config_names(k, exports)
    folder = round_folder(run_dir, k)
    echo(f"round {k} · push to {spec.repo_id} ({', '.join(configs.values())}) …")
    try:
        write_round_report(run_dir, round_rows(run_dir, rounds))  # the table and curve as of this round
        try:
            build_view(ViewConfig(run=run_dir))
        except NeatError as error:  # the page is a courtesy: the data goes out without it
            (run_dir / "view.html").unlink(missing_ok=True)
            echo(f"    no view.html for the Hub: {error.one_line()}")
        for fmt, config_name in configs.items():
            run_push(
                PushConfig(
                    run=folder,
                    repo_id=spec.repo_id,
                    config_name=config_name,
                    format=fmt,
                    public=not spec.private,
                    token_env=spec.token_env,
                    max_retries=spec.max_retries,
                    backoff_base=spec.backoff_base,
                ),
                argv=[
                    "neat-data",
                    "push",
                    str(folder),
                    "--repo-id",
                    spec.repo_id,
                    "--config-name",
                    config_name,
                    "--format",
                    fmt,
                    *([] if spec.private else ["--public"]),
                    *(["--token-env", spec.token_env] if spec.token_env != "HF_TOKEN" else []),
                ],
            )
        files = upload_run_files(spec, run_dir)
        entry: dict[str, Any] = {
            "finished": True,
            "repo_id": spec.repo_id,
            "private": spec.private,
            "configs": configs,
            "files": files,
            "attempts": attempts,
            "seconds": round(time.time() - started, 2),
            "at": time.strftime("%Y-%m-%d %H:%M:%S"),
        }
        echo(f"    pushed {', '.join(configs.values())} + {', '.join(files)} to {spec.repo_id} ({'private' if spec.private else 'public'})")
    except Exception as error:  # a failed push is recorded and retried by the next run, never a failed round
        text = error.one_line() if isinstance(error, NeatError) else f"{type(error).__name__}: {error}"
        reason = _without_secret(" ".join(text.split())[:1000], spec)
        entry = {
            "finished": False,
            "repo_id": spec.repo_id,
            "configs": configs,
            "attempts": attempts,
            "error": reason,
            "at": time.strftime("%Y-%m-%d %H:%M:%S"),
        }
        echo(f"    push failed (attempt {attempts}; the round is finished, the next `neat-data run` retries the push): {reason}")
    with edit_manifest(run_dir) as manifest:
        manifest.push[str(k)] = entry
    return entry
