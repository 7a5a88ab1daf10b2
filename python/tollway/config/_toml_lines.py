"""Map every dotted path of a TOML document to the line it is written on.

`tomllib` gives values but no positions, and tollway's configuration errors must point at a
line (`tollway.toml:14 keys[1].team: ...`). This module scans the source once more, tracking
only structure: table headers (`[a.b]`, `[[a]]` with their running index), keys (bare, quoted,
dotted), inline tables and arrays (their elements get indices). Values themselves are skipped,
with care for every string form so that brackets or `#` inside strings are not mistaken for
structure. The scan never raises: `tomllib` has already accepted the document, and anything
this scanner does not understand just leaves paths unmapped; `line_of` then falls back to the
nearest mapped ancestor.
"""

from __future__ import annotations

Path = tuple[str | int, ...]

_BARE = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-")


class _Scanner:
    def __init__(self, text: str) -> None:
        self.s = text
        self.i = 0
        self.line = 1
        self.lines: dict[Path, int] = {}
        self.aot_count: dict[Path, int] = {}  # array-of-tables path -> number of elements so far

    # -- low level -------------------------------------------------------------------------
    def _peek(self, k: int = 0) -> str:
        j = self.i + k
        return self.s[j] if j < len(self.s) else ""

    def _advance(self, n: int = 1) -> None:
        for _ in range(n):
            if self.i < len(self.s):
                if self.s[self.i] == "\n":
                    self.line += 1
                self.i += 1

    def _skip_ws(self, newlines: bool) -> None:
        while self.i < len(self.s):
            c = self.s[self.i]
            if c in " \t\r" or (newlines and c == "\n"):
                self._advance()
            elif c == "#":
                while self.i < len(self.s) and self.s[self.i] != "\n":
                    self.i += 1
            else:
                return

    def _skip_to_eol(self) -> None:
        while self.i < len(self.s) and self.s[self.i] != "\n":
            self.i += 1

    # -- keys ------------------------------------------------------------------------------
    def _string(self) -> str:
        """Read a string starting at the cursor; return its (approximate) value."""
        q = self._peek()
        if self.s.startswith(q * 3, self.i):
            self._advance(3)
            end = self.s.find(q * 3, self.i)
            end = len(self.s) if end < 0 else end
            # A multi-line basic string may end with up to two extra quotes.
            while end + 3 < len(self.s) and self.s[end + 3] == q:
                end += 1
            value = self.s[self.i : end]
            self._advance(end + 3 - self.i)
            return value
        self._advance()
        out = []
        while self.i < len(self.s) and self.s[self.i] not in (q, "\n"):
            if q == '"' and self.s[self.i] == "\\":
                out.append(self.s[self.i : self.i + 2])
                self._advance(2)
                continue
            out.append(self.s[self.i])
            self._advance()
        self._advance()
        return "".join(out)

    def _key(self) -> list[str]:
        parts: list[str] = []
        while True:
            self._skip_ws(newlines=False)
            c = self._peek()
            if c in ('"', "'"):
                parts.append(self._string())
            else:
                start = self.i
                while self.i < len(self.s) and self.s[self.i] in _BARE:
                    self.i += 1
                if self.i == start:
                    return parts
                parts.append(self.s[start : self.i])
            self._skip_ws(newlines=False)
            if self._peek() == ".":
                self._advance()
                continue
            return parts

    # -- values ----------------------------------------------------------------------------
    def _value(self, path: Path) -> None:
        self._skip_ws(newlines=False)
        c = self._peek()
        if c in ('"', "'"):
            self._string()
        elif c == "[":
            self._array(path)
        elif c == "{":
            self._inline_table(path)
        else:
            while self.i < len(self.s) and self.s[self.i] not in ",]}\n#":
                self.i += 1

    def _array(self, path: Path) -> None:
        self._advance()  # [
        index = 0
        while self.i < len(self.s):
            self._skip_ws(newlines=True)
            if self._peek() == "]":
                self._advance()
                return
            if self._peek() == ",":
                self._advance()
                continue
            if self._peek() == "":
                return
            self.lines.setdefault((*path, index), self.line)
            before = self.i
            self._value((*path, index))
            index += 1
            if self.i == before:  # not understood: give up on this array
                self._advance()

    def _inline_table(self, path: Path) -> None:
        self._advance()  # {
        while self.i < len(self.s):
            self._skip_ws(newlines=True)
            c = self._peek()
            if c == "}":
                self._advance()
                return
            if c == ",":
                self._advance()
                continue
            if c == "":
                return
            self._key_value(path)

    def _key_value(self, table: Path) -> None:
        line = self.line
        keys = self._key()
        if not keys:
            self._skip_to_eol()
            return
        for depth in range(1, len(keys) + 1):
            self.lines.setdefault((*table, *keys[:depth]), line)
        self._skip_ws(newlines=False)
        if self._peek() == "=":
            self._advance()
            self._value((*table, *keys))
        else:
            self._skip_to_eol()

    # -- tables ----------------------------------------------------------------------------
    def _resolve(self, keys: list[str]) -> Path:
        """Turn header keys into a path, indexing through arrays of tables seen so far."""
        path: Path = ()
        for key in keys:
            path = (*path, key)
            if path in self.aot_count:
                path = (*path, self.aot_count[path] - 1)
        return path

    def _header(self) -> Path:
        line = self.line
        array = self.s.startswith("[[", self.i)
        self._advance(2 if array else 1)
        keys = self._key()
        self._advance(2 if array else 1)
        self._skip_to_eol()
        if not keys:
            return ()
        if array:
            parent = self._resolve(keys[:-1])
            base = (*parent, keys[-1])
            self.aot_count[base] = self.aot_count.get(base, 0) + 1
            path = (*base, self.aot_count[base] - 1)
            self.lines.setdefault(base, line)
        else:
            path = self._resolve(keys)
        self.lines.setdefault(path, line)
        return path

    def scan(self) -> dict[Path, int]:
        table: Path = ()
        while self.i < len(self.s):
            self._skip_ws(newlines=True)
            if self.i >= len(self.s):
                break
            if self._peek() == "[":
                table = self._header()
            else:
                before = self.i
                self._key_value(table)
                if self.i == before:
                    self._skip_to_eol()
        return self.lines


class LineIndex:
    """Line numbers of the paths of one TOML document."""

    def __init__(self, text: str) -> None:
        self._lines = _Scanner(text).scan()

    def line_of(self, path: Path) -> int | None:
        """The line of `path`, or of its nearest ancestor that was written down."""
        for cut in range(len(path), 0, -1):
            line = self._lines.get(path[:cut])
            if line is not None:
                return line
        return None


def format_path(path: Path) -> str:
    """`("keys", 1, "team")` -> `keys[1].team`."""
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            key = part if part and all(c in _BARE for c in part) else '"' + part.replace('"', '\\"') + '"'
            out += f".{key}" if out else key
    return out
