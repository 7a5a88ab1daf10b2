"""Token counting through the binding, checked for exactness against tiktoken loaded from the
very vocabulary files the native counter was built from (the `bpe-openai` crate ships them;
`load_tiktoken_bpe` verifies each against OpenAI's published SHA-256)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import tiktoken
from hypothesis import given, settings
from hypothesis import strategies as st

from tollway._native import TokenCounter
from tollway.errors import TokenCountError, TokenizerError
from tollway.testing.tiktoken_reference import reference_encodings

CORPUS = [
    "Hello, world!",
    "The quick brown fox jumps over the lazy dog. It's 3:45pm, and we've got 1,234,567 reasons.",
    "  leading and trailing spaces   \n\n\n\tand tabs\t\t\r\nand CRLF\r\n",
    "人工智能正在改变世界。大型语言模型可以生成文本、翻译语言和回答问题。",
    "日本語のテキストとカタカナ、ひらがな、漢字が混在しています。",
    "مرحبا بالعالم. هذا نص عربي للاختبار.",
    "नमस्ते दुनिया, यह एक परीक्षण है।",
    "Привет, мир! Это проверка токенизации на русском языке.",
    "Emoji: 😀😃😄 👩‍👩‍👧‍👦 🇫🇷 🏳️‍🌈 ✨🚀🔥 — and accents: café, naïve, Zoë, façade.",
    'def fib(n: int) -> int:\n    """Fibonacci."""\n    return n if n < 2 else fib(n - 1) + fib(n - 2)\n',
    '{"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 256}',
    'fn main() {\n    let v: Vec<u32> = (0..10).map(|x| x * x).collect();\n    println!("{v:?}");\n}\n',
    "https://example.com/path/to/resource?query=1&other=two#fragment /usr/local/bin/python3.11",
    "123456789012345678901234567890 3.14159265358979 -0.000001 1e-10 0xDEADBEEF",
    "I'm, you're, they've, she'll, he'd, it's, CAN'T, WON'T, Isn'T",
    "a" * 3000,
    " " * 50 + "x" + "\n" * 20,
    "",
]


@pytest.fixture(scope="module")
def reference() -> dict[str, tiktoken.Encoding]:
    return reference_encodings()


@pytest.mark.parametrize("encoding", ["o200k_base", "cl100k_base"])
def test_counts_equal_tiktoken_on_the_corpus(reference: dict[str, tiktoken.Encoding], encoding: str) -> None:
    counter = TokenCounter(encoding)
    ref = reference[encoding]
    for text in CORPUS:
        assert counter.count(text) == len(ref.encode_ordinary(text)), text[:60]
        assert counter.encode(text) == ref.encode_ordinary(text), text[:60]
    whole = "\n".join(CORPUS) * 20  # over the GIL-release threshold
    assert counter.count(whole) == len(ref.encode_ordinary(whole))


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=300))
def test_counts_equal_tiktoken_on_any_text(reference: dict[str, tiktoken.Encoding], text: str) -> None:
    for encoding in ("o200k_base", "cl100k_base"):
        assert TokenCounter(encoding).count(text) == len(reference[encoding].encode_ordinary(text))


@settings(max_examples=100, deadline=None)
@given(st.lists(st.text(max_size=20), max_size=40))
def test_stream_counter_equals_whole_count(parts: list[str]) -> None:
    counter = TokenCounter("o200k_base")
    stream = counter.stream()
    for part in parts:
        stream.push(part)
    assert stream.total == counter.count("".join(parts))
    assert stream.exactness == "exact"


def test_chat_count_follows_openai_rule(reference: dict[str, tiktoken.Encoding]) -> None:
    ref = reference["o200k_base"]
    messages = [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "Name three colours.", "name": "alice"},
        {"role": "assistant", "content": "Red, green, blue."},
        {"role": "user", "content": [{"type": "text", "text": "And three more?"}]},
    ]
    # The cookbook's rule, written out with tiktoken.
    expected = 3
    for message in messages:
        expected += 3
        for key, value in message.items():
            text = value if isinstance(value, str) else "".join(p["text"] for p in value)  # type: ignore[index]
            expected += len(ref.encode_ordinary(text)) + (1 if key == "name" else 0)
    body = json.dumps({"model": "gpt-4o", "messages": messages}).encode()
    assert TokenCounter("o200k_base").count_openai_chat(body) == (expected, "exact")


def test_images_and_tools_are_approximate() -> None:
    counter = TokenCounter("o200k_base")
    image = {"type": "image_url", "image_url": {"url": "data:image/png;base64,xx", "detail": "low"}}
    body = json.dumps({"messages": [{"role": "user", "content": [image]}]}).encode()
    tokens, exactness = counter.count_openai_chat(body)
    assert exactness == "approximate" and tokens == 3 + 1 + 85 + 3
    tool = {"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}
    body = json.dumps({"messages": [{"role": "user", "content": "x"}], "tools": [tool]}).encode()
    assert counter.count_openai_chat(body)[1] == "approximate"


def test_providers_without_a_tokenizer_are_approximate() -> None:
    anthropic = TokenCounter("anthropic")
    assert anthropic.exactness == "approximate"
    text = "The quick brown fox jumps over the lazy dog."
    assert anthropic.count(text) >= TokenCounter("cl100k_base").count(text)
    body = json.dumps({"system": "Be brief.", "messages": [{"role": "user", "content": text}]}).encode()
    tokens, exactness = anthropic.count_anthropic_messages(body)
    assert exactness == "approximate" and tokens > anthropic.count(text)
    assert TokenCounter("gemini").exactness == "approximate"


def test_errors_map_to_tollway_exceptions() -> None:
    with pytest.raises(TokenizerError, match="unknown tokenizer `p50k`"):
        TokenCounter("p50k")
    with pytest.raises(TokenCountError, match="not valid JSON"):
        TokenCounter("o200k_base").count_openai_chat(b"{")
    with pytest.raises(ValueError):
        TokenCounter("o200k_base").count_openai_chat(b'{"messages": 1}')


TRAINING_TEXT = [
    "The quick brown fox jumps over the lazy dog.",
    "Gateways count tokens so that budgets hold, even for open models served by vLLM.",
    "Llama, Mistral and Qwen ship their tokenizers as tokenizer.json files.",
] * 50


def _train(kind: str, path: Path) -> Path:
    """A small real tokenizer.json, trained here with Hugging Face's own library."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    if kind == "bytelevel":
        tok = Tokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        alphabet = pre_tokenizers.ByteLevel.alphabet()
    else:  # SentencePiece-style, as Llama 2 and Mistral: spaces become "▁", prefixed to the text
        tok = Tokenizer(models.BPE(unk_token="<unk>"))
        tok.pre_tokenizer = pre_tokenizers.Metaspace()
        alphabet = []
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=["<unk>", "<s>"], initial_alphabet=alphabet)
    tok.train_from_iterator(TRAINING_TEXT, trainer)
    out = path / f"{kind}-tokenizer.json"
    tok.save(str(out))
    return out


