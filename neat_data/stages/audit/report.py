"""The human-readable side of `neat-data audit` (stages/audit/stage.py): audit.md and audit.png from the report dict."""

from __future__ import annotations

from typing import Any

import numpy as np

COLOURS = {"pos": "tab:green", "neg": "tab:red", "none": "tab:gray", "dataset": "tab:blue"}


def _number(value: Any, spec: str = ".3f") -> str:
    if value is None:
        return "–"
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return str(value)
    return format(value, spec) if isinstance(value, float) else str(value)


def _with_ci(item: dict[str, Any], spec: str = ".3f") -> str:
    low, high = item.get("ci95") or [None, None]
    text = _number(item.get("value"), spec)
    return text if low is None or high is None else f"{text} [{format(low, spec)}, {format(high, spec)}]"


def _rows(section: dict[str, Any]) -> list[str]:
    """One table row per plain figure of a section: name, value (with interval), definition."""
    lines = []
    for name, item in section.items():
        if isinstance(item, dict) and "definition" in item and not isinstance(item.get("value"), dict):
            lines.append(f"| {name} | {_with_ci(item)} | {item['definition']} |")
    return lines


def audit_markdown(report: dict[str, Any]) -> str:
    counts = report["counts"]
    lines = [
        f"# Data audit of `{report['run']}`",
        "",
        f"{counts['prompts']['value']} prompts, {counts['candidates']['value']} candidates, {counts['pairs']['value']} pairs; "
        f"per-text measures on {counts['sample']['value']}. Every figure's definition is in audit.json.",
        "",
        "## Verdicts",
        "",
        *[line for check in report["checks"] for line in _verdict_lines(check)],
        "",
        "## Length",
        "",
        "| figure | value [95% CI] | definition |",
        "|---|---|---|",
        *_rows(report["length"]),
    ]
    ratio = report["length"]["length_ratio"]["value"]
    lines += [
        f"| length_ratio | median {_number(ratio['median'], '.2f')} (IQR {_number(ratio['q1'], '.2f')}–{_number(ratio['q3'], '.2f')}) | "
        f"{report['length']['length_ratio']['definition']} |",
        "",
        "| steering (chosen>rejected) | pairs | length ratio median (IQR) | chosen longer | length AUC |",
        "|---|---|---|---|---|",
    ]
    for combination, item in report["length"]["by_combination"]["value"].items():
        q = item["length_ratio"]
        lines.append(
            f"| {combination} | {item['pairs']} | {_number(q['median'], '.2f')} ({_number(q['q1'], '.2f')}–{_number(q['q3'], '.2f')}) | "
            f"{item['share_chosen_longer']:.3f} | {item['length_auc']:.3f} |"
        )
    bag = report["separability"]["bag_of_words_auc"]
    lines += ["", "## Shortcut separability", "", "| figure | value [95% CI] | definition |", "|---|---|---|"]
    lines += [f"| length_auc | {_with_ci(report['separability']['length_auc'])} | {report['separability']['length_auc']['definition']} |"]
    lines += [f"| bag_of_words_auc | {_with_ci(bag)} | {bag['definition']} |"]
    raw = report["separability"].get("bag_of_words_auc_raw")
    if raw:
        lines += [f"| bag_of_words_auc_raw | {_with_ci(raw)} | {raw['definition']} |"]
    ngrams = report["separability"].get("separating_ngrams") or {}
    if ngrams.get("value"):
        lines += [
            "",
            f"Most separating word n-grams — {ngrams['definition']}:",
            "",
            "| n-gram | chosen only | rejected only |",
            "|---|---|---|",
        ]
        lines += [f"| `{g['ngram']}` | {g['chosen_only']} | {g['rejected_only']} |" for g in ngrams["value"]]
    steering = report["steering"]
    lines += [
        "",
        "## Steering effect",
        "",
        "| steering | " + " | ".join(_metrics(steering)) + " |",
        "|---|" + "---|" * len(_metrics(steering)),
    ]
    for name, metrics in steering["per_steering"]["value"].items():
        cells = []
        for metric in _metrics(steering):
            entry = metrics.get(metric) or {}
            low, high = entry.get("ci95") or [None, None]
            cells.append(f"{_number(entry.get('mean'))} [{_number(low)}, {_number(high)}]")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines += ["", "| flip | prompts | forward [95% CI] | reverse [95% CI] | net |", "|---|---|---|---|---|"]
    for metric, item in steering["flip"]["value"].items():
        lines.append(
            f"| {metric} | {item['prompts']['value']} | {_with_ci(item['forward'])} | {_with_ci(item['reverse'])} | {_number(item['net']['value'])} |"
        )
    lines += [
        "",
        "| figure | value [95% CI] | definition |",
        "|---|---|---|",
        *_rows({k: v for k, v in steering.items() if k not in ("per_steering", "flip")}),
    ]
    lines += ["", "## Duplicates", "", "| figure | value | definition |", "|---|---|---|"]
    for kind in ("exact", "near"):
        lines += [
            f"| {kind} {name} | {_number(item['value'])} | {item['definition']} |" for name, item in report["duplicates"][kind].items()
        ]
    lines += ["", "## Ties and truncation", "", "| figure | value | definition |", "|---|---|---|", *_rows(report["ties_and_truncation"])]
    for name in ("truncated_by_steering", "dropped_by_reason"):
        item = report["ties_and_truncation"][name]
        lines.append(f"| {name} | {', '.join(f'{k} {_number(v)}' for k, v in item['value'].items()) or 'none'} | {item['definition']} |")
    lines += _source_lines(report.get("source") or {})
    if report.get("notes"):
        lines += ["", "Notes:", *[f"- {note}" for note in report["notes"]]]
    return "\n".join(lines) + "\n"


