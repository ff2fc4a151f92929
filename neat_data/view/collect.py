"""A run folder → the viewer's data: a columnar index (numbers, codes, short strings) and, separately, the texts.

In:  a single-stage run folder (generations/, scored/, ranked/ at its top) or a `neat-data run` folder
     (round_NN/ sub-folders; their eval/ folders feed the held-out section).
Out: `RunContents` (read once), from which `index(selection)` builds the JSON-ready index of the chosen
     prompts and `texts(selection, max_chars)` their conversations and responses. `select(...)` picks whole
     prompts, in a fixed hash order of (round, prompt_id), when the run is larger than a page may hold.

The index has one entry per prompt (round, prompt id, drawn pair, system prompt numbers, its rows) and per
response (steering, statuses, score, raw score, rank, tokens, finish reason, length, error, key, and for a dataset
answer its label and rank in the user's file), as
parallel arrays; repeated strings (system prompts, pair ids, finish reasons) are numbers into `strings`.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from neat_data import __version__
from neat_data.core.errors import NeatError
from neat_data.core.manifest import AuditRecord, Manifest, RankRecord, ScoreRecord, read_manifest
from neat_data.core.schemas import STEERINGS, one_array
from neat_data.view.rounds_data import finite, heldout_section, is_rounds_run, round_folders, rounds_section, suite_sections
from neat_data.view.tables import FolderRows, read_folder, read_texts, source_folder

SCORE_STATES = ("ok", "error", "skipped", "unscored")  # score_status values, and "unscored" for rows not scored yet
ERROR_CHARS = 2000  # an error reason longer than this is cut in the index
ROW_INDEX_BYTES = 120  # rough JSON bytes of one response's index entry (for the size budget)


@dataclass
class Part:
    label: str  # "round 1", or the run's name
    round: int | None
    rows: FolderRows
    prompt_offset: int  # global number of its first prompt
    row_offset: int


class Interner:
    """Strings → small numbers, shared by every folder of the run."""

    def __init__(self) -> None:
        self.values: list[str] = []
        self._codes: dict[str, int] = {}

    def code(self, value: str) -> int:
        if value not in self._codes:
            self._codes[value] = len(self.values)
            self.values.append(value)
        return self._codes[value]

    def codes(self, column: pa.ChunkedArray | pa.Array) -> np.ndarray:
        """Per row the code of its string, -1 for null."""
        encoded = pc.dictionary_encode(column)
        encoded = one_array(encoded)
        lookup = np.array([self.code(v) for v in encoded.dictionary.to_pylist()] + [-1], np.int64)
        indices = encoded.indices.fill_null(len(lookup) - 1).to_numpy()
        return lookup[indices]


def _floats(values: pa.ChunkedArray | np.ndarray) -> list[float | None]:
    array = values.to_numpy(zero_copy_only=False) if not isinstance(values, np.ndarray) else values
    return [finite(v) for v in np.asarray(array, dtype=np.float64).tolist()]


def _ints(values: pa.ChunkedArray) -> list[int | None]:
    return values.to_pylist()


def page_row(local: np.ndarray, row_mask: np.ndarray, new_row: np.ndarray) -> np.ndarray:
    """Folder row positions → the page's row numbers (-1: unknown, or a row the page does not hold)."""
    inside = local >= 0
    out = np.full(len(local), -1, np.int64)
    out[inside] = np.where(row_mask[local[inside]], new_row[local[inside]], -1)
    return out


