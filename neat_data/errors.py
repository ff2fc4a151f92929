"""User-facing errors: one line naming the file, row and field, turned into exit code 2 by the CLI."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pydantic import ValidationError

_SECRET_NAME = re.compile(r"(KEY|TOKEN|SECRET|PASSWORD)", re.I)


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
        option: str | None = None,
        exit_code: int = 2,
    ):
        self.message = message
        self.file = str(file) if file is not None else None
        self.row = row
        self.field = field
        self.option = option  # a command-line option (its config field name), named as "option '<name>'"
        self.exit_code = exit_code  # 2: bad input; 3: the input was fine but nothing succeeded (every row an error)
        super().__init__(self.one_line())

    def one_line(self) -> str:
        parts = []
        if self.file is not None:
            parts.append(self.file)
        if self.row is not None:
            parts.append(f"row {self.row}")
        if self.field is not None:
            parts.append(f"field '{self.field}'")
        if self.option is not None:
            parts.append(f"option '{self.option}'")
        parts.append(self.message)
        return ": ".join(parts).replace("\n", " ")


def redact_secrets(text: str) -> str:
    """`text` with the value of every secret-looking environment variable (…KEY, …TOKEN, …SECRET, …PASSWORD;
    8+ characters) replaced by '***': the last guard before an error line is printed."""
    for name, value in os.environ.items():
        if len(value) >= 8 and _SECRET_NAME.search(name) and value in text:
            text = text.replace(value, "***")
    return text


def validation_message(error: "ValidationError") -> tuple[str, str]:
    """(dotted field, message) of a pydantic ValidationError's first problem, without pydantic's "Value error, "
    prefix. Never the input value: it may hold a secret (a key in a URL)."""
    first = error.errors()[0]
    field = ".".join(str(part) for part in first["loc"]) or "config"
    message = first["msg"].removeprefix("Value error, ").removeprefix("Assertion failed, ")
    return field, message
