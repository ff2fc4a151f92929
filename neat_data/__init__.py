"""neat_data: expanded preference datasets for LLM alignment (NEAT, arXiv 2410.12194).

Stages are plain functions from one table to the next (`neat_data.stages`); the `neat-data` CLI
(`neat_data.cli`) turns options into a stage config and calls them. Importing the package never
imports vllm or torch.
"""

__version__ = "0.1.0"
