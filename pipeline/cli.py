"""``python -m pipeline recipe=NAME [key=value ...]``: the Hydra entry point.

Recipes are searched in ``./recipes`` (a team's own), any ``--config-dir``, and the recipes
bundled with edgekiln. Errors print as one paragraph with a stable exit code; ``--verbose``
(or ``PIPELINE_FULL_ERROR=1``) shows the traceback.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
import traceback
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

import hydra
from hydra.core.config_store import ConfigStore

from pipeline import signals
from pipeline.composition import recipe_error
from pipeline.environment import machine_problem
from pipeline.errors import PipelineError, RecipeError
from pipeline.registry import load_kinds
from pipeline.schema import recipe_schema
from pipeline.suggest import Tee, suggestion

if TYPE_CHECKING:
    from omegaconf import DictConfig

BUNDLED_RECIPES = Path(__file__).resolve().parent.parent / "recipes"
USAGE = """usage: edgekiln recipe=NAME [key=value ...] [-m] [--config-dir DIR]
       edgekiln --list-recipes
       edgekiln nightly [--recipes GLOB] [--tolerance-file YAML]  # see edgekiln nightly -h
       edgekiln recipe=NAME run.dry_run=true     # what would run or come from cache
       edgekiln recipe=NAME run.force=[quantize] # rebuild a stage (or 'all')
