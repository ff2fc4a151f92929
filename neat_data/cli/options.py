"""Click options derived from a stage's pydantic config: one definition of every option's name, type, choices,
default and help — the config field — for the CLI, recipes and manifests alike.

    @config_options(GenerateConfig, flatten=("sampling",))   # --prompts, --num-pos, --temperature, …
    def generate(**options): config = build_config(GenerateConfig, options, flatten=("sampling",))

Rules: a field `num_pos` is the option `--num-pos`; a `Literal` is a `click.Choice` of exactly its values; a bool is
`--x/--no-x` (or the field's `json_schema_extra={"cli_false": "--other"}` name for the off switch); a `list[str]` is one
comma-separated option (a `list[Literal]`: a choice of its names, each checked by the config); a field without a
default is required; a nested model named in `flatten` contributes its own fields without a prefix. A command built
with `cls=SectionedCommand` lists its options in --help under one heading per class that defines them (the first
sentence of its docstring; the config's own fields: "Options"). Options the user does not give are left out, so the
config's defaults apply (and are shown in `--help`). A value the config rejects is one line naming the option
(`NeatError(option=…)`), exit code 2.
"""

from __future__ import annotations

import re
import types
import typing
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import click
from pydantic import BaseModel, ValidationError
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

from neat_data.core.errors import NeatError, register_secret_fields, validation_message


def _plain(annotation: Any) -> Any:
    """`X | None` → X."""
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        return args[0] if len(args) == 1 else annotation
    return annotation


def _fields(model: type[BaseModel], skip: tuple[str, ...], flatten: tuple[str, ...]) -> Iterator[tuple[str, FieldInfo, type]]:
    """(name, field, the class defining it) of every option, own fields first, then each base's; nested ones inlined."""
    owner = {name: next(base for base in model.__mro__ if name in vars(base).get("__annotations__", {})) for name in model.model_fields}
    for name in sorted(model.model_fields, key=lambda name: model.__mro__.index(owner[name])):
        if name in skip:
            continue
        field = model.model_fields[name]
        if name in flatten:
            yield from _fields(_plain(field.annotation), skip, ())
        else:
            yield name, field, owner[name]


