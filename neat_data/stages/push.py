"""Push stage: an export → a Hugging Face dataset repo, one config per call, private by default.

In:  `<run>/export/<format>/hf` (from `neat-data export`) and the run's manifest.
Out: the dataset's Parquet shards and card on the Hub (through `Dataset.push_to_hub`), plus the report
PNGs when present; a `push:<config>` entry in the manifest.
Run: `neat-data push runs/demo --repo-id me/neat-hh --config-name round_1` (token from $HF_TOKEN or the
variable named by --token-env; it is passed to the Hub client only, never written or printed).

The card (README.md) gets one section per config, between `<!-- neat-data:begin NAME -->` and
`<!-- neat-data:end NAME -->`: model, prompt libraries with content hashes, sampling, scorer, counts,
score statistics, the models' licences as their folders state them, a determinism record, the data audit's verdicts
(when `neat-data audit` ran; its audit.png is uploaded too) and the exact commands. `neat-data/<config>/croissant.json`
(stages/provenance.py) describes the Parquet files `datasets` pushed (downloaded back once to take their sha256). It is *merged* into the existing card: other configs' sections
and the YAML metadata that `datasets` maintains are kept. Rate limits (429) and concurrent commits
(412/409) are retried with exponential backoff that honours Retry-After; then a clear error.
"""

from __future__ import annotations

import functools
import json
import os
import random
import re
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict, Field, field_validator

from neat_data.core import layout
from neat_data.core.errors import NeatError, register_secret_env, secret_values
from neat_data.core.manifest import AuditRecord, GenerateRecord, Manifest, RankRecord, ScoreRecord, read_manifest, update_manifest
from neat_data.stages.audit.stage import card_lines
from neat_data.stages.export import ExportFormat

T = TypeVar("T")
RETRY_STATUSES = (409, 412, 429, 500, 502, 503, 504)


class PushConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    run: Path = Field(description="Run folder with an export.")
    repo_id: str = Field(pattern=r"^[A-Za-z0-9][\w.-]*/[\w.-]+$", description="Dataset repo, e.g. me/neat-hh.")

    @field_validator("repo_id")
    @classmethod
    def _hub_accepts(cls, value: str) -> str:
        """The Hub's own rules (no '--' or '..', no leading/trailing '-' or '.', at most 96 characters), checked here so
        a bad id is one line before anything is uploaded."""
        from huggingface_hub.utils import HFValidationError, validate_repo_id

        try:
            validate_repo_id(value)
        except HFValidationError as error:
            raise ValueError(str(error).split(":")[0]) from None
        return value

    config_name: str = Field("default", pattern=r"^[A-Za-z0-9][\w.-]*$", description="Dataset config, e.g. round_1.")
    format: ExportFormat = Field("h4", description="Which export of RUN to push.")
    public: bool = Field(False, description="Create the repo public (default: private).", json_schema_extra={"cli_false": "--private"})
    token_env: str = Field("HF_TOKEN", description="Environment variable holding the Hub token.")
    max_retries: int = Field(5, ge=0, description="Retries on 429 / 412 / 409 / 5xx.")
    backoff_base: float = Field(2.0, ge=0, description="First retry delay in seconds, doubling.")


def http_status(error: BaseException) -> int | None:
    """The HTTP status behind a huggingface_hub error (datasets wraps them; the cause may hold it)."""
    for candidate in (error, error.__context__, error.__cause__):
        response = getattr(candidate, "response", None)
        status = getattr(response, "status_code", None)
        if isinstance(status, int):
            return status
    return None


def with_retries(
    action: Callable[[], T], *, what: str, max_retries: int, backoff_base: float, sleep: Callable[[float], None] = time.sleep
) -> T:
    """Run `action`, retrying Hub rate limits / commit races / 5xx; NeatError after `max_retries` retries."""
    from huggingface_hub.errors import HfHubHTTPError

    for attempt in range(max_retries + 1):
        try:
            return action()
        except HfHubHTTPError as error:
            status = http_status(error)
            if status not in RETRY_STATUSES:
                raise NeatError(f"{what} failed: HTTP {status}: {str(error).splitlines()[0]}", field="repo_id") from None
            if attempt == max_retries:
                raise NeatError(
                    f"{what} failed after {max_retries + 1} attempts: HTTP {status} "
                    f"({'rate limited' if status == 429 else 'concurrent commit' if status in (409, 412) else 'server error'})",
                    field="repo_id",
                ) from None
            response = getattr(error, "response", None)
            retry_after = response.headers.get("retry-after") if response is not None else None
            try:
                delay = float(retry_after) if retry_after else backoff_base * 2**attempt * (0.5 + random.random() / 2)
            except ValueError:
                delay = backoff_base * 2**attempt
            sleep(min(delay, 300.0))
    raise AssertionError("unreachable")


