"""User-facing errors: one line naming the file, row and field, turned into exit code 2 by the CLI."""

from __future__ import annotations

from pathlib import Path


class NeatError(Exception):
    """A problem with the user's input or environment that the user can fix.

    The CLI prints `error: <file>: row <row>: field '<field>': <message>` (parts that are unknown are
    left out) and exits with code 2, never a traceback.
    """

    def __init__(
        self,
        message: str,
        *,
        file: str | Path | None = None,
        row: int | None = None,
        field: str | None = None,
    ):
        self.message = message
        self.file = str(file) if file is not None else None
        self.row = row
        self.field = field
        super().__init__(self.one_line())

    def one_line(self) -> str:
        parts = []
        if self.file is not None:
            parts.append(self.file)
        if self.row is not None:
            parts.append(f"row {self.row}")
        if self.field is not None:
            parts.append(f"field '{self.field}'")
        parts.append(self.message)
        return ": ".join(parts).replace("\n", " ")
