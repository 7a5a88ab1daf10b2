"""What a worker's runtime resolves per served target, and the prompt count policies reserve."""

from __future__ import annotations

from pathlib import Path

import pytest

from tollway.config.loader import load_config
from tollway.policy.state import MemoryBackend
from tollway.routing import Target
from tollway.server import app
from tollway.usage.accounting import ModelAccounting

BODY = b'{"model":"gpt-4o","messages":[{"role":"user","content":"Write one short sentence about foxes."}]}'


def runtime(tmp_path: Path) -> app.Runtime:
    config = tmp_path / "tollway.toml"
    config.write_text(
        '[[providers]]\nname = "up"\nkind = "openai"\nbase_url = "http://127.0.0.1:9/v1"\n'
        '[[models]]\nname = "fast"\nprovider = "up"\nupstream = "gpt-4o-mini"\n'
    )
    return app.Runtime(load_config(str(config)), None, MemoryBackend(), "")


def test_accounting_of_a_target_is_resolved_once_and_the_cache_is_bounded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    rt = runtime(tmp_path)
    fast = Target("fast", "up", "gpt-4o-mini")
    found = rt.accounting_of(fast)
    assert found == rt.accounting(fast, rt.model_config(fast))
    assert found.info is not None and found.info.name == "gpt-4o-mini"  # from the shipped catalog
    assert rt.accounting_of(Target("fast", "up", "gpt-4o-mini")) is found
    monkeypatch.setattr(app, "_TARGETS_KEPT", 2)
    rt.accounting_of(Target("up/a", "up", "a"))
    assert len(rt._by_target) == 2
    other = rt.accounting_of(Target("up/b", "up", "b"))  # a third: the cache starts over
    assert list(rt._by_target.values()) == [other] and other.info is None


def test_prompt_tokens_is_the_count_of_count_prompt(tmp_path: Path) -> None:
    accounting = runtime(tmp_path).accounting_of(Target("fast", "up", "gpt-4o-mini"))
    counted, source = accounting.count_prompt("openai", BODY)
    assert source == "counted" and counted > 10
    assert accounting.prompt_tokens("openai", BODY) == counted
    anthropic = b'{"model":"m","max_tokens":5,"messages":[{"role":"user","content":"Write one short sentence."}]}'
    assert accounting.prompt_tokens("anthropic", anthropic) == accounting.count_prompt("anthropic", anthropic)[0] > 0
    # A body the counter cannot read reserves what `count_prompt` says of it (nothing), never raises.
    assert accounting.prompt_tokens("openai", b'{"messages": 3}') == accounting.count_prompt("openai", b"[")[0] == 0
    unknown = ModelAccounting(info=None, tokenizer="no-such-tokenizer", known_tokenizer=False, provenance="catalog")
    assert unknown.prompt_tokens("openai", BODY) == unknown.count_prompt("openai", BODY)[0] > 0