class SectionedCommand(click.Command):
    """--help with the options under one heading per section, in the order each section first appears."""

    def format_options(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        sections: dict[str, list[tuple[str, str]]] = {}
        for param in self.get_params(ctx):
            record = param.get_help_record(ctx)
            if record is not None:
                sections.setdefault(getattr(param, "section", None) or "Options", []).append(record)
        for heading, rows in sections.items():
            with formatter.section(heading):
                formatter.write_dl(rows)


def _heading(owner: type, model: type[BaseModel]) -> str | None:
    """The section of a field defined by `owner`: None (the command's own options) for `model` itself, else the first
    sentence of owner's docstring."""
    return None if owner is model else re.split(r"\. |; |\n", (owner.__doc__ or owner.__name__).strip())[0].rstrip(".")


def _check_skip(model: type[BaseModel], skip: tuple[str, ...], flatten: tuple[str, ...]) -> None:
    """A skip list naming a field the config does not have would hide nothing, silently: refused."""
    nested = {name for outer in flatten for name in _plain(model.model_fields[outer].annotation).model_fields}
    unknown = sorted(set(skip) - set(model.model_fields) - nested)
    if unknown:
        raise ValueError(f"{model.__name__} has no field {unknown[0]!r} to skip")


def _default_text(field: FieldInfo) -> str | None:
    if field.default_factory is not None:
        value = field.default_factory()  # type: ignore[call-arg]
    elif field.default is PydanticUndefined or field.default is None:
        return None
    else:
        value = field.default
    if isinstance(value, list):
        return ",".join(str(v) for v in value) or None  # an empty list: nothing to show
    return str(value).lower() if isinstance(value, bool) else str(value)


def option_for(name: str, field: FieldInfo) -> Callable[[Any], Any]:
    """One click option for one config field."""
    kind = _plain(field.annotation)
    flag = "--" + name.replace("_", "-")
    required = field.is_required()
    shown = _default_text(field)
    # default=None (an option not given stays out of the config, whose default applies); the default is shown in the
    # help text by hand, since click would print a string default in parentheses
    help_text = (field.description or "") + (f"  [default: {shown}]" if shown is not None else "")
    common: dict[str, Any] = {"default": None, "required": required, "help": help_text}
    if kind is bool:
        extra = field.json_schema_extra if isinstance(field.json_schema_extra, dict) else {}
        off = str(extra.get("cli_false") or "--no-" + name.replace("_", "-"))
        return click.option(f"{flag}/{off}", name, **common)
    if typing.get_origin(kind) is typing.Literal:
        return click.option(flag, name, type=click.Choice([str(v) for v in typing.get_args(kind)]), **common)
    if typing.get_origin(kind) is list and typing.get_origin(typing.get_args(kind)[0]) is typing.Literal:
        return click.option(flag, name, type=_Choices([str(v) for v in typing.get_args(typing.get_args(kind)[0])]), **common)
    if typing.get_origin(kind) is list:
        return click.option(flag, name, type=str, metavar="A,B,…", **common)
    if kind is Path:
        return click.option(flag, name, type=click.Path(path_type=Path), **common)
    if kind in (int, float):
        return click.option(flag, name, type=_Number(kind), **common)
    return click.option(flag, name, type=str, **common)


class _Choices(click.Choice):
    """A `list[Literal]`: one comma-separated option of those names (`--pairs original,chosen-vs-neg`). The text goes to
    the config as typed (split on commas by `build_config`), which checks each name: a wrong one is one line."""

    def get_metavar(self, param: click.Parameter, *args: Any, **kwargs: Any) -> str:
        return "[" + "|".join(str(choice) for choice in self.choices) + "],…"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        return value


class _Number(click.ParamType):
    """An int or float option handed to the config as typed: the config checks it, so `--max-total-tokens nan` is one
    line naming the option (click's own INT/FLOAT would print a usage block of four lines)."""

    def __init__(self, kind: type) -> None:
        self.name = "integer" if kind is int else "float"  # the metavar in --help: INTEGER / FLOAT, as before

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        return value


def config_options(model: type[BaseModel], *, skip: tuple[str, ...] = (), flatten: tuple[str, ...] = ()) -> Callable[[Any], Any]:
    """Decorator: every field of `model` (less `skip`) as a click option."""

    _check_skip(model, skip, flatten)

    def decorate(function: Any) -> Any:
        for name, field, owner in reversed(list(_fields(model, skip, flatten))):
            function = option_for(name, field)(function)
            function.__click_params__[-1].section = _heading(owner, model)  # the option just added: its --help section
        return function

    return decorate


def option_names(model: type[BaseModel], *, skip: tuple[str, ...] = (), flatten: tuple[str, ...] = ()) -> list[str]:
    _check_skip(model, skip, flatten)
    return [name for name, _, _ in _fields(model, skip, flatten)]


def build_config(config_class: type[BaseModel], options: dict[str, Any], *, flatten: tuple[str, ...] = (), **fixed: Any) -> Any:
    """The config from click's values (None = not given), nested models regrouped, lists split on commas; `fixed`:
    values the command sets itself (arguments such as RUN)."""
    model = config_class
    values: dict[str, Any] = dict(fixed)
    nested_of = {inner: outer for outer in flatten for inner in _plain(model.model_fields[outer].annotation).model_fields}
    for name, value in options.items():
        if value is None:
            continue
        target = values.setdefault(nested_of[name], {}) if name in nested_of else values
        field = (
            _plain(model.model_fields[nested_of[name]].annotation).model_fields[name] if name in nested_of else model.model_fields.get(name)
        )
        if field is not None and typing.get_origin(_plain(field.annotation)) is list and isinstance(value, str):
            value = [part.strip() for part in value.split(",") if part.strip()]
        target[name] = value
    try:
        config = model.model_validate(values)
    except ValidationError as error:
        field, message = validation_message(error)
        head, _, rest = field.partition(".")
        raise NeatError(message, option=rest if head in flatten and rest else field) from None
    register_secret_fields(config)  # --api-key-env X, --token-env MY_HUB_CREDENTIAL: their values are scrubbed
    return config
