"""Streaming reader of a json file whose top level is an object of long arrays (LVIS / COCO annotations).

``json.load`` of the real 1.3 GB LVIS train file builds tens of millions of Python floats (>10 GB); this
reader decodes each top-level array element on its own (the C scanner via ``raw_decode``) and hands it to a
callback, so a caller can compact it (polygons to float32 arrays) before the next one is decoded.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from lvisctl.errors import LvisctlError

_CHUNK_CHARS = 1 << 24  # 16 M characters per read: large enough to amortise, small against the file
_WHITESPACE = re.compile(r"[ \t\n\r]*")


class JsonObjectStream:
    """Parses the top-level object of an LVIS file, handing array elements to callbacks one by one
    (:meth:`parse_object`), or the elements of a top-level list one at a time (:meth:`iter_list`).

    ``what`` names the kind of file in messages; ``chunk_chars`` is the read size (tests cut tokens)."""

    def __init__(
        self, fh: Any, path: Path, *, what: str = "an LVIS file", chunk_chars: int | None = None
    ) -> None:
        self.fh, self.path, self.what = fh, path, what
        self.chunk_chars = chunk_chars
        self.in_list = False  # iter_list: a file that ends inside an element is "truncated"
        self.buf, self.pos, self.eof = "", 0, False
        self.lines_before = 0  # newlines in the text already dropped from the buffer (for error positions)
        self.decoder = json.JSONDecoder()

    def _fill(self) -> None:
        self.lines_before += self.buf.count("\n", 0, self.pos)
        try:
            chunk = self.fh.read(self.chunk_chars or _CHUNK_CHARS)
        except UnicodeDecodeError as err:
            bad = err.object[err.start : err.start + 1].hex()
            line = self.lines_before + self.buf.count("\n", self.pos) + 1
            raise LvisctlError(
                f"{self.path}: not UTF-8 text (byte 0x{bad} on or after line {line}); "
                "json files must be UTF-8"
            ) from None
        self.buf, self.pos = self.buf[self.pos :] + chunk, 0
        self.eof = not chunk

    def _skip_ws(self) -> None:
        while True:
            self.pos = _WHITESPACE.match(self.buf, self.pos).end()
            if self.pos < len(self.buf) or self.eof:
                return
            self._fill()

    def _peek(self) -> str:
        self._skip_ws()
        return self.buf[self.pos] if self.pos < len(self.buf) else ""

    def _error(self, problem: str, pos: int | None = None) -> LvisctlError:
        pos = self.pos if pos is None else pos
        line = self.lines_before + self.buf.count("\n", 0, pos) + 1
        col = pos - self.buf.rfind("\n", 0, pos)
        return LvisctlError(f"{self.path}: not valid json ({problem} at line {line} column {col})")

    def _expect(self, chars: str) -> str:
        ch = self._peek()
        if not ch or ch not in chars:
            found = repr(ch) if ch else "end of file"
            raise self._error(f"expected {' or '.join(repr(c) for c in chars)}, found {found}")
        self.pos += 1
        return ch

    def _value(self) -> Any:
        self._skip_ws()
        while True:
            try:
                value, end = self.decoder.raw_decode(self.buf, self.pos)
            except json.JSONDecodeError as err:
                if self.eof and self.in_list and err.pos >= len(self.buf.rstrip()):
                    raise LvisctlError(f"{self.path}: truncated json list") from None
                if self.eof:
                    raise self._error(err.msg, err.pos) from None
                self._fill()
                continue
            except RecursionError:  # "[[[[..." 100k deep: the decoder recurses per level
                raise self._error(f"nested too deeply to be {self.what}") from None
            if end == len(self.buf) and not self.eof:  # a number may continue in the next chunk
                self._fill()
                continue
            self.pos = end
            return value

    def parse_object(self, handlers: dict[str, Callable[[Any], None]]) -> dict[str, Any]:
        """Top-level keys with a handler and an array value are streamed; others are returned."""
        first = self._peek()
        if first == "[":
            raise LvisctlError(
                f"{self.path}: valid json, but the top level is a list; an LVIS file must be a json object "
                "with 'images', 'categories' and 'annotations' (a list is a results file)"
            )
        if first != "{":
            raise self._error("an LVIS file must be a json object")
        self.pos += 1
        other: dict[str, Any] = {"_seen": set()}
        if self._peek() == "}":
            self.pos += 1
        else:
            while True:
                key = self._value()
                if not isinstance(key, str):
                    raise self._error("expected a key string")
                self._expect(":")
                other["_seen"].add(key)
                if key in handlers and self._peek() == "[":
                    self._stream_array(handlers[key])
                else:
                    other[key] = self._value()
                if self._expect(",}") == "}":
                    break
        if self._peek():
            raise self._error("extra data after the top-level object")
        return other

    def iter_list(self) -> Iterator[Any]:
        """The elements of a top-level json list, one at a time."""
        if self._peek() != "[":
            raise LvisctlError(f"{self.path}: not a json list")
        self.pos += 1
        self.in_list = True
        if self._peek() == "]":
            self.pos += 1
            return
        while True:
            self._require_more()
            yield self._value()
            self._require_more()
            if self._expect(",]") == "]":
                return

    def _require_more(self) -> None:
        if not self._peek():
            raise LvisctlError(f"{self.path}: truncated json list")

    def _stream_array(self, handle: Callable[[Any], None]) -> None:
        self.pos += 1  # the '['
        if self._peek() == "]":
            self.pos += 1
            return
        while True:
            handle(self._value())
            if self._expect(",]") == "]":
                return


# ---------------------------------------------------------------------------------------- checks


def iter_json_list(path: Path, read_size: int | None = None) -> Iterator[Any]:
    """The elements of a json list file (an LVIS results file), one at a time: a results file of 1.7 M
    images is never loaded whole."""
    with open(path, encoding="utf-8-sig") as fh:
        yield from JsonObjectStream(fh, Path(path), what="a results file", chunk_chars=read_size).iter_list()
