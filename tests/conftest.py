"""Shared fixtures: stage contexts built from plain dicts, as the executor builds them."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from hypothesis.configuration import set_hypothesis_home_dir
from omegaconf import OmegaConf

from pipeline.registry import StageContext

# Hypothesis keeps caches (and, unless a test says database=None, its example database) in
# ./.hypothesis of whatever folder pytest runs from; a test run writes nothing into the checkout
set_hypothesis_home_dir(Path(tempfile.gettempdir()) / "edgekiln-hypothesis")
# s3_server / s3_bucket: a real S3-protocol server on loopback for the shared-cache tests
pytest_plugins = ("tests.fixtures.s3_server",)

if TYPE_CHECKING:
    from collections.abc import Iterator

    from tests.fixtures.corpus import Corpus


def make_context(config: dict[str, Any], out: Path, inputs: dict[str, Path] | None = None,
                 target: str | None = None) -> StageContext:
    """A StageContext like the executor's: read-only config, enums as plain strings."""
    cfg = OmegaConf.create(config)
    OmegaConf.set_readonly(cfg, True)
    out.mkdir(parents=True, exist_ok=True)
    return StageContext(config=cfg, inputs=inputs or {}, out=out, target=target)


@pytest.fixture
def context_factory(tmp_path: Path):
    return lambda config, name="out", **kw: make_context(config, tmp_path / name, **kw)


@pytest.fixture(scope="session")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Corpus]:
    """Real models to quantize (tests/fixtures/corpus): ``corpus["minilm"]`` builds one on
    first use, in its own process, and the rest of the session reuses it."""
    from tests.fixtures.corpus import Corpus

    built = Corpus(tmp_path_factory.mktemp("corpus"))
    yield built
    built.close()
