"""Our exports, fed unchanged to the trainers people use, through those trainers' own code (docs/FORMATS.md's table).

One run (a prompt with its own system message, an HH-RLHF multi-turn transcript, a one-turn request) is generated,
scored, ranked and exported once per module; every trainer reads the export folder as a user would. Where the
trainer installs beside our torch/transformers (TRL) it takes one real optimisation step on the shared tiny model:
the loss is finite and the weights move. Where it cannot (LLaMA-Factory, OpenRLHF, axolotl: FORMATS.md says why) its
own dataset loading / preprocessing runs and we assert on the exact text it tokenises: every turn, in order, the
system message inside the prompt.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import datasets
import pytest
from click.testing import CliRunner

from neat_data.cli import cli
from neat_data.engines.base import Sampling
from neat_data.stages.generate.stage import GenerateConfig, run_generate
from neat_data.testing.recording_backend import RecordingBackend

SYSTEM = [{"role": "system", "content": "You are a terse pirate."}, {"role": "user", "content": "What is the capital of France?"}]
HH_TRANSCRIPT = "\n\nHuman: How do I boil an egg?\n\nAssistant: In hot water.\n\nHuman: For how long?\n\nAssistant: Seven minutes."
HH = [
    {"role": "user", "content": "How do I boil an egg?"},
    {"role": "assistant", "content": "In hot water."},
    {"role": "user", "content": "For how long?"},
]
ONE_TURN = [{"role": "user", "content": "Tell me a joke about cats."}]
PROMPTS = [SYSTEM, HH, ONE_TURN]


def chatml(messages: list[dict[str, str]], generation_prompt: bool = False) -> str:
    """The text tests/tinymodel.py's ChatML template renders: what each trainer must tokenise for these turns."""
    text = "".join(f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n" for m in messages)
    return text + ("<|im_start|>assistant\n" if generation_prompt else "")


def response_length(prompts, responses):
    return [float(len(r)) for r in responses]


def longer_by_sample(messages, sample_index, seed):
    return "yes " * (sample_index + 1) + "to " + messages[-1]["content"]


@pytest.fixture(scope="module")
def exports(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run exported in every format the trainers below read: <run>/export/<format>/."""
    import json

    folder = tmp_path_factory.mktemp("trainers")
    prompts = folder / "prompts.jsonl"
    rows = [{"messages": SYSTEM}, {"prompt": HH_TRANSCRIPT}, {"messages": ONE_TURN}]
    prompts.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    run = folder / "run"
    config = GenerateConfig(prompts=str(prompts), model="fake", out=run, num_pos=2, num_neg=2, sampling=Sampling(max_tokens=16))
    run_generate(config, backend=RecordingBackend(reply=longer_by_sample), progress=False)
    invoke = CliRunner().invoke
    assert invoke(cli, ["score", str(run), "--scorer", "python:test_trainers:response_length", "--no-progress"]).exit_code == 0
    assert invoke(cli, ["rank", str(run), "--pairs", "all-pairs", "--min-margin", "1"]).exit_code == 0
    for fmt in ("trl", "trl-implicit", "kto", "llamafactory"):
        result = invoke(cli, ["export", str(run), "--format", fmt])
        assert result.exit_code == 0, result.output
    return run / "export"


def parquet(folder: Path) -> datasets.Dataset:
    return datasets.load_dataset("parquet", data_files=str(folder / "train.parquet"), split="train")


def trl_args(config_class: Any, out: Path, **options: Any) -> Any:
    """One optimisation step on the CPU, nothing saved or reported; a large learning rate so one step shows."""
    return config_class(
        output_dir=str(out),
        max_steps=1,
        per_device_train_batch_size=2,
        learning_rate=1e-2,
        report_to="none",
        save_strategy="no",
        logging_steps=1,
        use_cpu=True,
        seed=0,
        **options,
    )


def weights(model: Any) -> dict[str, Any]:
    return {name: p.detach().clone() for name, p in model.named_parameters() if p.requires_grad}


def assert_one_real_step(trainer: Any, before: dict[str, Any]) -> float:
    """train() runs one step: its loss is finite and some trainable weight moved."""
    import torch

    loss = trainer.train().training_loss
    assert math.isfinite(loss) and trainer.state.global_step == 1
    after = weights(trainer.model)
    assert any(not torch.equal(before[name], after[name]) for name in before), "no parameter changed"
    return loss


def decoded(tokenizer: Any, ids: list[int]) -> str:
    return tokenizer.decode(ids, skip_special_tokens=False)


def by_prompt(rows: list[dict[str, Any]], prompt_of: Any) -> dict[str, dict[str, Any]]:
    """One row per prompt (keyed by its first turn's text)."""
    return {prompt_of(row)[0]["content"]: row for row in rows}


@pytest.fixture(autouse=True)
def environ_restored():
    """The trainers set process-wide variables at import (TRL's `_compat` and axolotl: VLLM_LOGGING_LEVEL=ERROR, which
    silenced every vLLM server a later test starts; LLaMA-Factory's own): none outlives a test of this module."""
    saved = dict(os.environ)
    yield
    os.environ.clear()
    os.environ.update(saved)


# ------------------------------------------------------------------------------------------------------------ TRL


def test_trl_dpo_trains_on_the_trl_export_with_every_turn_and_the_system_message_in_the_prompt(exports: Path, tiny_model: Path, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import DPOConfig, DPOTrainer

    data = parquet(exports / "trl")
    assert all(row["prompt"] in PROMPTS for row in data)  # the neutral conversation, the system message inside it
    model = AutoModelForCausalLM.from_pretrained(tiny_model)
    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    trainer = DPOTrainer(model=model, args=trl_args(DPOConfig, tmp_path), train_dataset=data, processing_class=tokenizer)
    rows = by_prompt(list(trainer.train_dataset), lambda row: row["prompt"])
    assert sorted(rows) == sorted(p[0]["content"] for p in PROMPTS)
    for prompt in PROMPTS:
        row = rows[prompt[0]["content"]]
        assert decoded(tokenizer, row["prompt_ids"]) == chatml(prompt, generation_prompt=True)
        assert decoded(tokenizer, row["chosen_ids"]) == row["chosen"][0]["content"] + "<|im_end|>\n"
    assert_one_real_step(trainer, weights(model))


def test_trl_kto_trains_on_the_kto_export(exports: Path, tiny_model: Path, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import KTOConfig, KTOTrainer

    data = parquet(exports / "kto")
    assert sorted(set(data["label"])) == [False, True]  # pos → True, neg → False: KTO needs both
    model = AutoModelForCausalLM.from_pretrained(tiny_model)
    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    trainer = KTOTrainer(model=model, args=trl_args(KTOConfig, tmp_path), train_dataset=data, processing_class=tokenizer)
    tokenised = list(trainer.train_dataset)
    rows = by_prompt(tokenised, lambda row: row["prompt"])
    for prompt in PROMPTS:
        assert decoded(tokenizer, rows[prompt[0]["content"]]["prompt_ids"]) == chatml(prompt, generation_prompt=True)
    assert_one_real_step(trainer, weights(model))


def test_trl_reward_trainer_trains_on_the_implicit_prompt_export(exports: Path, tiny_model: Path, tmp_path):
    """RewardTrainer scores whole conversations: a score head on the shared tiny model, chosen/rejected = prompt + answer."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer
    from trl import RewardConfig, RewardTrainer

    data = parquet(exports / "trl-implicit")
    model = AutoModelForSequenceClassification.from_pretrained(tiny_model, num_labels=1)
    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    model.config.pad_token_id = tokenizer.pad_token_id
    trainer = RewardTrainer(model=model, args=trl_args(RewardConfig, tmp_path), train_dataset=data, processing_class=tokenizer)
    tokenised = list(trainer.train_dataset)
    rows = by_prompt(tokenised, lambda row: row["chosen"])
    for prompt in PROMPTS:
        row = rows[prompt[0]["content"]]
        assert decoded(tokenizer, row["chosen_ids"]) == chatml(row["chosen"])
        assert decoded(tokenizer, row["rejected_ids"]).startswith(chatml(prompt, generation_prompt=True))
    assert_one_real_step(trainer, weights(model))


@pytest.mark.parametrize("method", ["orpo", "cpo"])
def test_trl_experimental_orpo_and_cpo_train_on_the_trl_export(exports: Path, tiny_model: Path, tmp_path, method: str):
    """ORPO and CPO live in trl.experimental (TRL's stable API has neither): the same `trl` export feeds both."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if method == "orpo":
        from trl.experimental.orpo import ORPOConfig as Config
        from trl.experimental.orpo import ORPOTrainer as Trainer
    else:
        from trl.experimental.cpo import CPOConfig as Config
        from trl.experimental.cpo import CPOTrainer as Trainer
    model = AutoModelForCausalLM.from_pretrained(tiny_model)
    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    trainer = Trainer(model=model, args=trl_args(Config, tmp_path), train_dataset=parquet(exports / "trl"), processing_class=tokenizer)
    tokenised = list(trainer.train_dataset)
    assert sorted(decoded(tokenizer, row["prompt_input_ids"]) for row in tokenised) == sorted(
        chatml(row["prompt"], generation_prompt=True) for row in parquet(exports / "trl")
    )
    for row in tokenised:
        chosen = decoded(tokenizer, row["chosen_input_ids"])
        assert chosen.startswith(decoded(tokenizer, row["prompt_input_ids"])) and row["chosen"] in chosen
    assert {decoded(tokenizer, row["prompt_input_ids"]) for row in tokenised} == {chatml(p, generation_prompt=True) for p in PROMPTS}
    assert_one_real_step(trainer, weights(model))


# ------------------------------------------------------------------------------------- trainers we can't install whole


def test_openrlhf_reward_and_dpo_datasets_read_the_trl_exports_with_apply_chat_template(exports: Path, tiny_model: Path):
    """OpenRLHF's RewardDataset (its RM and DPO trainers' input) with `--apply_chat_template`: `trl` through
    `--prompt_key prompt --chosen_key chosen --rejected_key rejected`, and `trl-implicit` (whole conversations)."""
    from openrlhf.datasets import RewardDataset
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model)

    def strategy(**data: Any) -> Any:  # the CLI options OpenRLHF's RewardDataset reads (args.data.*)
        return SimpleNamespace(args=SimpleNamespace(data=SimpleNamespace(apply_chat_template=True, tokenizer_chat_template=None, **data)))

    keys = {"chosen_key": "chosen", "rejected_key": "rejected"}
    dpo = RewardDataset(parquet(exports / "trl"), tokenizer, 512, strategy(prompt_key="prompt", **keys), is_dpo=True, num_processors=1)
    reward = RewardDataset(parquet(exports / "trl-implicit"), tokenizer, 512, strategy(prompt_key=None, **keys), num_processors=1)
    for dataset, source in ((dpo, parquet(exports / "trl")), (reward, parquet(exports / "trl-implicit"))):
        assert len(dataset) == len(source) > 0  # nothing filtered out
        chosen_ids, chosen_mask, rejected_ids, rejected_mask, extras = dataset.collate_fn([dataset[i] for i in range(len(dataset))])
        for i, row in enumerate(source):
            prompt = row["prompt"] if "prompt" in row else row["chosen"][:-1]
            answer = row["chosen"][-1]["content"]
            text = decoded(tokenizer, chosen_ids[i][chosen_mask[i].bool()].tolist())
            assert text == chatml(prompt, generation_prompt=True) + answer + "<|im_end|>"  # OpenRLHF strips the last newline
    assert {dpo.prompts[i] for i in range(len(dpo))} == {chatml(p, generation_prompt=True) for p in PROMPTS}
    assert all(extra == len(tokenizer(p, add_special_tokens=False)["input_ids"]) for extra, p in zip(dpo.extras, dpo.prompts))


def test_llamafactory_loads_the_llamafactory_export_through_its_own_dataset_loader(
    exports: Path, tiny_model: Path, tmp_path, monkeypatch, environ_restored
):
    """LLaMA-Factory's `get_dataset` (stage rm/dpo: the pairwise processor) on the export folder as `dataset_dir`, by
    the name its `dataset_info.json` gives: the token ids it would train on, decoded, hold every turn in order."""
    import importlib.machinery
    import sys
    import types

    # llamafactory/data/mm_plugin.py imports torchaudio at module level (for audio inputs only); torchaudio has no
    # build for torch 2.13.0+cpu (FORMATS.md), so an empty module stands in; text rows never reach it.
    torchaudio = types.ModuleType("torchaudio")
    torchaudio.__spec__ = importlib.machinery.ModuleSpec("torchaudio", None)
    monkeypatch.setitem(sys.modules, "torchaudio", torchaudio)
    monkeypatch.setenv("DISABLE_VERSION_CHECK", "1")  # it pins transformers<=5.6.0, datasets<=4.0.0 (FORMATS.md)
    from llamafactory.data import get_dataset, get_template_and_fix_tokenizer
    from llamafactory.hparams import get_train_args
    from transformers import AutoTokenizer

    folder = exports / "llamafactory"
    model_args, data_args, training_args, _, _ = get_train_args(
        {
            "model_name_or_path": str(tiny_model),
            "stage": "dpo",
            "do_train": True,
            "finetuning_type": "full",
            "dataset": "neat_train",
            "dataset_dir": str(folder),
            "template": "chatml",
            "cutoff_len": 512,
            "output_dir": str(tmp_path),
            "report_to": "none",
            "overwrite_cache": True,
        }
    )
    # llamafactory.model (its tokenizer loader) imports TRL 0.x names: the tokenizer comes from transformers, as there
    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    template = get_template_and_fix_tokenizer(tokenizer, data_args)
    dataset = get_dataset(template, model_args, data_args, training_args, stage="rm", tokenizer=tokenizer, processor=None)["train_dataset"]
    source = parquet(folder)
    assert len(dataset) == len(source) > 0  # LLaMA-Factory skips rows it cannot align with a log line: none skipped
    texts = sorted(decoded(tokenizer, row["chosen_input_ids"]) for row in dataset)
    expected = sorted(chatml(row["messages"], generation_prompt=True) + row["chosen"]["content"] + "<|im_end|>\n" for row in source)
    assert texts == expected
    assert {m[0]["content"] for m in source["messages"]} == {p[0]["content"] for p in PROMPTS}


def test_axolotl_prepares_the_trl_export_as_chat_template_dpo_and_its_rows_train_in_trl(
    exports: Path, tiny_model: Path, tmp_path, monkeypatch, environ_restored
):
    """axolotl's own path from a user's YAML: validate_config → normalize_config → load_tokenizer →
    prepare_preference_datasets, with `type: chat_template.default, field_messages: prompt` on the `trl` export.
    Its rows (rendered prompt/chosen/rejected text) then take one step in TRL's DPOTrainer, which axolotl's DPO
    trainer subclasses (axolotl's own trainer needs its CUDA-only stack: FORMATS.md)."""
    monkeypatch.setenv("AXOLOTL_DO_NOT_TRACK", "1")
    from axolotl.loaders import load_tokenizer
    from axolotl.utils.config import normalize_config, validate_config
    from axolotl.utils.data.rl import prepare_preference_datasets
    from axolotl.utils.dict import DictDefault
    from transformers import AutoModelForCausalLM
    from trl import DPOConfig, DPOTrainer

    yaml_config = {  # what a user writes in axolotl's YAML for our export
        "base_model": str(tiny_model),
        "rl": "dpo",
        "chat_template": "tokenizer_default",
        "datasets": [
            {
                "path": str(exports / "trl" / "train.parquet"),
                "ds_type": "parquet",
                "type": "chat_template.default",
                "field_messages": "prompt",
            }
        ],
        "sequence_len": 512,
        "micro_batch_size": 1,
        "gradient_accumulation_steps": 1,
        "num_epochs": 1,
        "learning_rate": 1e-3,
        "output_dir": str(tmp_path / "out"),
        "dataset_prepared_path": str(tmp_path / "prepared"),
        "dataset_num_proc": 1,
    }
    cfg = validate_config(DictDefault(yaml_config))
    normalize_config(cfg)
    tokenizer = load_tokenizer(cfg)
    prepared, _ = prepare_preference_datasets(cfg, tokenizer)
    source = parquet(exports / "trl")
    assert len(prepared) == len(source) > 0  # axolotl drops rows longer than sequence_len: none here
    assert sorted(prepared["prompt"]) == sorted(chatml(p, generation_prompt=True) for p in source["prompt"])
    assert sorted(prepared["chosen"]) == sorted(c[0]["content"] + "<|im_end|>" for c in source["chosen"])
    assert {p for p in prepared["prompt"]} == {chatml(p, generation_prompt=True) for p in PROMPTS}

    model = AutoModelForCausalLM.from_pretrained(tiny_model)
    trainer = DPOTrainer(model=model, args=trl_args(DPOConfig, tmp_path / "dpo"), train_dataset=prepared, processing_class=tokenizer)
    assert_one_real_step(trainer, weights(model))