def download_card(api: Any, repo_id: str, *, max_retries: int, backoff_base: float) -> str | None:
    """The dataset repo's README.md, or None when it has none yet."""
    from huggingface_hub.errors import EntryNotFoundError, RemoteEntryNotFoundError

    def fetch() -> str | None:  # "no card yet" is an answer, not a failure for with_retries to report
        try:
            return str(api.hf_hub_download(repo_id, "README.md", repo_type="dataset"))
        except (EntryNotFoundError, RemoteEntryNotFoundError):
            return None

    path = with_retries(fetch, what="card download", max_retries=max_retries, backoff_base=backoff_base)
    return None if path is None else Path(path).read_text(encoding="utf-8")


def upload_file(
    api: Any,
    repo_id: str,
    path_in_repo: str,
    data: bytes,
    *,
    token: str | None,
    max_retries: int,
    backoff_base: float,
    readable: bytes | None = None,
) -> None:
    """One file into the dataset repo, retried like every Hub call. Refuses a file whose content contains the Hub
    token or another secret the program was handed (`readable`: that content where the file packs it, as view.html
    does): a card or page is built from manifests and data that should never hold one, so this fires only on a
    leak — better than publishing it."""
    content = data if readable is None else readable
    if token and token.encode("utf-8") in content:
        raise NeatError(f"refusing to upload {path_in_repo}: it contains the Hub token", field="token_env")
    if any(secret.encode("utf-8") in content for secret in secret_values(handed_only=True)):
        raise NeatError(f"refusing to upload {path_in_repo}: it contains a secret from the environment")
    with_retries(
        functools.partial(
            api.upload_file,
            path_or_fileobj=data,
            path_in_repo=path_in_repo,
            repo_id=repo_id,
            repo_type="dataset",
            commit_message=f"neat-data: {path_in_repo}",
        ),
        what=f"upload of {path_in_repo}",
        max_retries=max_retries,
        backoff_base=backoff_base,
    )


def score_statistics(run_dir: Path) -> dict[str, dict[str, float]]:
    if not layout.SCORED.path(run_dir).is_dir():
        return {}
    rows = layout.SCORED.rows(run_dir).read().to_pylist()
    stats = {}
    for steering in ("pos", "neg", "none"):
        values = [r["score"] for r in rows if r["steering"] == steering and r["score_status"] == "ok"]
        if values:
            stats[steering] = {"n": len(values), "mean": round(statistics.fmean(values), 4), "median": round(statistics.median(values), 4)}
    return stats


