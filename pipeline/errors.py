"""The few kinds of failure edgekiln reports, each with a stable exit code.

Only ``PipelineError`` subclasses are caught by the CLI and printed as one paragraph; anything
else is a bug and keeps its traceback.
"""

from __future__ import annotations

import difflib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Iterable


class PipelineError(Exception):
    """Base class: a message a user can act on."""

    exit_code = 1
    label = "error"

    def __init__(self, message: str) -> None:
        if not message:
            raise ValueError("a PipelineError needs a message")
        super().__init__(message)


class StageError(PipelineError):
    """A stage raised while building its output (exit 1)."""

    exit_code = 1
    label = "stage failed"


class RecipeError(PipelineError):
    """The recipe is wrong: unknown key, wrong type, unknown choice (exit 2)."""

    exit_code = 2
    label = "recipe error"


class InputError(PipelineError):
    """A file the recipe points at is missing, unsafe or unreadable (exit 3)."""

    exit_code = 3
    label = "bad input"


class GateError(PipelineError):
    """A quality gate of the recipe was not met (exit 4)."""

    exit_code = 4
    label = "quality gate failed"


class EnvironmentProblem(PipelineError):
    """Something the machine lacks: a framework extra, a lock, disk (exit 5)."""

    exit_code = 5
    label = "environment"


def did_you_mean(word: str, choices: Iterable[str]) -> str:
    """Return ' Did you mean 'x'?' when a choice is close to ``word``, else ''."""
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f" Did you mean '{close[0]}'?" if close else ""
