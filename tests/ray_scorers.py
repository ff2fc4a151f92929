"""`python:` scorers for the Ray scoring tests (importable by the Ray workers: tests/ is on their PYTHONPATH)."""


def length_or_text(prompts: list, responses: list[str]) -> list:
    """len(response); for prompts about France a non-number, which the scorer turns into an error row."""
    return ["n/a" if "France" in p[-1]["content"] else float(len(r)) for p, r in zip(prompts, responses)]


def raises_on_france(prompts: list, responses: list[str]) -> list[float]:
    if any("France" in p[-1]["content"] for p in prompts):
        raise ValueError("boom on France")
    return [float(len(r)) for r in responses]