def card_section(
    config: PushConfig, manifest: Manifest, splits: dict[str, int], stats: dict[str, Any], push_command: list[str] | None = None
) -> str:
    """The markdown section describing one config, built from the manifest (no secret is in a manifest)."""
    stages = manifest.stages
    record = manifest.record("generate", GenerateRecord)
    generate, score = record.config, manifest.stage("score").config
    lines = [
        f"<!-- neat-data:begin {config.config_name} -->",
        f"## Config `{config.config_name}`",
        "",
        f"Built with [neat-data](https://pypi.org/project/neat-data/): `{config.format}` format; splits: "
        + ", ".join(f"`{name}` ({rows} rows)" for name, rows in splits.items())
        + ".",
        "",
    ]
    if generate:
        sampling = generate.get("sampling", {})
        lines += [
            f"- **Model**: `{generate.get('model')}` (backend `{generate.get('backend')}`), round {generate.get('round')}",
            f"- **Prompts**: `{(record.prompts or {}).get('source')}` ({(record.prompts or {}).get('count')} prompts)",
            f"- **Responses per prompt**: {generate.get('num_pos')} positive, {generate.get('num_neg')} negative, "
            f"{generate.get('num_neutral')} unsteered",
            "- **Prompt-pair libraries**: "
            + ", ".join(f"`{lib['name']}` (sha256 `{lib['sha256_16']}`, {lib['pairs']} pairs)" for lib in record.pair_libraries or []),
            f"- **Sampling**: temperature {sampling.get('temperature')}, top_p {sampling.get('top_p')}, "
            f"max_tokens {sampling.get('max_tokens')}, seed {sampling.get('seed')}",
        ]
    if score:
        lines.append(f"- **Scorer**: `{manifest.record('score', ScoreRecord).scorer_name}`, negatives `{score.get('negative_score')}`")
    if stats:
        lines += ["", "| steering | n | mean score | median score |", "|---|---|---|---|"]
        lines += [f"| {s} | {v['n']} | {v['mean']} | {v['median']} |" for s, v in stats.items()]
    if "rank" in stages:
        rank = manifest.record("rank", RankRecord)
        summary = rank.summary
        lines += [
            "",
            f"Pairs: strategy `{rank.config.get('pairs')}`, kept {summary.get('pairs_kept')}, "
            f"dropped {json.dumps(summary.get('dropped', {}))}.",
        ]
    lines += provenance_lines(manifest)
    if "audit" in stages:
        lines += card_lines(manifest.record("audit", AuditRecord))
    order = ["generate", "score", "rank", "audit", f"export:{config.format}"]
    commands = [" ".join(command) for name in order if (command := manifest.stage(name).command)]
    if push_command:
        commands.append(" ".join(push_command))
    if commands:
        lines += ["", "Commands:", "", "```", *commands, "```"]
    lines.append(f"<!-- neat-data:end {config.config_name} -->")
    return "\n".join(lines)


def provenance_lines(manifest: Manifest) -> list[str]:
    """The dataset it was derived from, if any, the models' licences (as their folders state them) and the determinism
    record (stages/provenance.py)."""
    from neat_data.stages.provenance import derived_from, determinism, model_licence

    models = {"generator": manifest.record("generate", GenerateRecord).model}
    score_model = manifest.stage("score").config.get("model")
    if score_model:
        models["scorer"] = score_model
    licences = [
        f"{role} `{spec}`: {item['licence']} ({item['source']})" for role, spec in models.items() if spec for item in [model_licence(spec)]
    ]
    record = determinism(manifest)
    lines = []
    source = derived_from(manifest)
    if source is not None:
        files = "; ".join(f"`{item['name']}` sha256 `{item['sha256']}`" for item in source.get("files", [])) or source.get("revision")
        lines.append(f"- **Derived from** `{source['name']}` ({files}; licence: {source['license']}): {source['description']}.")
    if licences:
        lines.append(
            '- **Model licences** (as the model folders state them; "unknown" when they do not — never guessed): ' + "; ".join(licences)
        )
    if record.get("backend"):
        settings = ", ".join(f"{k} {v}" for k, v in record["batch_and_concurrency"].items()) or "defaults"
        lines.append(
            f"- **Determinism**: backend `{record['backend']}` (engine {record['engine_version'] or 'version unknown'}), dtype "
            f"`{record['dtype'] or 'n/a'}`, seed {record['seed']} (one per request, derived), batch / concurrency: {settings}; "
            f"chat template sha256 `{record['chat_template_sha256_16'] or 'unknown'}`. Bitwise reproducible: {record['bitwise_reproducible']}."
        )
    return lines


