"""Hydra's composition failures (bad YAML, unknown keys, bad overrides) as one-paragraph errors.

Hydra prints a YAML syntax error as a PyYAML traceback with ``file:line:col`` at its very end,
and its own errors over several lines with a hint about ``HYDRA_FULL_ERROR``. The CLI lets
Hydra raise instead and turns what it raised into a ``RecipeError`` here.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from pipeline.errors import RecipeError
from pipeline.suggest import suggestion

if TYPE_CHECKING:
    from pathlib import Path

    from yaml import MarkedYAMLError
    from yaml.error import Mark

# lines of Hydra's and OmegaConf's messages that say nothing a user acts on
_NOISE = re.compile(r"^\s*(reference_type|object_type)=|^Config search path:|"
                    r"^\s*provider=|HYDRA_FULL_ERROR|^See https://hydra\.cc")


def recipe_error(exc: BaseException, search_path: list[Path]) -> RecipeError | None:
    """The RecipeError that ``exc``, raised while composing a recipe, stands for, else None."""
    from hydra.errors import HydraException, OverrideParseException
    from omegaconf.errors import OmegaConfBaseException

    if not isinstance(exc, HydraException | OmegaConfBaseException):
        return _file_error(exc)
    # what Hydra itself prints: its message, and the OmegaConf error under it
    text = str(exc)
    if isinstance(exc.__cause__, OmegaConfBaseException):
        text += "\n" + str(exc.__cause__)
    if isinstance(exc, OverrideParseException):
        text = f"the override '{exc.override}': {text}"
    return RecipeError(one_paragraph(text) + suggestion(text, search_path))


def _file_error(exc: BaseException) -> RecipeError | None:
    """A recipe file Hydra could not read or load: YAML, encoding, self-reference, defaults."""
    found = _yaml_error(exc)  # first: a YAML error may come wrapped in any of the others
    if found is not None:
        return found
    if isinstance(exc, RecursionError):  # OmegaConf walks a self-referencing node forever
        return RecipeError("the recipe refers to itself: a YAML alias inside its own anchor "
                           "(x: &a [*a]) or an interpolation that leads back to its key")
    if isinstance(exc, UnicodeDecodeError):
        return RecipeError(f"a recipe file is not UTF-8 text: {exc}")
    if isinstance(exc, OSError) and str(exc).startswith(_NOT_A_MAPPING):
        return _not_a_mapping(exc)
    # Hydra checks a defaults list with plain ValueErrors ("defaults must be a list")
    if isinstance(exc, ValueError | TypeError) and _raised_in(exc, ("hydra.", "omegaconf.")):
        return RecipeError(f"{one_paragraph(str(exc))} (in the recipe's defaults list or a "
                           "config it loads)")
    return None


def _yaml_error(exc: BaseException) -> RecipeError | None:
    import yaml

    for cause in _chain(exc):
        if isinstance(cause, yaml.MarkedYAMLError):
            return RecipeError(yaml_message(cause))
        if isinstance(cause, yaml.YAMLError):  # unmarked: a reader error (bad bytes)
            return RecipeError(f"unreadable YAML: {cause}")
    return None


# OmegaConf.load's refusal of a file whose YAML is a scalar ("0", "just text"), not a mapping
_NOT_A_MAPPING = "Invalid loaded object type"


def _not_a_mapping(exc: OSError) -> RecipeError:
    found = str(exc).rpartition(": ")[2]
    return RecipeError(f"{_file_being_loaded(exc) or 'a recipe file'}: a recipe or group file "
                       f"must be a YAML mapping of keys to values; this one holds a single "
                       f"{found} value")


def _file_being_loaded(exc: BaseException) -> str | None:
    """The file Hydra's file config source was loading when ``exc`` was raised (the error
    itself names none): ``full_path`` of its ``load_config`` frame."""
    trace = exc.__traceback__
    while trace is not None:
        frame = trace.tb_frame
        if frame.f_code.co_name == "load_config" and "full_path" in frame.f_locals:
            return str(frame.f_locals["full_path"])
        trace = trace.tb_next
    return None


def yaml_message(exc: MarkedYAMLError) -> str:
    """``<file>:<line>:<col>: <problem>`` (1-based, like compilers), with its context."""
    mark = exc.problem_mark or exc.context_mark
    problem = exc.problem or exc.context or "invalid YAML"
    where = _place(mark) if mark is not None else "<recipe>"
    message = f"{where}: {problem}"
    if exc.context and exc.problem:
        opened = exc.context_mark
        at = f" at {opened.line + 1}:{opened.column + 1}" if opened is not None else ""
        message += f" ({exc.context}{at})"
    if "constructor for the tag" in problem:
        message += "; recipes are plain YAML: tags such as !!python/object are not allowed"
    return message


def one_paragraph(text: str) -> str:
    """Hydra's multi-line message joined into one line, without its search path and hints."""
    lines = [line.strip() for line in text.splitlines()]
    kept, options = [], []
    in_options = False
    for line in lines:
        if not line or _NOISE.search(line):
            in_options = False if not line else in_options
            continue
        if line.startswith("Available options"):
            in_options = True
        elif in_options:
            options.append(line)
        else:
            kept.append(line.rstrip("."))
    if options:
        kept.append(f"available: {', '.join(options)}")
    return "; ".join(dict.fromkeys(kept)) + "." if kept else "could not compose the recipe."


def _place(mark: Mark) -> str:
    return f"{mark.name}:{mark.line + 1}:{mark.column + 1}"


def _raised_in(exc: BaseException, packages: tuple[str, ...]) -> bool:
    """Whether the innermost frame of ``exc``'s traceback is in one of ``packages``."""
    tb = exc.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    return tb is not None and str(tb.tb_frame.f_globals.get("__name__", "")).startswith(packages)


def _chain(exc: BaseException) -> list[BaseException]:
    chain: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and current not in chain:
        chain.append(current)
        current = current.__cause__ or current.__context__
    return chain