def run_info(run_dir: Path, manifest: Manifest) -> list[list[str]]:
    """A few (label, value) facts for the header, from the manifest (which never holds a secret)."""
    facts: list[list[str]] = []
    recipe = manifest.recipe
    if isinstance(recipe, dict):
        facts += [
            ["recipe", str(recipe.get("name"))],
            ["model", str(recipe.get("model"))],
            ["pairs", ", ".join(map(str, recipe.get("pairs") or []))],
            ["rounds", str(manifest.rounds_planned)],
            ["scorer", str((recipe.get("score") or {}).get("scorer"))],
            ["rank", str((recipe.get("rank") or {}).get("pairs"))],
        ]
        return facts
    generate = manifest.stage("generate").config
    if generate:
        sampling = generate.get("sampling") or {}
        facts += [
            ["model", str(generate.get("model"))],
            ["backend", str(generate.get("backend"))],
            ["pairs", ", ".join(map(str, generate.get("pairs") or []))],
            [
                "sampling",
                f"temperature {sampling.get('temperature')}, top_p {sampling.get('top_p')}, max_tokens {sampling.get('max_tokens')}",
            ],
        ]
    if (score := manifest.record("score", ScoreRecord)).recorded():
        facts.append(["scorer", str(score.scorer_name)])
    if (rank := manifest.record("rank", RankRecord)).recorded():
        facts.append(["rank", str(rank.config.get("pairs"))])
    audit = manifest.record("audit", AuditRecord).summary
    if audit:  # `neat-data audit`: its verdicts in one line (audit/audit.md has the figures)
        states = {state: [check for check, item in audit.items() if item.get("verdict") == state] for state in ("fail", "not sure")}
        said = "; ".join(f"{'failed' if state == 'fail' else state}: {', '.join(checks)}" for state, checks in states.items() if checks)
        facts.append(["audit", f"{said} (of {len(audit)} checks)" if said else f"all {len(audit)} checks pass or n/a"])
    return facts


