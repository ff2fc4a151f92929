"""The `neat-data` command line (`neat_data.cli:main`, also `python -m neat_data.cli`): the group and its error
contract in `main.py`, the commands beside it — `stages.py` (generate, score, merge, rank, export, report, view, push),
`prompts.py` (prompts list | show | audit), `rounds.py` (train, evaluate, run, quickstart, the internal stage),
`batch.py` (batch status | cancel); options derived from the configs in `options.py`."""

from neat_data.cli import batch, prompts, rounds, stages  # noqa: F401  (each module adds its commands to the group)
from neat_data.cli.main import cli, main

__all__ = ["cli", "main"]
