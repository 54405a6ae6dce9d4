"""How ``ftfsearch`` answers a command line it cannot parse, and how its help shows flags.

- A usage error (``--k abc``, an unknown flag, a missing argument) is one ``error:`` line on
  stderr with exit status 2, like every other bad input, not click's framed block of usage,
  hint and message.
- In ``--help``, an on/off flag shows no ``<bool>`` value (it takes none) and a repeatable flag
  shows the value it takes once (``<str>``), not ``<list[str]>``.
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Sequence
from typing import Any

from rich.console import Console
from rich.text import Text
from typer import Abort
from typer.core import TyperGroup, TyperOption

try:  # typer >= 0.26 parses with its own copy of click
    from typer._click import exceptions as click_exceptions
except ImportError:  # pragma: no cover - older typer, on click itself
    from click import exceptions as click_exceptions  # type: ignore[no-redef]


def usage_message(exc: click_exceptions.ClickException) -> str:
    """click's message as one line: lower-case like ftfsearch's own, naming the command and its help."""
    message = " ".join(exc.format_message().split()).rstrip(".")
    message = message[:1].lower() + message[1:] if message[:2] != message[:2].upper() else message
    ctx = getattr(exc, "ctx", None)
    if isinstance(exc, click_exceptions.UsageError) and ctx is not None:
        message = f"{message} (see '{ctx.command_path} --help')"
    return message


class OneLineErrors(TyperGroup):
    """The app's group: click's usage errors become one ``error:`` line (exit 2), the standalone
    mode's exits keep their codes."""

    def main(self, args: Sequence[str] | None = None, prog_name: str | None = None, complete_var: str | None = None,
             standalone_mode: bool = True, windows_expand_args: bool = True, **extra: Any) -> Any:
        parse = functools.partial(super().main, args, prog_name, complete_var, False, windows_expand_args, **extra)
        if not standalone_mode:
            return parse()
        try:
            code = parse()
        except click_exceptions.NoArgsIsHelpError as exc:  # the help is shown already: no error line
            sys.exit(exc.exit_code)
        except click_exceptions.ClickException as exc:
            Console(stderr=True, soft_wrap=True).print(Text(f"error: {usage_message(exc)}"), highlight=False)
            sys.exit(exc.exit_code)
        except Abort:
            Console(stderr=True).print("error: aborted", highlight=False)
            sys.exit(130)
        # a command returns None; an Exit it raised comes back as its code
        sys.exit(code if isinstance(code, int) else 0)


def _type_label(self: TyperOption, ctx: Any) -> str | None:
    """The help's type column for an option: none for an on/off flag, one value for a repeatable one."""
    if self.metavar is not None:
        return self.metavar
    if self.is_flag:
        return None
    label = self.display_type(ctx)
    if self.multiple and label.startswith("<list[") and label.endswith("]>"):
        return "<" + label[len("<list["):-len("]>")] + ">"
    return label


TyperOption.display_type_rich = _type_label  # type: ignore[method-assign]
