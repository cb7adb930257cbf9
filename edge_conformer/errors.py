"""The project's error for bad user input, and how command-line tools report it.

A path or setting the user gave that cannot be used (a file that is not a checkpoint, an
export directory without its front end, an output directory that holds the user's own files)
raises `UserInputError` with a message that names it. Every entry point and tool turns that
into one line on stderr, `tool: message`, and exit status 1: a traceback would bury the one
fact the user needs under frames of library code.
"""

from __future__ import annotations

import functools
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

Main = TypeVar("Main", bound=Callable[..., Any])


class UserInputError(ValueError):
    """A file, directory or setting from the user that cannot be used; the message names it.

    A ValueError, so that readers which raised ValueError for a bad file can raise this
    instead without breaking their callers.
    """


def read_json(path: Path, what: str) -> Any:
    """The JSON content of `path`, a `what` (e.g. "export front end"), or UserInputError."""
    try:
        return json.loads(Path(path).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise UserInputError(f"{path}: unreadable {what} ({one_line(error)})") from error


def one_line(error: BaseException) -> str:
    """An exception as one line: its type and its message's first line."""
    lines = str(error).strip().splitlines()
    return f"{type(error).__name__}: {lines[0]}" if lines else type(error).__name__


def exit_on_user_input_error(main: Main) -> Main:
    """Decorate a tool's main: UserInputError becomes `tool: message` on stderr, exit 1.

    Works under @hydra.main too (Hydra unwraps the decorator to find the calling file).
    """

    @functools.wraps(main)
    def run(*args: Any, **kwargs: Any) -> Any:
        try:
            return main(*args, **kwargs)
        except UserInputError as error:
            print(f"{Path(sys.argv[0]).name}: {error}", file=sys.stderr)
            sys.exit(1)

    return run  # type: ignore[return-value]