def pushed_croissant(
    api: Any, config: PushConfig, manifest: Manifest, push_command: list[str] | None, retry: dict[str, Any]
) -> tuple[bytes | None, str]:
    """croissant.json for the Parquet files `datasets` just pushed (each downloaded back to hash it), or (None, why not)."""
    from neat_data.stages.provenance import croissant

    files = with_retries(lambda: api.list_repo_files(config.repo_id, repo_type="dataset"), what="file listing", **retry)
    shards: dict[str, list[str]] = {}
    for path in files:
        folder, _, name = path.rpartition("/")
        if folder == config.config_name and name.endswith(".parquet"):
            shards.setdefault(name.split("-")[0], []).append(path)
    several = [split for split, paths in shards.items() if len(paths) > 1]
    if not shards or several:
        return None, f"croissant.json not written: {'no Parquet files found' if not shards else f'split {several[0]} has several shards'}"
    located = {}
    for split, (path,) in sorted(shards.items()):
        local = with_retries(
            functools.partial(api.hf_hub_download, config.repo_id, path, repo_type="dataset"), what=f"download of {path}", **retry
        )
        located[split] = (Path(local), f"https://huggingface.co/datasets/{config.repo_id}/resolve/main/{path}")
    document = croissant(
        manifest,
        name=f"{config.repo_id.split('/')[-1]}-{config.config_name}",
        description=f"Config `{config.config_name}` of {config.repo_id}: neat-data's `{config.format}` layout (docs/FORMATS.md).",
        splits=located,
        url=f"https://huggingface.co/datasets/{config.repo_id}",
        extra_commands={"push": push_command},
    )
    return json.dumps(document, indent=2, ensure_ascii=False).encode("utf-8"), "croissant.json written"


def merge_card(existing: str | None, section: str, config_name: str, repo_id: str) -> str:
    """Put `section` into the card: replace this config's section, keep everything else (YAML, other configs)."""
    if not existing:
        return f"# {repo_id}\n\nExpanded preference data (NEAT: negative-prompt-driven alignment).\n\n{section}\n"
    pattern = re.compile(rf"<!-- neat-data:begin {re.escape(config_name)} -->.*?<!-- neat-data:end {re.escape(config_name)} -->", re.S)
    if pattern.search(existing):
        return pattern.sub(lambda _: section, existing)
    return existing.rstrip("\n") + "\n\n" + section + "\n"


def run_push(config: PushConfig, argv: list[str] | None = None) -> dict[str, Any]:
    from datasets import load_from_disk
    from huggingface_hub import HfApi

    run_dir = Path(config.run)
    folder = layout.export(run_dir, config.format) / "hf"
    if not folder.is_dir():
        raise NeatError(f"no {config.format} export (run `neat-data export {run_dir} --format {config.format}` first)", file=folder)
    register_secret_env(config.token_env)
    token = os.environ.get(config.token_env) or None
    if token is None:
        from huggingface_hub import get_token

        if get_token() is None:  # no variable and no `hf auth login`: say so before reading anything
            raise NeatError(
                f"no Hub token: set ${config.token_env} (or name another variable with --token-env), or log in with `hf auth login`",
                option="token_env",
            )
    api = HfApi(token=token)
    retry: dict[str, Any] = {"max_retries": config.max_retries, "backoff_base": config.backoff_base}
    dataset = load_from_disk(str(folder))
    splits = {name: len(split) for name, split in dataset.items()}
    for name, split in dataset.items():
        with_retries(
            functools.partial(
                split.push_to_hub, config.repo_id, config_name=config.config_name, split=name, private=not config.public, token=token
            ),
            what=f"push of split '{name}'",
            **retry,
        )
    existing = download_card(api, config.repo_id, **retry)
    manifest = read_manifest(run_dir)
    section = card_section(config, manifest, splits, score_statistics(run_dir), argv)
    card = merge_card(existing, section, config.config_name, config.repo_id)
    uploads = [("README.md", card.encode("utf-8"))]
    croissant_bytes, croissant_note = pushed_croissant(api, config, manifest, argv, retry)
    if croissant_bytes is not None:
        uploads.append((f"neat-data/{config.config_name}/croissant.json", croissant_bytes))
    for png in sorted(layout.REPORT.path(run_dir).glob("*.png")) + sorted(layout.AUDIT.path(run_dir).glob("*.png")):
        uploads.append((f"neat-data/{config.config_name}/{png.name}", png.read_bytes()))
    for path_in_repo, data in uploads:
        upload_file(api, config.repo_id, path_in_repo, data, token=token, **retry)
    entry = {"config": config.model_dump(mode="json"), "command": argv, "splits": splits, "croissant": croissant_note, "finished": True}
    update_manifest(run_dir, f"push:{config.config_name}", entry)
    return entry
