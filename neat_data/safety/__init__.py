"""Safety evaluation that does not use the training scorer: harmful-prompt sources, response metrics, statistics.

    sources.py      `data://harmbench@test`, `data://strongreject[@small]`: prompt rows read from PyPI data packages
    metrics.py      per-response metrics (`MetricName`): refusal (HarmBench's AdvBench prefix list), P(offensive),
                    VADER tone, length, finish, refusal_opening (a refusal statement in the answer's opening) — they
                    measure refusal *wording*, offensiveness and tone, not helpfulness
    stats.py        per-prompt means over k samples, bootstrap intervals over prompts, paired (policy − base) intervals
    suites.py       evaluation suites as data (`prompts/eval/*.yaml`): a source, a kind, metrics, an optional seeded limit
    summary.py      generation rows → per-response values (metrics.parquet) and per-suite means with intervals
    decontaminate.py  drop training prompts that share a normalised 8-gram with an evaluation suite
    audit.py        `neat-data prompts audit`: how far each steering pair separates responses on a given model

A lower layer: nothing here imports a stage module (`neat_data/stages/*`, `neat_data/rounds/`, `neat_data/cli/`).
"""
