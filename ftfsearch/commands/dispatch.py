"""Each command's request and answer types, read from the :class:`~ftfsearch.commands.base.Commands`
protocol itself, so that serve's holder runs any command from one route and
:class:`~ftfsearch.commands.remote.HolderCommands` sends any command with one call: a new command
is a method of the protocol and of :class:`~ftfsearch.commands.local.LocalCommands`, and nothing here.

A command answers with one value, or (``Iterator[Plan | Page]``) streams its plan, then its pages.
``ingest`` is neither: it runs in the holder as a job that outlives the caller (its own routes)."""

from __future__ import annotations

import collections.abc
import functools
import typing
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, TypeAdapter

from ftfsearch.commands.base import Commands
from ftfsearch.commands.requests import Request
from ftfsearch.errors import BadInput

NOT_DISPATCHED = frozenset({"ingest", "close"})
"""Protocol methods that are not a request in, an answer out: the ingest job, and closing."""


@dataclass(frozen=True)
class CommandSignature:
    """What command ``name`` takes and gives."""

    name: str
    request: type[Request]
    answer: TypeAdapter[Any]
    """Of its answer; of each item for a streamed command."""
    stream: tuple[type[BaseModel], type[BaseModel]] | None
    """A streamed command's (plan, page) types; None for one answer."""


@functools.cache
def command_names() -> tuple[str, ...]:
    """Every command the holder runs (the protocol's methods but :data:`NOT_DISPATCHED`)."""
    return tuple(sorted(n for n, v in vars(Commands).items()
                        if callable(v) and not n.startswith("_") and n not in NOT_DISPATCHED))


@functools.cache
def signature(name: str) -> CommandSignature:
    """The signature of command ``name``, from the protocol's annotations; BadInput for a name that
    is not one (another version of ftfsearch sent it)."""
    if name not in command_names():
        raise BadInput(f"holder request: {name[:40]!r} is not a command of this ftfsearch")
    from ftfsearch.store.transfer import PushSummary  # the protocol's names imported for type checking only

    hints = typing.get_type_hints(getattr(Commands, name), localns={"PushSummary": PushSummary})
    request = hints["request"]
    answer = hints["return"]
    if typing.get_origin(answer) is collections.abc.Iterator:
        (item,) = typing.get_args(answer)
        plan, page = typing.get_args(item)
        return CommandSignature(name, request, TypeAdapter(item), (plan, page))
    return CommandSignature(name, request, TypeAdapter(answer), None)
