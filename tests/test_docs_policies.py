"""The policy documentation is runnable: every TOML example in docs/policies.md is a valid
configuration fragment, and the example configuration passes its own policy tests."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from tollway.config import parse_config

ROOT = Path(__file__).resolve().parent.parent
DOC = (ROOT / "docs" / "policies.md").read_text()
BLOCKS = re.findall(r"```toml\n(.*?)```", DOC, re.S)
BASE = """
[[providers]]
name = "mock"
kind = "mock"

[[models]]
name = "gpt-4o-mini"
provider = "mock"
"""


def test_the_doc_has_examples() -> None:
    assert len(BLOCKS) >= 8


@pytest.mark.parametrize("block", [b for b in BLOCKS if "[[policies]]" in b])
def test_every_policy_example_is_valid(block: str) -> None:
    config = parse_config(BASE + block)
    assert config.policies


def test_example_configuration_and_its_policy_tests() -> None:
    check = subprocess.run(
        [sys.executable, "-m", "tollway.cli", "check", str(ROOT / "examples" / "policies.toml")],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert check.returncode == 0, check.stderr
    assert "warning" not in check.stderr
    tests = subprocess.run(
        [sys.executable, "-m", "tollway.cli", "policy", "test", str(ROOT / "examples" / "policy-tests.toml")],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert tests.returncode == 0, tests.stdout + tests.stderr
    assert tests.stdout.strip().endswith("6 passed, 0 failed")
