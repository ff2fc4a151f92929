"""Prompt-pair libraries: YAML files of (positive, negative) steering system prompts.

A library is `prompts/<name>.yaml` (bundled) or any YAML file path, shaped as
    name: harmless
    description: …
    pairs: [{id: harmless-01, positive: "…", negative: "…"}, …]
Several libraries can be combined (`harmless,helpful`); one pair is chosen per prompt, deterministically
from (seed, prompt_id), so re-runs and resumes pick the same pair.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import yaml

from neat_data.core.errors import NeatError
from neat_data.core.files import load_yaml
from neat_data.core.keys import choose_index, text_hash
from neat_data.core.resources import bundled_dir


@dataclass(frozen=True)
class PromptPair:
    id: str
    library: str
    positive: str
    negative: str

    def system_prompt(self, steering: str) -> str | None:
        return {"pos": self.positive, "neg": self.negative, "none": None}[steering]


@dataclass(frozen=True)
class PairLibrary:
    name: str
    description: str
    path: Path
    pairs: tuple[PromptPair, ...]

    @property
    def content_hash(self) -> str:
        return text_hash("\n".join(f"{p.id}\x00{p.positive}\x00{p.negative}" for p in self.pairs))


def bundled_library_paths() -> dict[str, Path]:
    return {path.stem: path for path in sorted(bundled_dir("prompts").glob("*.yaml"))}


def load_library(name_or_path: str) -> PairLibrary:
    """Load a bundled library by name, or a YAML file by path; every problem names file, row and field.
    `LIBRARY#PAIR_ID` keeps one pair of it (a recipe lists several to use a chosen few)."""
    name_or_path, _, pair_id = name_or_path.partition("#")
    if pair_id:
        library = load_library(name_or_path)
        chosen = tuple(pair for pair in library.pairs if pair.id == pair_id)
        if not chosen:
            known = ", ".join(pair.id for pair in library.pairs)
            raise NeatError(f"no pair '{pair_id}' in library '{library.name}' (its pairs: {known})", file=library.path, field="pairs.id")
        return PairLibrary(name=library.name, description=library.description, path=library.path, pairs=chosen)
    bundled = bundled_library_paths()
    if name_or_path in bundled:
        path = bundled[name_or_path]
    else:
        path = Path(name_or_path)
        if not path.is_file():
            known = ", ".join(bundled) or "none"
            raise NeatError(f"unknown prompt-pair library (bundled: {known}; or give a YAML file path)", file=name_or_path)
    try:
        data = load_yaml(path.read_text(encoding="utf-8"), file=path)
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        row = mark.line + 1 if mark is not None else None
        problem = getattr(error, "problem", None) or str(error)
        raise NeatError(f"invalid YAML: {problem}", file=path, row=row) from None
    except UnicodeDecodeError as error:
        raise NeatError(f"not valid UTF-8 ({error.reason})", file=path) from None
    if not isinstance(data, dict):
        raise NeatError("a pair library must be a mapping with 'name' and 'pairs'", file=path)
    unknown = set(data) - {"name", "description", "pairs"}
    if unknown:
        raise NeatError("unknown key (allowed: name, description, pairs)", file=path, field=sorted(unknown)[0])
    name = data.get("name") or path.stem
    raw_pairs = data.get("pairs")
    if not isinstance(raw_pairs, list) or not raw_pairs:
        raise NeatError("needs a non-empty list", file=path, field="pairs")
    pairs = []
    seen = set()
    for index, raw in enumerate(raw_pairs, start=1):
        if not isinstance(raw, dict):
            raise NeatError("each pair must be a mapping with id, positive, negative", file=path, row=index, field="pairs")
        for field in ("id", "positive", "negative"):
            value = raw.get(field)
            if not isinstance(value, str) or not value.strip():
                raise NeatError("missing or empty", file=path, row=index, field=f"pairs.{field}")
        extra = set(raw) - {"id", "positive", "negative"}
        if extra:
            raise NeatError("unknown key", file=path, row=index, field=f"pairs.{sorted(extra)[0]}")
        if raw["id"] in seen:
            raise NeatError(f"duplicate pair id '{raw['id']}'", file=path, row=index, field="pairs.id")
        seen.add(raw["id"])
        pairs.append(PromptPair(id=raw["id"], library=str(name), positive=raw["positive"].strip(), negative=raw["negative"].strip()))
    return PairLibrary(name=str(name), description=str(data.get("description", "")), path=path, pairs=tuple(pairs))


def load_libraries(spec: str | list[str]) -> list[PairLibrary]:
    """`harmless,helpful` or a list → libraries; pair ids must be unique across them."""
    names = [s.strip() for s in (spec.split(",") if isinstance(spec, str) else spec) if s.strip()]
    if not names:
        raise NeatError("no prompt-pair library given", field="pairs")
    libraries = [load_library(name) for name in names]
    seen: dict[str, str] = {}
    for library in libraries:
        for pair in library.pairs:
            if pair.id in seen:
                raise NeatError(
                    f"pair id '{pair.id}' appears in both '{seen[pair.id]}' and '{library.name}'", file=library.path, field="pairs.id"
                )
            seen[pair.id] = library.name
    return libraries


def choose_pair(libraries: list[PairLibrary], seed: int, prompt_id: str) -> PromptPair:
    """The pair used for one prompt: a deterministic function of (seed, prompt_id)."""
    pairs = [pair for library in libraries for pair in library.pairs]
    return pairs[choose_index(seed, prompt_id, len(pairs))]
