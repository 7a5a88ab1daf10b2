"""tiktoken built from the vocabulary files the native counter embeds, for exactness tests and
benchmarks, with no download: the `bpe-openai` crate ships `o200k_base` and `cl100k_base`
(found through `cargo metadata`), and `load_tiktoken_bpe` checks each against OpenAI's
published SHA-256, so the reference is the official vocabulary, byte for byte."""

from __future__ import annotations

import gzip
import json
import subprocess
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[3]


def vocabulary_dir() -> Path:
    out = subprocess.run(
        ["cargo", "metadata", "--format-version", "1", "--manifest-path", str(ROOT / "Cargo.toml")],
        capture_output=True,
        check=True,
        text=True,
    ).stdout
    manifest = next(p["manifest_path"] for p in json.loads(out)["packages"] if p["name"] == "bpe-openai")
    return Path(manifest).parent / "data"


def reference_encodings() -> dict[str, Any]:
    """`{"o200k_base": tiktoken.Encoding, "cl100k_base": tiktoken.Encoding}`."""
    import tiktoken
    import tiktoken.load
    import tiktoken_ext.openai_public as openai_public  # type: ignore[import-untyped]

    data = vocabulary_dir()
    unpacked = Path(tempfile.mkdtemp(prefix="tollway-vocab-"))
    for name in ("o200k_base", "cl100k_base"):
        (unpacked / f"{name}.tiktoken").write_bytes(gzip.decompress((data / f"{name}.tiktoken.gz").read_bytes()))

    def local(url: str, expected_hash: str | None = None) -> Any:
        # The published URL's file name, read from the crate's copy; the hash is still checked.
        return tiktoken.load.load_tiktoken_bpe(str(unpacked / url.rsplit("/", 1)[-1]), expected_hash=expected_hash)

    original = openai_public.load_tiktoken_bpe
    openai_public.load_tiktoken_bpe = local
    try:
        return {
            "o200k_base": tiktoken.Encoding(**openai_public.o200k_base()),
            "cl100k_base": tiktoken.Encoding(**openai_public.cl100k_base()),
        }
    finally:
        openai_public.load_tiktoken_bpe = original
