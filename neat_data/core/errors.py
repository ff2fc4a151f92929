"""User-facing errors: one line naming the file, row and field, turned into exit code 2 by the CLI."""

from __future__ import annotations

import errno
import os
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pydantic import ValidationError

_SECRET_NAME = re.compile(r"(KEY|TOKEN|SECRET|PASSWORD)", re.I)
# The names (never the values) of the variables this process was handed as secrets, for the processes it starts:
# a stage of `neat-data run` is a child process and scrubs its own lines and files.
SECRET_NAMES_VARIABLE = "NEAT_DATA_SECRET_ENV"
_handed_secret_names: set[str] = set()


EXIT_BAD_INPUT = 2  # the user's input or environment is wrong: one line says which file, row, field
EXIT_NOTHING_OK = 3  # the input was fine but nothing succeeded (every row an error row)
EXIT_PENDING = 4  # batch requests were submitted and are not answered yet: the same command run later collects them
EXIT_CHECK_FAILED = 5  # `neat-data audit --fail-on CHECK`: the report is written and a named check failed


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
        exit_code: int = EXIT_BAD_INPUT,
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


def register_secret_env(name: str | None) -> None:
    """Remember that the environment variable `name` holds a secret this process was handed (`--token-env
    MY_HUB_CREDENTIAL`, a recipe's `api_key_env: X`): the scrub covers its value, whatever the variable is called."""
    if name:
        _handed_secret_names.add(name)


def register_secret_fields(value: Any) -> None:
    """Register every variable a config names in a field ending in `_env` (api_key_env, token_env, …), at any depth
    of a pydantic model, a mapping or a list: where an option is resolved, so that no such option is forgotten."""
    if hasattr(value, "model_dump"):
        value = value.model_dump()
    if isinstance(value, dict):
        for key, inner in value.items():
            if isinstance(key, str) and key.endswith("_env") and isinstance(inner, str):
                register_secret_env(inner)
            else:
                register_secret_fields(inner)
    elif isinstance(value, (list, tuple)):
        for inner in value:
            register_secret_fields(inner)


def handed_secret_names() -> set[str]:
    """The variables registered here or by the process that started this one (SECRET_NAMES_VARIABLE)."""
    inherited = os.environ.get(SECRET_NAMES_VARIABLE, "")
    return _handed_secret_names | {name for name in inherited.split(",") if name}


def child_environment() -> dict[str, str]:
    """The environment for a child process of ours: this one's, plus the names of the handed secrets."""
    return {**os.environ, SECRET_NAMES_VARIABLE: ",".join(sorted(handed_secret_names()))}


def secret_values(*, handed_only: bool = False) -> list[str]:
    """The values (8+ characters) of the handed secrets and — unless `handed_only` — of every secret-looking
    environment variable (…KEY, …TOKEN, …SECRET, …PASSWORD)."""
    handed = handed_secret_names()
    values = {
        value
        for name, value in os.environ.items()
        if len(value) >= 8 and (name in handed or (not handed_only and _SECRET_NAME.search(name)))
    }
    return sorted(values, key=len, reverse=True)  # a longer secret first: a shorter one inside it leaves no piece


def redact_secrets(text: str, values: list[str] | None = None) -> str:
    """`text` with every secret value (`secret_values`, or `values` read from it once by a caller that scrubs a stream)
    — and every 16+ character piece of one (a cut line may end inside it) — replaced by '***': the last guard before
    any line is printed or written."""
    for value in secret_values() if values is None else values:
        text = redact_secret(text, value)
    return text


def redact_secret(text: str, secret: str | None, *, min_fragment: int = 16) -> str:
    """`text` with `secret` (an API key) and every run of `min_fragment`+ characters of it replaced by '***'.

    Call it on the whole text *before* cutting it to length: a cut can leave a long prefix of the key that no
    longer matches the whole key (a 300-character error line ending in "sk-proj-AbC…"). Secrets shorter than 8
    characters (placeholders such as "EMPTY" for local servers) are left alone: replacing them would garble text
    without protecting anything."""
    if not secret or len(secret) < 8 or not text:
        return text
    spans: list[tuple[int, int]] = []
    if len(secret) < min_fragment:
        start = text.find(secret)
        while start != -1:
            spans.append((start, start + len(secret)))
            start = text.find(secret, start + 1)
    else:
        for offset in range(len(secret) - min_fragment + 1):
            fragment = secret[offset : offset + min_fragment]
            start = text.find(fragment)
            while start != -1:
                spans.append((start, start + min_fragment))
                start = text.find(fragment, start + 1)
    if not spans:
        return text
    spans.sort()
    merged = [list(spans[0])]
    for start, end in spans[1:]:
        if start <= merged[-1][1]:  # overlapping or touching windows of one occurrence
            merged[-1][1] = max(merged[-1][1], end)
        else:
            merged.append([start, end])
    pieces, position = [], 0
    for start, end in merged:
        pieces += [text[position:start], "***"]
        position = end
    pieces.append(text[position:])
    return "".join(pieces)


# The machine's failures, not ours: a full disk or quota, a read-only or forbidden folder, a file-size limit, no file
# handles left, a failing device, a path that loops or is too long.
_ENVIRONMENT_ERRNOS = {
    errno.ENOSPC,
    errno.EDQUOT,
    errno.EROFS,
    errno.EACCES,
    errno.EPERM,
    errno.EFBIG,
    errno.EMFILE,
    errno.ENFILE,
    errno.EIO,
    errno.ELOOP,
    errno.ENAMETOOLONG,
}
# These may be our bug, unless the path runs through a symbolic link to nothing (`--out` a dangling link).
_PATH_ERRNOS = {errno.EEXIST, errno.ENOENT, errno.ENOTDIR}


def environment_error(error: OSError) -> NeatError | None:
    """The one line for an OSError the environment caused (`<path>: No space left on device`), or None when it
    may be a bug of ours. The path is the error's own filename (core.files names the file a failed write was for)."""
    code = error.errno
    path = error.filename if isinstance(error.filename, str) else None
    if path is not None and code in _PATH_ERRNOS:
        link = _dangling_link(Path(path))
        if link is not None:
            return NeatError(f"a symbolic link to '{os.readlink(link)}', which does not exist", file=link)
        return None
    if code not in _ENVIRONMENT_ERRNOS:
        return None
    return NeatError(os.strerror(code), file=path)


def _dangling_link(path: Path) -> Path | None:
    """`path` or the first of its parents that is a symbolic link whose target does not exist."""
    for candidate in [path, *path.parents]:
        if candidate.is_symlink() and not candidate.exists():
            return candidate
    return None


def with_path(error: OSError, path: str | Path) -> OSError:
    """`error` naming `path` when it names no file (a write() or a Parquet writer failing on a full disk does not):
    the line the user sees says which file could not be written."""
    if error.filename is not None or error.errno is None:
        return error
    return OSError(error.errno, os.strerror(error.errno), str(path))


def validation_message(error: ValidationError) -> tuple[str, str]:
    """(dotted field, message) of a pydantic ValidationError's first problem, without pydantic's "Value error, "
    prefix. Never the input value: it may hold a secret (a key in a URL)."""
    first = error.errors()[0]
    field = ".".join(str(part) for part in first["loc"]) or "config"
    message = first["msg"].removeprefix("Value error, ").removeprefix("Assertion failed, ")
    return field, message