@pytest.mark.parametrize("kind", ["bytelevel", "metaspace"])
def test_hugging_face_tokenizer_json(tmp_path: Path, kind: str) -> None:
    from tokenizers import Tokenizer

    path = _train(kind, tmp_path)
    reference = Tokenizer.from_file(str(path))
    counter = TokenCounter.from_file(str(path))
    assert counter.exactness == "exact" and counter.encoding.startswith("hf:")
    for text in [*CORPUS[:4], "Budgets hold for open models too. " * 30]:
        assert counter.count(text) == len(reference.encode(text, add_special_tokens=False).ids), text[:40]
    # Chat framing differs per model (chat templates): chat counts are approximate.
    body = json.dumps({"messages": [{"role": "user", "content": "hello fox"}]}).encode()
    assert counter.count_openai_chat(body)[1] == "approximate"
    # Streamed: estimated between recounts, exact at the end.
    answer = "The lazy dog sleeps while the quick fox counts tokens. " * 20
    deltas = [word + " " for word in answer.split(" ")]
    stream = counter.stream()
    for delta in deltas:
        stream.push(delta)
    assert stream.finish() == counter.count("".join(deltas))
    assert stream.exactness == "exact"


def test_unloadable_tokenizer_file(tmp_path: Path) -> None:
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(TokenizerError, match="cannot load tokenizer"):
        TokenCounter.from_file(str(tmp_path / "bad.json"))
    with pytest.raises(TokenizerError):
        TokenCounter.from_file(str(tmp_path / "missing.json"))