(python -m pipeline is the same command); add --verbose to see tracebacks."""

_task_started = False


def search_path() -> list[Path]:
    local = Path.cwd() / "recipes"
    paths = [local] if local.is_dir() else []
    return [*paths, BUNDLED_RECIPES] if BUNDLED_RECIPES not in paths else paths


def register_primary_config() -> None:
    ConfigStore.instance().store(name="edgekiln", node={
        # the schema first, then the default graph, then the recipe, which may override the
        # graph or add stages to it
        "defaults": ["_self_", {"pipeline": "default"}, {"recipe": "???"}],
        **recipe_schema(load_kinds()),
        "hydra": {
            "searchpath": [f"file://{p}" for p in search_path()],
            "run": {"dir": "${run.artifacts_dir}/${hydra:runtime.choices.recipe}/_hydra/"
                           "${now:%Y%m%d-%H%M%S-%f}"},
            "sweep": {"dir": "${run.artifacts_dir}/_multirun/${now:%Y%m%d-%H%M%S}",
                      "subdir": "${hydra.job.num}-${hydra:runtime.choices.recipe}"},
            "job": {"chdir": False},
            # exporters log every pass at INFO; the live display already says what runs
            "job_logging": {"root": {"level": "WARNING"}},
        },
    })


@hydra.main(version_base="1.3", config_path=None, config_name="edgekiln")
def _app(cfg: DictConfig) -> None:
    global _task_started  # noqa: PLW0603 -- tells Hydra's own failures from ours
    _task_started = True
    from pipeline.runner import explain, run_recipe

    try:
        run_recipe(cfg)
    except PipelineError as exc:
        if _verbose():
            traceback.print_exc()
        print(explain(exc), file=sys.stderr)
        sys.exit(exc.exit_code)


def list_recipes() -> list[str]:
    names = set()
    for root in search_path():
        names.update(p.stem for p in (root / "recipe").glob("*.yaml"))
    return sorted(names)


# Hydra's options that take a value as the next argument
_VALUE_OPTIONS = {"--config-dir", "-cd", "--config-path", "-cp", "--config-name", "-cn",
                  "--cfg", "-c", "--package", "-p", "--info", "-i", "--experimental-rerun"}


def _options_last(args: list[str]) -> list[str]:
    """Move options after the overrides: argparse rejects overrides split by an option."""
    overrides, options = [], []
    pending_value = False
    for arg in args:
        if pending_value:
            options.append(arg)
            pending_value = False
        elif arg.startswith("-"):
            options.append(arg)
            pending_value = arg in _VALUE_OPTIONS
        else:
            overrides.append(arg)
    return [*overrides, *options]


def _verbose() -> bool:
    return os.environ.get("PIPELINE_FULL_ERROR") == "1"


def _skip_mode_probe() -> None:
    # Hydra composes the whole recipe an extra time only to read `hydra.mode`; the command line
    # already says this is a single run, and that composition is 40% of a cached rebuild.
    from hydra._internal.hydra import Hydra

    Hydra.get_mode = lambda *_args, **_kwargs: None  # type: ignore[method-assign]


def _answered_without_hydra(args: list[str]) -> bool:
    """Help, the recipe list and the nightly (its own options, not Hydra's) need no Hydra."""
    if args[:1] == ["nightly"]:
        from pipeline.nightly.cli import main as nightly

        signals.install()
        try:
            sys.exit(nightly(args[1:]))
        except KeyboardInterrupt as exc:
            _interrupted(exc)
    if {"-h", "--help"} & set(args) and not any(a.startswith("recipe=") for a in args):
        print(USAGE)
        return True
    if "--list-recipes" in args:
        print("\n".join(list_recipes()))
        return True
    return False


def main() -> None:
    # `python -m pipeline` puts the working directory first on sys.path, the `edgekiln` script
    # does not: recipes name factories (recipes.zoo.resnet:resnet18) relative to it
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    args = sys.argv[1:]
    if _answered_without_hydra(args):
        return
    if "--verbose" in args:
        args.remove("--verbose")
        os.environ["PIPELINE_FULL_ERROR"] = "1"
    sys.argv = [sys.argv[0], *_options_last(args)]
    try:
        register_primary_config()  # loads the stage kinds: a broken plugin fails here
    except PipelineError as exc:
        if _verbose():
            traceback.print_exc()
        print(f"edgekiln: {exc.label}: {exc}", file=sys.stderr)
        sys.exit(exc.exit_code)
    if not {"-m", "--multirun"} & set(args):
        _skip_mode_probe()
    signals.install()
    _run_hydra_app()


def _run_hydra_app() -> None:
    # Hydra then raises what fails instead of printing it (a YAML error as a PyYAML traceback)
    os.environ["HYDRA_FULL_ERROR"] = "1"
    sys.stderr = tee = Tee(sys.stderr)
    try:
        _app()
    except SystemExit as exc:
        # Hydra exits 1 on any composition error (unknown key, bad type, missing recipe)
        if exc.code == 1 and not _task_started:
            hint = suggestion("".join(tee.text), search_path()).strip()
            if hint:
                print(hint, file=sys.stderr)
            sys.exit(RecipeError.exit_code)
        raise
    except KeyboardInterrupt as exc:
        _interrupted(exc)
    except Exception as exc:
        problem = _known_failure(exc)
        if problem is None:
            raise  # a bug: keep its traceback
        if _verbose():
            traceback.print_exc()
        print(f"edgekiln: {problem.label}: {problem}", file=sys.stderr)
        sys.exit(problem.exit_code)
    finally:
        sys.stderr = tee.stream
        logging.shutdown()


def _known_failure(exc: Exception) -> PipelineError | None:
    """The one-paragraph error an exception that escaped Hydra stands for, None for a bug."""
    if isinstance(exc, PipelineError):
        return exc
    if isinstance(exc, OSError) and (problem := machine_problem(exc)) is not None:
        return problem
    return recipe_error(exc, search_path())


def _interrupted(exc: KeyboardInterrupt) -> NoReturn:
    """One line and exit 128+signal; builds under way were discarded by the executor."""
    for signum in (signal.SIGINT, signal.SIGTERM):  # a second Ctrl-C must not add a traceback
        signal.signal(signum, signal.SIG_IGN)
    signum = signals.signal_number(exc)
    print(f"edgekiln: interrupted ({signal.Signals(signum).name}); builds in progress were "
          "discarded, nothing half-built is cached", file=sys.stderr)
    code = 128 + signum
    if any(t.is_alive() and not t.daemon for t in threading.enumerate()
           if t is not threading.main_thread()):
        # a worker still inside a stage (torch's export cannot be interrupted) would keep the
        # interpreter from exiting until it finishes: its staging directory is already gone
        sys.stderr.flush()
        sys.stdout.flush()
        os._exit(code)
    sys.exit(code)
