"""The README's promise: the quickstart config answers the official SDK with the demo key."""

from __future__ import annotations

from pathlib import Path

import openai

from conftest import ROOT, start_gateway, stop

DEMO_KEY = "tw-demo-quickstart"


def test_quickstart_answers_the_openai_sdk(tmp_path: Path) -> None:
    gw = start_gateway((ROOT / "examples" / "quickstart.toml").read_text(), tmp_path)
    try:
        client = openai.OpenAI(base_url=gw.url + "/v1", api_key=DEMO_KEY, max_retries=0, timeout=10)
        assert [m.id for m in client.models.list()] == ["mock-gpt"]
        messages = [{"role": "user", "content": "Hi"}]
        answer = client.chat.completions.create(model="mock-gpt", messages=messages)  # type: ignore[arg-type]
        assert answer.choices[0].message.content
        streamed = "".join(
            chunk.choices[0].delta.content or ""
            for chunk in client.chat.completions.create(model="mock-gpt", messages=messages, stream=True)  # type: ignore[arg-type]
            if chunk.choices
        )
        assert streamed == answer.choices[0].message.content
        client.close()
    finally:
        stop(gw.proc)
