"""The recipe loader under hostile input: every outcome is a success or one paragraph.

Hypothesis writes recipes (junk keys and values, unknown groups, broken YAML, unicode, huge
numbers, self-referencing anchors, bad stage graphs) and overrides, and the CLI runs on each
in-process with ``run.dry_run=true``: composition, plan-time checks and cache keys, no stage.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings

from tests.fixtures.cli import run_cli
from tests.fixtures.recipe_fuzz import (
    BAD_YAML,
    VALID,
    Example,
    cli_outcome,
    examples,
    is_clean,
    write_example,
)


@pytest.fixture(autouse=True)
def _hydra_raises(monkeypatch: pytest.MonkeyPatch) -> None:
    # the CLI sets it for Hydra; monkeypatch puts the test process's environment back after
    monkeypatch.setenv("HYDRA_FULL_ERROR", "1")
    monkeypatch.delenv("PIPELINE_FULL_ERROR", raising=False)


# database=None: Hypothesis would keep its example database in ./.hypothesis of whatever folder
# pytest runs from; a failure prints its falsifying example, which becomes a regression test
@settings(max_examples=220, deadline=None, database=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(examples)
def test_fuzzed_recipes_fail_in_one_paragraph_or_succeed(example: Example) -> None:
    with tempfile.TemporaryDirectory() as folder:
        outcome = cli_outcome(write_example(Path(folder), example), Path(folder))
    assert is_clean(outcome), (outcome.code, outcome.crash, outcome.stderr[-3000:])


def test_the_valid_base_of_the_fuzz_plans(tmp_path: Path) -> None:
    outcome = cli_outcome(write_example(tmp_path, Example(VALID, [])), tmp_path)
    assert outcome.code == 0, outcome.stderr
    assert "dry run" in outcome.stderr


@pytest.mark.parametrize(("text", "where", "problem"), [
    ("model:\n  name: [1, 2\n", "fuzz.yaml:4:1:", "expected ',' or ']'"),
    ("model:\n  name: a\n  name: b\n", "fuzz.yaml:4:3:", "found duplicate key name"),
    ("model: !!python/object/apply:os.system ['true']\n", "fuzz.yaml:2:8:",
     "tags such as !!python/object are not allowed"),
    ("x: &a [*a]\n", "", "the recipe refers to itself"),
    ("defaults: 7\n", "", "defaults must be a list (got int)"),
    ("defaults:\n  - true\n", "", "Unsupported type in defaults"),
    # found by the fuzz: OmegaConf raised a bare OSError, which escaped with a traceback
    ("0\n", "fuzz.yaml: ", "must be a YAML mapping of keys to values; this one holds a single "
     "int value"),
], ids=["syntax", "duplicate-key", "python-tag", "self-alias", "defaults-int",
        "defaults-bool", "scalar-file"])
def test_yaml_errors_are_one_line_with_file_line_column(tmp_path: Path, text: str,
                                                        where: str, problem: str) -> None:
    """A real subprocess of the CLI, as a user runs it."""
    args = write_example(tmp_path, Example(text, []))
    result = run_cli(*args, cwd=tmp_path, timeout=120)
    assert result.code == 2, result.stderr
    assert "Traceback" not in result.stderr
    [line] = [x for x in result.stderr.splitlines() if x.startswith("edgekiln: ")]
    assert line.startswith("edgekiln: recipe error: ")
    assert where in line
    assert problem in line
    if where:
        assert str(tmp_path / "recipes" / "recipe" / "fuzz.yaml") in line


def test_a_broken_group_file_is_named(tmp_path: Path) -> None:
    args = write_example(tmp_path, Example(VALID, [], group_file=BAD_YAML[0]))
    result = run_cli(*args, cwd=tmp_path, timeout=120)
    assert result.code == 2, result.stderr
    assert "Traceback" not in result.stderr
    assert f"{tmp_path / 'recipes' / 'model' / 'fuzzgroup.yaml'}:3:1:" in result.stderr


@pytest.mark.parametrize(("body", "message"), [
    ('targets: "abc"\n', "targets: expected a mapping (targets.<name>: ...), got str 'abc'."),
    ("stages: x\n", "stages: expected a mapping (stages.<name>: ...), got str 'x'."),
    ("defaults: 7\n", "defaults must be a list (got int)"),
], ids=["targets-string", "stages-string", "defaults-int"])
def test_what_the_fuzz_found_is_a_recipe_error(tmp_path: Path, body: str, message: str) -> None:
    recipe = body if body.startswith("defaults") else VALID + body
    outcome = cli_outcome(write_example(tmp_path, Example(recipe, [])), tmp_path)
    assert outcome.code == 2, (outcome.crash, outcome.stderr)
    assert is_clean(outcome)
    assert message in outcome.stderr