def _source_lines(source: dict[str, Any]) -> list[str]:
    """Dataset answers vs generated ones: the source AUC, cross-source pairs by strategy, per-source figures."""
    auc = source.get("source_auc")
    if not auc:
        return []
    lines = ["", "## Source (dataset answers vs generated)", ""]
    if auc.get("value") is None:
        return lines + [f"{auc.get('not_measured', 'not measured')}."]
    lines += ["| figure | value [95% CI] | definition |", "|---|---|---|", *_rows(source)]
    lines += ["", "| pair strategy | pairs | cross-source | dataset chosen | dataset rejected | source AUC |", "|---|---|---|---|---|---|"]
    for name, item in source["by_strategy"]["value"].items():
        lines.append(
            f"| {name} | {item['pairs']} | {item['cross_source']:.3f} | {item['dataset_chosen']:.3f} | {item['dataset_rejected']:.3f} | "
            f"{item['source_auc']:.3f} |"
        )
    lines += ["", "| source | candidates | length median (IQR) | truncated | refusal_opening [95% CI] |", "|---|---|---|---|---|"]
    for name, item in source["per_source"]["value"].items():
        q, refusal = item["length"], item.get("refusal_opening") or {}
        low, high = refusal.get("ci95") or [None, None]
        lines.append(
            f"| {name} | {item['candidates']} | {_number(q['median'], '.1f')} ({_number(q['q1'], '.1f')}–{_number(q['q3'], '.1f')}) | "
            f"{_number(item['truncated'])} | {_number(refusal.get('mean'))} [{_number(low)}, {_number(high)}] |"
        )
    return lines


def _quoted(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|")


def _verdict_lines(check: dict[str, Any]) -> list[str]:
    """The verdict line; under a failing check, its example pairs (or texts)."""
    lines = [f"- {check['line']}"]
    for example in check.get("examples") or []:
        sides = [("chosen", "rejected"), ("first", "second")][0 if "chosen" in example else 1]
        lines.append(f"  - `{example['prompt_id']}` ({example['note']}):")
        lines += [f"    - {side}: {_quoted(example[side])}" for side in sides]
    return lines


def _metrics(steering: dict[str, Any]) -> list[str]:
    per = steering["per_steering"]["value"]
    return sorted({metric for metrics in per.values() for metric in metrics})


def audit_plot(report: dict[str, Any], log2_ratios: dict[str, np.ndarray]) -> Any:
    """Left: log2(chosen/rejected length) per steering combination. Right: refusal rate and P(offensive) per steering."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    every = np.concatenate([v for v in log2_ratios.values() if v.size]) if any(v.size for v in log2_ratios.values()) else np.zeros(0)
    bins = np.linspace(float(every.min()) - 0.05, float(every.max()) + 0.05, 41) if every.size else 40
    for combination, values in log2_ratios.items():
        if values.size:
            left.hist(values, bins=bins, alpha=0.5, label=f"{combination} (n={values.size})")
    left.axvline(0.0, color="black", linewidth=0.8)
    auc = report["length"]["length_auc"]["value"]
    left.set(
        title=f"length: chosen / rejected (AUC {_number(auc, '.2f')})",
        xlabel=f"log2 length ratio ({report['length']['unit']['value']})",
        ylabel="pairs",
    )
    if log2_ratios:
        left.legend(fontsize=8)
    per = report["steering"]["per_steering"]["value"]
    metrics = [m for m in ("refusal_opening", "refusal", "offensive") if any(m in v for v in per.values())]
    width = 0.8 / max(len(per), 1)
    for index, (name, values) in enumerate(per.items()):
        heights = [values.get(m, {}).get("mean") or 0.0 for m in metrics]
        right.bar(np.arange(len(metrics)) + index * width, heights, width, label=name, color=COLOURS.get(name, "tab:blue"))
    right.set_xticks(np.arange(len(metrics)) + width * (len(per) - 1) / 2, metrics)
    right.set(title="safety metrics by steering", ylim=(0, 1), ylabel="mean over prompts")
    if per:
        right.legend(fontsize=8)
    failed = [c["check"] for c in report["checks"] if c["verdict"] == "fail"]
    figure.suptitle("checks failed: " + (", ".join(failed) if failed else "none"), fontsize=10)
    figure.tight_layout()
    return figure
