"""docs/deployment.md's configurations are valid as written, and the one shape it says tollway
refuses (several workers on the memory backend) is refused."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tollway.config import parse_config
from tollway.errors import ConfigError

DOC = (Path(__file__).resolve().parent.parent / "docs" / "deployment.md").read_text()
BLOCKS = re.findall(r"```toml\n(.*?)```", DOC, re.S)


def test_the_doc_has_one_configuration_per_shape() -> None:
    assert len(BLOCKS) == 3


@pytest.mark.parametrize("block", BLOCKS)
def test_every_configuration_is_valid(block: str) -> None:
    config = parse_config(block)
    assert config.policies
    assert (config.state.backend == "redis") == (config.server.workers > 1)


def test_several_workers_on_the_memory_backend_are_refused() -> None:
    with pytest.raises(ConfigError, match=r"server\.workers: 4 workers with the memory backend"):
        parse_config(BLOCKS[0].replace("[server]\n", "[server]\nworkers = 4\n"))
