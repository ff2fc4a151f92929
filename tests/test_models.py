"""Model resolution: aliases, folders, Hub ids, clear errors, dtype choice, and the embedded SmolLM2 build."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO

from neat_data.core.errors import NeatError
from neat_data.core.models import resolve_dtype, resolve_model


def test_local_folder_and_hub_id_pass_through(tiny_model: Path):
    assert resolve_model(str(tiny_model)) == str(tiny_model.resolve())
    assert resolve_model("Qwen/Qwen2.5-0.5B-Instruct") == "Qwen/Qwen2.5-0.5B-Instruct"


@pytest.mark.parametrize("spec", ["./missing-model", "/no/such/folder", "runs/x/model", "not a model"])
def test_missing_model_paths_are_named(spec):
    with pytest.raises(NeatError) as caught:
        resolve_model(spec)
    assert caught.value.file == spec and caught.value.field == "model" and "does not exist" in caught.value.message


def test_folder_without_config(tmp_path: Path):
    with pytest.raises(NeatError, match="no config.json"):
        resolve_model(str(tmp_path))


def test_dtype_auto_is_float32_on_cpu():
    assert resolve_dtype("auto", "cpu") == "float32"
    assert resolve_dtype("auto", "cuda") == "auto"
    assert resolve_dtype("bfloat16", "cpu") == "bfloat16"


@pytest.mark.slow
def test_smollm2_is_built_once_under_a_lock_and_answers_sensibly(neat_cache: Path):
    """Two processes ask for the bundled model at once: one builds (~45 s), the other waits; it then loads and answers."""
    already_built = (neat_cache / "models").is_dir() and any((neat_cache / "models").iterdir())
    env = {**os.environ, "NEAT_DATA_CACHE": str(neat_cache)}
    code = "from neat_data.core.models import resolve_model; print(resolve_model('smollm2-135m-instruct'))"
    processes = [
        subprocess.Popen([sys.executable, "-c", code], cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for _ in range(2)
    ]
    outputs = [p.communicate(timeout=600) for p in processes]
    assert all(p.returncode == 0 for p in processes), outputs
    folders = {out.strip() for out, _ in outputs}
    assert len(folders) == 1
    assert sum("building smollm2-135m-instruct" in err for _, err in outputs) == (0 if already_built else 1)
    folder = Path(folders.pop())
    assert (folder / "model.safetensors").is_file() and (folder / "tokenizer.json").is_file()
    assert not [p for p in folder.parent.iterdir() if p.name.startswith(".build-")]  # no half-built folder left

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    assert "quantization_config" not in model.config.to_dict()
    messages = [{"role": "user", "content": "What is the capital of France?"}]
    inputs = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    output = model.generate(**inputs, max_new_tokens=12, do_sample=False)
    answer = tokenizer.decode(output[0][inputs["input_ids"].shape[1] :], skip_special_tokens=True)
    assert "Paris" in answer
