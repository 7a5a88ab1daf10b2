"""What a worker's runtime resolves per served target, and the prompt count policies reserve."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from tollway.config.loader import load_config
from tollway.policy.state import MemoryBackend
from tollway.routing import Target
from tollway.server import app
from tollway.usage.accounting import ModelAccounting, SettledUsage, settle_usage
from tollway.usage.catalog import Catalog

BODY = b'{"model":"gpt-4o","messages":[{"role":"user","content":"Write one short sentence about foxes."}]}'


def runtime(tmp_path: Path) -> app.Runtime:
    config = tmp_path / "tollway.toml"
    config.write_text(
        '[[providers]]\nname = "up"\nkind = "openai"\nbase_url = "http://127.0.0.1:9/v1"\n'
        '[[models]]\nname = "fast"\nprovider = "up"\nupstream = "gpt-4o-mini"\n'
    )
    return app.Runtime(load_config(str(config)), None, MemoryBackend(), "")


def test_a_targets_accounting_is_resolved_once_and_the_cache_is_bounded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    rt = runtime(tmp_path)
    found = rt.accounting(Target("fast", "up", "gpt-4o-mini"))
    assert found.info is not None and found.info.name == "gpt-4o-mini"  # from the shipped catalog
    assert found.tokenizer == found.info.tokenizer and found.known_tokenizer
    assert rt.accounting(Target("fast", "up", "gpt-4o-mini")) is found
    monkeypatch.setattr(app, "_TARGETS_KEPT", 2)
    rt.accounting(Target("up/a", "up", "a"))
    assert len(rt._accounting) == 2
    other = rt.accounting(Target("up/b", "up", "b"))  # a third: the cache starts over
    assert list(rt._accounting.values()) == [other] and other.info is None and not other.known_tokenizer


def test_count_prompt_counts_each_api_and_never_raises(tmp_path: Path) -> None:
    accounting = runtime(tmp_path).accounting(Target("fast", "up", "gpt-4o-mini"))
    counted, source = accounting.count_prompt("openai", BODY)
    assert source == "counted" and counted == accounting.counter.count_openai_chat(BODY)[0] > 10
    anthropic = b'{"model":"m","max_tokens":5,"messages":[{"role":"user","content":"Write one short sentence."}]}'
    tokens, source = accounting.count_prompt("anthropic", anthropic)
    assert tokens == accounting.counter.count_anthropic_messages(anthropic)[0] > 0 and source == "estimated"
    # A body the counter cannot read counts nothing, estimated; it never raises.
    assert (
        accounting.count_prompt("openai", b'{"messages": 3}')
        == accounting.count_prompt("openai", b"[")
        == (
            0,
            "estimated",
        )
    )
    # A model without a tokenizer of its own is counted with the default one, as an estimate.
    unknown = ModelAccounting.resolve(Catalog.load(), "no-such-model", None)
    tokens, source = unknown.count_prompt("openai", BODY)
    assert tokens == counted and source == "estimated" and not unknown.known_tokenizer


def settled(accounting: ModelAccounting, text: str) -> SettledUsage:
    tokens, _ = accounting.count_text(text)
    return settle_usage(accounting, api="openai", raw_body=BODY, reported=None, delivered_tokens=tokens, complete=True)


def test_a_tokenizer_that_cannot_be_loaded_counts_estimates_and_is_loaded_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # Configured for the model (so its own), but the file is not there: the default tokenizer
    # counts, and every count it makes is an estimate, never `counted`.
    catalog = Catalog.load()
    missing = str(tmp_path / "nowhere" / "tokenizer.json")
    with caplog.at_level(logging.WARNING, logger="tollway"):
        accounting = ModelAccounting.resolve(catalog, "gpt-4o-mini", missing)
    assert any("cannot be loaded" in r.getMessage() for r in caplog.records)
    assert accounting.tokenizer == missing and not accounting.known_tokenizer
    tokens, source = accounting.count_prompt("openai", BODY)
    assert tokens > 10 and source == "estimated"
    fallback = settled(accounting, "Foxes are quick.")
    assert (fallback.prompt_source, fallback.completion_source) == ("estimated", "estimated")
    assert fallback.usage.completion_tokens > 0
    # The same model with its catalog tokenizer: exact counts.
    known = ModelAccounting.resolve(catalog, "gpt-4o-mini", None)
    assert known.known_tokenizer and known.count_prompt("openai", BODY) == (tokens, "counted")
    assert settled(known, "Foxes are quick.").completion_source == "counted"
    # Counting again neither reloads nor logs again: the counter was resolved once.
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="tollway"):
        for _ in range(3):
            accounting.count_prompt("openai", BODY)
            accounting.count_text("more text")
    assert caplog.records == []
