"""The command line's manners (``ftfsearch/cli_usage.py``): ``--version``; a command line that cannot be
parsed is one ``error:`` line with exit status 2, as every other bad input; ``--help`` shows no
value placeholder for on/off flags and one value for repeatable flags. The installed command, as a
user runs it."""

from __future__ import annotations

import re

import pytest

from _cli import assert_one_line_error, run
from ftfsearch import __version__


def test_version() -> None:
    proc = run("--version")
    assert proc.returncode == 0 and proc.stdout.strip() == f"ftfsearch {__version__}", proc.stderr


@pytest.mark.parametrize("args, needles", [
    (("query", "x", "--k", "abc"), ("invalid value for '--k'", "ftfsearch query --help")),
    (("query", "x", "--kk", "3"), ("no such option: --kk",)),
    (("nosuch",), ("no such command 'nosuch'",)),
    (("drop",), ("missing argument",)),
])
def test_a_usage_error_is_one_line(args: tuple[str, ...], needles: tuple[str, ...]) -> None:
    proc = run(*args)
    assert_one_line_error(proc, *needles)
    assert proc.returncode == 2
    assert len([line for line in proc.stderr.splitlines() if line.strip()]) == 1, proc.stderr
    assert not re.search("[╭│╰]", proc.stderr)  # no framed block


def test_help_shows_values_only_where_a_flag_takes_one() -> None:
    proc = run("query", "--help", env={"COLUMNS": "160"})
    assert proc.returncode == 0, proc.stderr
    rows = {m.group(1): m.group(2) or "" for m in re.finditer(r"│ (--[\w-]+) +(<[^>]*>)?", proc.stdout)}
    assert rows["--json"] == "" and rows["--no-rerank"] == "" and rows["--help"] == ""
    assert rows["--like"] == "<str>" and rows["--scene"] == "<str>"  # repeatable: one value each time
    assert rows["--k"] == "<int>"
    assert "<bool>" not in proc.stdout and "list[" not in proc.stdout