class RunContents:
    """Everything the page shows of one run folder, read once (texts excepted: see `texts`)."""

    def __init__(self, run_dir: Path, *, heldout_chars: int = 20_000):
        run_dir = Path(run_dir)
        if not run_dir.is_dir():
            raise NeatError("no such run folder", file=run_dir)
        self.run_dir = run_dir
        self.manifest = read_manifest(run_dir)
        self.kind = "rounds" if is_rounds_run(run_dir) else "stage"
        candidates: list[tuple[str, int | None, Path]]
        if self.kind == "rounds":
            candidates = [(f"round {k}", k, folder) for k, folder in round_folders(run_dir) if k > 0]
        else:
            if source_folder(run_dir) is None:
                raise NeatError(
                    "nothing to view: no generations/ or scored/ here (a `neat-data generate` output or a `neat-data run` folder)",
                    file=run_dir,
                )
            candidates = [(run_dir.name, None, run_dir)]
        self.parts: list[Part] = []
        prompts = rows = 0
        for label, k, folder in candidates:
            folder_rows = read_folder(folder)
            if folder_rows is None:
                continue
            self.parts.append(Part(label, k, folder_rows, prompts, rows))
            prompts += len(folder_rows.prompt_first_row)
            rows += folder_rows.rows.num_rows
        self.prompt_count, self.row_count = prompts, rows
        self.rounds = rounds_section(run_dir) if self.kind == "rounds" else None
        self.heldout = heldout_section(run_dir, heldout_chars) if self.kind == "rounds" else None
        self.suites = suite_sections(run_dir, heldout_chars, self.heldout) if self.kind == "rounds" else None

    # ------------------------------------------------------------------------------------------ sampling
    def prompt_sizes(self, max_chars: int) -> tuple[np.ndarray, np.ndarray]:
        """Per prompt (global order): number of responses, and rough bytes it adds to a page (index + texts)."""
        counts, sizes = [], []
        for part in self.parts:
            rows = part.rows
            n_prompts = len(rows.prompt_first_row)
            per_row = np.minimum(rows.rows.column("chars").to_numpy(), max_chars) + ROW_INDEX_BYTES
            counts.append(np.bincount(rows.prompt_of_row, minlength=n_prompts))
            sizes.append(
                np.bincount(rows.prompt_of_row, weights=per_row, minlength=n_prompts)
                + np.minimum(rows.rows.column("conv_chars").to_numpy()[rows.prompt_first_row], max_chars * 4)
            )
        if not counts:
            return np.zeros(0, np.int64), np.zeros(0)
        return np.concatenate(counts), np.concatenate(sizes)

    def hash_order(self) -> np.ndarray:
        """Global prompt numbers in a fixed pseudo-random order: sha256 of (round, prompt_id)."""
        digests = []
        for part in self.parts:
            firsts = part.rows.rows.take(pa.array(part.rows.prompt_first_row))
            for k, pid in zip(firsts.column("round").to_pylist(), firsts.column("prompt_id").to_pylist()):
                digests.append(hashlib.sha256(f"{k}:{pid}".encode()).digest()[:8])
        return (
            np.argsort(np.array([int.from_bytes(d, "big") for d in digests], dtype=np.uint64), kind="stable")
            if digests
            else np.zeros(0, np.int64)
        )

    def select(self, *, max_responses: int | None, max_bytes: float | None, max_chars: int) -> np.ndarray:
        """A mask over global prompts: all of them when the run fits, else whole prompts in hash order."""
        counts, sizes = self.prompt_sizes(max_chars)
        mask = np.ones(len(counts), bool)
        if (max_responses is None or counts.sum() <= max_responses) and (max_bytes is None or sizes.sum() <= max_bytes):
            return mask
        order = self.hash_order()
        fits = np.ones(len(order), bool)
        if max_responses is not None:
            fits &= np.cumsum(counts[order]) <= max_responses
        if max_bytes is not None:
            fits &= np.cumsum(sizes[order]) <= max_bytes
        mask[:] = False
        mask[order[fits]] = True
        return mask

    # ---------------------------------------------------------------------------------------------- index
    def index(self, selection: np.ndarray, *, mode: str) -> dict[str, Any]:
        """The JSON-ready index of the selected prompts (and the whole run's totals)."""
        strings = {name: Interner() for name in ("lib", "pair", "sys", "fin", "drop", "src")}
        prompts: dict[str, list] = {
            name: [] for name in ("round", "pid", "lib", "pair", "sys_pos", "sys_neg", "r0", "rn", "title", "turns")
        }
        responses: dict[str, list] = {
            name: [] for name in ("p", "st", "si", "gs", "ss", "score", "raw", "rank", "tok", "fin", "len", "err", "key", "src", "srank")
        }
        kept: dict[str, list] = {"p": [], "c": [], "r": [], "m": []}
        dropped: dict[str, list] = {"p": [], "a": [], "b": [], "reason": []}
        totals = []
        prompt_base = row_base = 0
        for part in self.parts:
            rows = part.rows
            totals.append(self._totals(part))
            n_prompts = len(rows.prompt_first_row)
            chosen = selection[part.prompt_offset : part.prompt_offset + n_prompts]
            new_prompt = np.cumsum(chosen) - 1 + prompt_base  # global page number of each local prompt
            row_mask = chosen[rows.prompt_of_row] if len(rows.prompt_of_row) else np.zeros(0, bool)
            new_row = np.cumsum(row_mask) - 1 + row_base
            table = rows.rows
            steering = table.column("steering").to_numpy(zero_copy_only=False)
            steering_code = np.array([STEERINGS.index(s) if s in STEERINGS else len(STEERINGS) for s in steering], np.int64)
            lib_codes, pair_codes, sys_codes = (
                strings["lib"].codes(table.column("pair_library")),
                strings["pair"].codes(table.column("system_prompt_id")),
                strings["sys"].codes(table.column("system_prompt")),
            )
            per_prompt = {name: np.full(n_prompts, -1, np.int64) for name in ("lib", "pair", "sys_pos", "sys_neg")}
            for name, codes in (("lib", lib_codes), ("pair", pair_codes)):
                present = codes >= 0
                per_prompt[name][rows.prompt_of_row[present]] = codes[present]
            for name, code in (("sys_pos", STEERINGS.index("pos")), ("sys_neg", STEERINGS.index("neg"))):
                present = (steering_code == code) & (sys_codes >= 0)
                per_prompt[name][rows.prompt_of_row[present]] = sys_codes[present]
            firsts = table.take(pa.array(rows.prompt_first_row[chosen])) if n_prompts else table
            row_counts = np.bincount(rows.prompt_of_row, minlength=n_prompts)[chosen]
            starts = np.r_[0, np.cumsum(row_counts)][:-1] + row_base
            prompts["round"] += firsts.column("round").to_pylist()
            prompts["pid"] += firsts.column("prompt_id").to_pylist()
            for name in ("lib", "pair", "sys_pos", "sys_neg"):
                prompts[name] += per_prompt[name][chosen].tolist()
            prompts["r0"] += starts.tolist()
            prompts["rn"] += row_counts.tolist()
            prompts["title"] += firsts.column("title").to_pylist()
            prompts["turns"] += firsts.column("turns").to_pylist()

            picked = table.filter(pa.array(row_mask))
            gen_error = pc.fill_null(pc.not_equal(picked.column("status"), "ok"), True).to_numpy(zero_copy_only=False)
            score_state = np.array(
                [
                    SCORE_STATES.index(s) if s in SCORE_STATES else SCORE_STATES.index("unscored")
                    for s in picked.column("score_status").to_pylist()
                ],
                np.int64,
            )
            errors = pc.coalesce(picked.column("error"), picked.column("score_error"))
            responses["p"] += new_prompt[rows.prompt_of_row[row_mask]].tolist()
            responses["st"] += steering_code[row_mask].tolist()
            responses["si"] += _ints(picked.column("sample_index"))
            responses["gs"] += gen_error.astype(np.int64).tolist()
            responses["ss"] += score_state.tolist()
            responses["score"] += _floats(picked.column("score"))
            responses["raw"] += _floats(picked.column("raw_score"))
            responses["rank"] += rows.rank[row_mask].tolist()
            responses["tok"] += _ints(picked.column("completion_tokens"))
            responses["fin"] += strings["fin"].codes(picked.column("finish_reason")).tolist()
            responses["len"] += picked.column("chars").to_pylist()
            responses["err"] += pc.utf8_slice_codeunits(errors, 0, ERROR_CHARS).to_pylist()
            responses["key"] += picked.column("key").to_pylist()
            responses["src"] += strings["src"].codes(picked.column("source_label")).tolist()  # -1: a generated answer
            responses["srank"] += _ints(picked.column("source_rank"))

            keep = (rows.kept["p"] >= 0) & chosen[np.maximum(rows.kept["p"], 0)] if len(rows.kept["p"]) else np.zeros(0, bool)
            kept["p"] += new_prompt[rows.kept["p"][keep]].tolist()
            kept["c"] += page_row(rows.kept["c"][keep], row_mask, new_row).tolist()
            kept["r"] += page_row(rows.kept["r"][keep], row_mask, new_row).tolist()
            kept["m"] += _floats(rows.kept["m"][keep])
            if rows.dropped is not None and len(rows.dropped["p"]):
                keep = (rows.dropped["p"] >= 0) & chosen[np.maximum(rows.dropped["p"], 0)]
                dropped["p"] += new_prompt[rows.dropped["p"][keep]].tolist()
                dropped["a"] += page_row(rows.dropped["a"][keep], row_mask, new_row).tolist()
                dropped["b"] += page_row(rows.dropped["b"][keep], row_mask, new_row).tolist()
                dropped["reason"] += [strings["drop"].code(r) for r in rows.dropped["reason"][keep]]
            prompt_base += int(chosen.sum())
            row_base += int(row_mask.sum())
        per_pair = all(part.rows.dropped is not None for part in self.parts)
        sampled = prompt_base < self.prompt_count
        return {
            "v": 1,
            "mode": mode,
            "run": {
                "name": self.run_dir.name,
                "path": str(self.run_dir),
                "kind": self.kind,
                "built": time.strftime("%Y-%m-%d %H:%M:%S"),
                "version": __version__,
                "info": run_info(self.run_dir, self.manifest),
            },
            "sample": {"prompts": prompt_base, "prompts_total": self.prompt_count, "responses": row_base, "responses_total": self.row_count}
            if sampled
            else None,
            "strings": {
                **{name: interner.values for name, interner in strings.items()},
                "steering": list(STEERINGS),
                "score_state": list(SCORE_STATES),
            },
            "prompts": prompts,
            "responses": responses,
            "kept": kept,
            "dropped": dropped if per_pair else None,
            "totals": totals,
            "rounds": self.rounds,
            "heldout": self.heldout,
            "suites": self.suites,
        }

    @staticmethod
    def _totals(part: Part) -> dict[str, Any]:
        """Whole-folder counts (not only the page's sample): responses by steering and state, pairs."""
        table = part.rows.rows
        states: dict[str, dict[str, int]] = {}
        for steering, status, score_status in zip(
            table.column("steering").to_pylist(), table.column("status").to_pylist(), table.column("score_status").to_pylist()
        ):
            state = (
                "generation error"
                if status != "ok"
                else "score error"
                if score_status == "error"
                else "ok"
                if score_status == "ok"
                else "not scored"
            )
            bucket = states.setdefault(str(steering), {})
            bucket[state] = bucket.get(state, 0) + 1
        return {
            "label": part.label,
            "round": part.round,
            "responses": states,
            "pairs_kept": len(part.rows.kept["p"]),
            "dropped": part.rows.dropped_counts,
            "dropped_per_pair": part.rows.dropped is not None,
            "strategy": part.rows.pairs_strategy,
        }

    # ---------------------------------------------------------------------------------------------- texts
    def text_arrays(self, selection: np.ndarray, max_chars: int | None) -> tuple[list[list[list[str]]], pa.Array]:
        """Conversations (per page prompt, [[role, content], …]) and response texts (per page row, an Arrow
        array); texts longer than `max_chars` are cut (None: never)."""
        conversations: list[list[list[str]]] = []
        responses: list[pa.Array] = []
        for part in self.parts:
            rows = part.rows
            n_prompts = len(rows.prompt_first_row)
            chosen = selection[part.prompt_offset : part.prompt_offset + n_prompts]
            if not chosen.any():
                continue
            picked = rows.rows.filter(pa.array(chosen[rows.prompt_of_row]))
            pids = rows.rows.take(pa.array(rows.prompt_first_row[chosen])).column("prompt_id").to_pylist()
            texts, by_prompt = read_texts(rows.folder, set(pids), one_array(picked.column("key")))
            if max_chars is not None:
                texts = pc.utf8_slice_codeunits(texts, 0, max_chars)
                by_prompt = {pid: [[role, (content or "")[:max_chars]] for role, content in turns] for pid, turns in by_prompt.items()}
            responses.append(texts)
            conversations += [by_prompt.get(pid, []) for pid in pids]
        return conversations, pa.concat_arrays(responses) if responses else pa.array([], pa.string())

    def texts(self, selection: np.ndarray, max_chars: int | None) -> dict[str, Any]:
        """The page's texts block: {conv, conv_len (each turn's full length), resp, cut}."""
        full, responses = self.text_arrays(selection, None)
        conversations = [[[role, (content or "")[:max_chars] if max_chars else content] for role, content in turns] for turns in full]
        lengths = [[len(content or "") for _, content in turns] for turns in full]
        if max_chars is not None:
            responses = pc.utf8_slice_codeunits(responses, 0, max_chars)
        return {"conv": conversations, "conv_len": lengths, "resp": responses.to_pylist(), "cut": max_chars}
