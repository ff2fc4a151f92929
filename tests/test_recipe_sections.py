"""Recipe sections are flat: a section takes any field of its stage's config beside the named ones; the fields the
round runner sets are refused; the older `options: {…}` form loads to the same stage configs."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from conftest import write_jsonl

from neat_data.core.errors import NeatError
from neat_data.rounds.recipe import load_recipe, plan_round


def recipe_file(tmp_path: Path, name: str, **sections: object) -> Path:
    prompts = write_jsonl(tmp_path / "p.jsonl", [{"prompt": f"q{i}"} for i in range(8)])
    raw = {"name": "t", "model": "m", "prompts": {"source": str(prompts), "heldout": 2, "per_round": 2}, **sections}
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(raw), encoding="utf-8")
    return path


def configs(path: Path) -> dict[str, dict]:
    recipe = load_recipe(path)
    return {stage.label: stage.config.model_dump(mode="json") for k in (0, 1) for stage in plan_round(recipe, Path("runs/t"), k)}


def test_flat_fields_reach_the_stage_configs_and_the_older_options_form_loads_the_same(tmp_path: Path):
    flat = recipe_file(
        tmp_path,
        "flat",
        generate={"max_tokens": 32, "max_model_len": 512, "system_mode": "merged"},
        score={"batch_size": 3},
        evaluate={"max_tokens": 16, "max_model_len": 256},
    )
    older = recipe_file(
        tmp_path,
        "older",
        generate={"max_tokens": 32, "options": {"max_model_len": 512, "system_mode": "merged"}},
        score={"options": {"batch_size": 3}},
        evaluate={"max_tokens": 16, "options": {"max_model_len": 256}},
    )
    planned = configs(flat)
    assert planned["generate"]["max_model_len"] == 512 and planned["generate"]["system_mode"] == "merged"
    assert planned["generate"]["sampling"]["max_tokens"] == 32 and planned["score"]["batch_size"] == 3
    assert planned["evaluate"]["generate"]["max_model_len"] == 256 and planned["evaluate"]["generate"]["sampling"]["max_tokens"] == 16
    assert planned["evaluate"]["score"]["batch_size"] == 3  # the evaluation scores with the run's scorer settings
    assert configs(older) == planned


@pytest.mark.parametrize(
    ("sections", "expected"),
    [
        ({"generate": {"max_modle_len": 512}}, "field 'generate.max_modle_len': Extra inputs are not permitted"),
        ({"generate": {"model": "other"}}, "model is set by the round runner"),
        ({"evaluate": {"num_neutral": 3}}, "num_neutral is set by the round runner"),
        ({"score": {"run": "x"}}, "run is set by the round runner"),
        ({"generate": {"max_model_len": 512, "options": {"max_model_len": 256}}}, "options.max_model_len duplicates max_model_len"),
        ({"score": {"batch_size": 0}}, "field 'score.batch_size'"),
    ],
)
def test_a_bad_section_key_is_one_line_naming_it(tmp_path: Path, sections: dict, expected: str):
    path = recipe_file(tmp_path, "bad", **sections)
    with pytest.raises(NeatError) as error:
        load_recipe(path)
    line = error.value.one_line()
    assert str(path) in line and expected in line, line


def test_the_fields_refused_in_a_section_are_the_ones_the_runner_sets(tmp_path: Path):
    from neat_data.rounds.sections import RUNNER_SETS, AuditSpec, GenerateSpec, RankSpec, ScoreSpec, TrainSpec

    recipe = load_recipe(recipe_file(tmp_path, "r", rank={"min_margin": 0.1}, audit={"truncated_max": 0.2}, train={"lr": 1e-5}))
    planned = {stage.label: stage.values for stage in plan_round(recipe, Path("runs/t"), 2)}
    for section, spec in (("generate", GenerateSpec), ("score", ScoreSpec), ("rank", RankSpec), ("audit", AuditSpec), ("train", TrainSpec)):
        own = set(spec.model_fields) | set(getattr(recipe, section).stage_fields())
        runner = set(planned[section]) - own
        assert runner <= RUNNER_SETS[section], (section, runner - RUNNER_SETS[section])
    assert set(planned["generate"]["sampling"]) - set(GenerateSpec.model_fields) == {"seed"} <= RUNNER_SETS["generate"]


@pytest.mark.parametrize(
    ("section", "expected"),
    [
        ({"generate": {"options": None}}, "options must be a mapping of generate fields, not NoneType"),
        ({"generate": {"options": [1]}}, "options must be a mapping of generate fields, not list"),
        ({"score": {"options": ""}}, "options must be a mapping of score fields, not str"),
        ({"generate": {"options": {"seed": 3}}}, "options.seed is set by the round runner"),
        ({"rank": {"run": "/elsewhere"}}, "run is set by the round runner"),
        ({"train": {"model": "gpt2"}}, "model is set by the round runner"),
        ({"train": {"out": "/tmp/out"}}, "out is set by the round runner"),
        ({"evaluate": {"max_modle_len": 5}}, "field 'evaluate.max_modle_len': Extra inputs are not permitted"),
        ({"evaluate": {"max_tokens": 0}}, "field 'evaluate.max_tokens'"),
    ],
)
def test_odd_section_values_are_one_line(tmp_path: Path, section: dict, expected: str):
    path = recipe_file(tmp_path, "odd", **section)
    with pytest.raises(NeatError) as error:
        load_recipe(path)
    assert expected in error.value.one_line(), error.value.one_line()


def test_redo_plans_one_generate_pass_per_class_after_generate_and_score_reads_them_all(tmp_path: Path):
    recipe = load_recipe(recipe_file(tmp_path, "r", redo={"truncated": {"max_tokens": 64}, "error": {}}, generate={"max_tokens": 8}))
    planned = plan_round(recipe, Path("runs/t"), 1)
    labels = [stage.label for stage in planned]  # in the recipe's order (recipe_file writes YAML keys sorted)
    assert labels[:4] == ["generate", "redo-error", "redo-truncated", "score"]
    by_label = {stage.label: stage for stage in planned}
    truncated, error = by_label["redo-truncated"].config, by_label["redo-error"].config
    assert truncated.redo == ["truncated"] and truncated.sampling.max_tokens == 64 and error.sampling.max_tokens == 8
    assert by_label["redo-error"].reads == [("generate", 1)] and by_label["redo-truncated"].reads == [("redo-error", 1)]
    assert by_label["score"].reads == [("generate", 1), ("redo-error", 1), ("redo-truncated", 1)]
    assert by_label["redo-error"].outputs() == ["generations"]
    for bad, expected in (
        ({"redo": {"cut": {}}}, "field 'redo.cut"),
        ({"redo": {"truncated": {"max_tokens": 0}}}, "field 'redo.truncated.max_tokens'"),
        ({"redo": {"truncated": {"model": "x"}}}, "field 'redo.truncated.model': Extra inputs are not permitted"),
        ({"variants": {"a": {"redo": {"error": {}}}}}, "variant 'a' changes 'redo.error'"),
    ):
        with pytest.raises(NeatError) as error_line:
            load_recipe(recipe_file(tmp_path, "bad", **bad))
        assert expected in error_line.value.one_line(), error_line.value.one_line()


@pytest.mark.slow
def test_a_recipe_redo_pass_regenerates_the_truncated_rows_of_each_round(tmp_path: Path, tiny_model: Path, monkeypatch):
    """A round against a server that cuts answers at max_tokens: generate at 2 tokens cuts every answer; the recipe's
    redo: {truncated: {max_tokens: 64}} generates exactly those rows again (same keys, new sampling), score rescores
    them, and the ranked lists hold the whole answers."""
    import json

    import pyarrow.compute as pc

    from neat_data.core.runfolder import ShardedTable
    from neat_data.core.schemas import GENERATIONS, SCORED
    from neat_data.rounds.runner import run_rounds
    from neat_data.testing.fake_openai_server import FakeOpenAIServer, ServerSettings

    tests = str(Path(__file__).parent)  # the stages run in their own processes: they import the scorer from here
    monkeypatch.setenv("PYTHONPATH", tests)
    with FakeOpenAIServer(ServerSettings(cut_at_max_tokens=True)) as server:
        path = recipe_file(
            tmp_path,
            "redo",
            model=str(tiny_model),
            out=str(tmp_path / "runs" / "redo"),
            rounds=1,
            generate={"backend": "openai", "base_url": server.url, "num_pos": 1, "num_neg": 1, "max_tokens": 2},
            redo={"truncated": {"max_tokens": 64}},
            score={"scorer": "python:view_runs:score_by_length"},
            train={"epochs": 1, "prompts_per_batch": 2},
            evaluate={"backend": "openai", "base_url": server.url, "max_tokens": 8},
        )
        lines: list[str] = []
        run_rounds(load_recipe(path), echo=lines.append)
        requests = list(server.requests)
    folder = tmp_path / "runs" / "redo" / "round_01"
    rows = ShardedTable(folder / "generations", GENERATIONS).read()
    assert rows.num_rows == 2 * 2 and pc.all(pc.equal(rows.column("finish_reason"), "stop")).as_py()
    assert {json.loads(s)["max_tokens"] for s in rows.column("sampling").to_pylist()} == {64}
    generate_bodies = [r for r in requests if r.get("max_tokens") in (2, 64)]
    assert sorted(r["max_tokens"] for r in generate_bodies) == [2, 2, 2, 2, 64, 64, 64, 64]  # each row: cut once, redone once
    scored = ShardedTable(folder / "scored", SCORED).read()
    assert scored.num_rows == 4 and all(len(text.split()) > 2 for text in scored.column("response").to_pylist())
    manifest = json.loads((tmp_path / "runs" / "redo" / "manifest.json").read_text())
    assert manifest["rounds"]["1"]["redo-truncated"]["finished"] is True
    passes = json.loads((folder / "manifest.json").read_text())["stages"]["generate"]["passes"]
    assert [(p["redo"], p["rows_selected_for_redo"]) for p in passes] == [([], 0), (["truncated"], 4)]
    assert any("round 1 · redo-truncated" in line for line in lines)
