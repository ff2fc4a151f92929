"""Expansion in a recipe (issue 29): `prompts.responses: keep` carries a preference file's answers into each round's
generations, through the real `neat-data run` (generation against the fake OpenAI server; the run is stopped at
round 1's score by a scorer that fails on a dataset answer, so no training is spent)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import yaml
from conftest import REPO, write_jsonl

from neat_data.core.runfolder import ShardedTable
from neat_data.core.schemas import GENERATIONS

QUESTIONS = ["How do I boil an egg?", "What is a fox?", "Why do cats sleep?", "Tell me a joke.", "Name a prime.", "Is the sea salty?"]


def test_a_recipe_keeps_the_answers_of_its_training_prompts(fake_server, tiny_model: Path, tmp_path: Path):
    server = fake_server()
    rows = [
        {"chosen": f"\n\nHuman: {q}\n\nAssistant: Good answer {i}.", "rejected": f"\n\nHuman: {q}\n\nAssistant: Bad answer {i}."}
        for i, q in enumerate(QUESTIONS)
    ]
    rows.append(rows[0] | {"chosen": rows[0]["chosen"].replace("Good", "Fine"), "rejected": rows[0]["rejected"].replace("Bad", "Poor")})
    prompts = write_jsonl(tmp_path / "hh.jsonl", rows)
    (tmp_path / "stop_scorer.py").write_text(  # scores round 0's evaluation; stops at the first dataset answer (round 1)
        "def fail(prompts, responses):\n"
        "    if any(' answer ' in text for text in responses):\n"
        "        raise RuntimeError('stop here')\n"
        "    return [float(len(text)) for text in responses]\n",
        encoding="utf-8",
    )
    recipe = {
        "name": "expand",
        "out": str(tmp_path / "runs" / "expand"),
        "model": str(tiny_model),
        "prompts": {"source": str(prompts), "heldout": 2, "per_round": 4, "responses": "keep", "decontaminate": False},
        "pairs": ["harmless"],
        "rounds": 1,
        "generate": {"backend": "openai", "base_url": server.url, "num_pos": 1, "num_neg": 1, "max_tokens": 8},
        "score": {"scorer": "python:stop_scorer:fail"},
        "exports": ["ranked"],
        "evaluate": {"backend": "openai", "base_url": server.url, "max_tokens": 8},
    }
    path = tmp_path / "expand.yaml"
    path.write_text(yaml.safe_dump(recipe), encoding="utf-8")
    env = {"OPENAI_API_KEY": "x", "PATH": "/usr/bin:/bin", "PYTHONPATH": f"{REPO}:{tmp_path}", "HF_HUB_OFFLINE": "1"}
    finished = subprocess.run(
        [sys.executable, "-m", "neat_data.cli", "run", str(path)], cwd=REPO, env=env, capture_output=True, text=True, timeout=600
    )
    run_dir = tmp_path / "runs" / "expand"
    generated = ShardedTable(run_dir / "round_01" / "generations", GENERATIONS).read().to_pylist()
    dataset = [r for r in generated if r["steering"] == "dataset"]
    assert dataset, finished.stderr[-2000:]
    texts_by_prompt: dict[str, list[str]] = {}
    for row in sorted(dataset, key=lambda r: r["sample_index"]):
        texts_by_prompt.setdefault(row["prompt"][-1]["content"], []).append(row["response"])
    heldout = [json.loads(line)["messages"][-1]["content"] for line in (run_dir / "prompts" / "heldout.jsonl").read_text().splitlines()]
    assert sorted(texts_by_prompt) == sorted(q for q in QUESTIONS if q not in heldout)  # every training prompt, no held-out one
    for question, texts in texts_by_prompt.items():
        i = QUESTIONS.index(question)
        extra = [f"Fine answer {i}.", f"Poor answer {i}."] if i == 0 else []
        assert texts == [f"Good answer {i}.", f"Bad answer {i}.", *extra]
    assert {r["steering"] for r in generated} == {"dataset", "pos", "neg"}
