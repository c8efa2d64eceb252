"""JSON and text encoding, each defined once. Standard library only.

Three JSON forms, different on purpose:

- :func:`dumps_like_json_stringify` writes the JSON columns. The bot writes and reads
  those columns with ``JSON.stringify`` / ``JSON.parse``, so sessionctl writes the same
  bytes: compact, text as text.
- :func:`dumps_keeping_bytes` writes JSON Lines (export, rollback's backup) and
  :func:`dumps_for_output` writes ``--format json/ndjson`` and csv cells. They keep
  Python's ``", "`` / ``": "`` separators, the format those files and that output have
  always had. Stored text that is not UTF-8 (read back as ``\\udc80``-``\\udcff``, see
  ``surrogateescape``) cannot be written as UTF-8, so a document holding any is written
  ASCII-only: the bytes survive as ``\\udcXX`` escapes an import turns back into bytes.
- :func:`dumps_for_terminal` shows JSON to a person (``sessions show``): there escapes
  help nobody, so text stays text and what is not UTF-8 is shown as U+FFFD.

Text: :func:`has_lone_surrogates` (can UTF-8 encode it?), :func:`storable_text` (what to
bind for a TEXT column), :func:`printable` (what a terminal can show).
"""

from __future__ import annotations

import functools
import json
import math
import os
import re
from typing import Any, Callable

# Every surrogate code point except \udc80-\udcff, which surrogateescape uses for bytes.
_NOT_AN_ESCAPED_BYTE = re.compile("[\ud800-\udc7f\udd00-\udfff]")
_SURROGATE = re.compile("[\ud800-\udfff]")


# -- text ----------------------------------------------------------------------------


def has_lone_surrogates(text: str) -> bool:
    """True when ``text`` holds surrogate code points, which UTF-8 cannot encode.

    Two kinds reach sessionctl: bytes that were not UTF-8, read back as \\udc80-\\udcff,
    and halves of a pair with no partner (a ``\\ud83d`` escape in stored JSON, a cut
    JavaScript string).
    """
    if text.isascii():  # the common case, without building the encoded copy
        return False
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def stored_bytes(text: str) -> bytes:
    """The bytes SQLite keeps for ``text`` (see :func:`storable_text`): equal bytes, equal value."""
    return text.encode("utf-8", "surrogateescape")


def storable_text(text: str) -> str | bytes:
    """What to bind for a TEXT column so that it stores ``text`` byte for byte.

    UTF-8 text is bound as it is. Text carrying bytes that were not UTF-8 is bound as
    those bytes again (SQLite keeps a TEXT value's bytes as given), so a backup restores
    exactly what was read. A lone surrogate that stands for no byte raises
    UnicodeEncodeError: no bytes would store it.
    """
    if not has_lone_surrogates(text):
        return text
    return text.encode("utf-8", "surrogateescape")


def is_storable_text(text: str) -> bool:
    """False when ``text`` holds a lone surrogate that :func:`storable_text` cannot store."""
    try:
        storable_text(text)
    except UnicodeEncodeError:
        return False
    return True


def printable(text: str) -> str:
    """Text a terminal can show: what is not UTF-8 shown as U+FFFD instead of failing the write."""
    if not has_lone_surrogates(text):
        return text
    # Escaped bytes become bytes again and decode with one U+FFFD per invalid sequence, as
    # any UTF-8 reader shows them; a surrogate that stands for no byte is one U+FFFD itself.
    raw = _NOT_AN_ESCAPED_BYTE.sub("\ufffd", text).encode("utf-8", "surrogateescape")
    return raw.decode("utf-8", "replace")


# -- JSON ------------------------------------------------------------------------------

_STRINGIFY = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode

_Encode = Callable[[Any], str]


@functools.lru_cache(maxsize=None)
def _text_and_ascii(indent: int | None, str_fallback: bool) -> tuple[_Encode, _Encode]:
    """The two encoders of one keeping-bytes form: text as text, and ASCII-only."""
    default = str if str_fallback else None
    return (
        _finite_only(json.JSONEncoder(ensure_ascii=False, indent=indent, default=default, allow_nan=False).encode),
        _finite_only(json.JSONEncoder(ensure_ascii=True, indent=indent, default=default, allow_nan=False).encode),
    )


def _finite_only(encode: _Encode) -> _Encode:
    """``encode``, writing an infinite REAL as ``1e999`` / ``-1e999`` instead of ``Infinity``.

    ``Infinity`` and ``NaN`` are not JSON: jq, JSON.parse and most readers refuse them.
    ``1e999`` is a JSON number that JSON.parse and Python both read back as infinity, so a
    value SQLite stores (it has no NaN: it stores NULL) survives an export.
    """

    def encode_finite(value: Any) -> str:
        try:
            return encode(value)
        except ValueError as exc:
            if "Out of range float" not in str(exc):
                raise
        token = f"non-finite-{os.urandom(8).hex()}"
        text = encode(_replace_non_finite(value, token))
        return text.replace(f'"{token}+"', "1e999").replace(f'"{token}-"', "-1e999")

    return encode_finite


def _replace_non_finite(value: Any, token: str) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None if math.isnan(value) else f"{token}{'+' if value > 0 else '-'}"
    if isinstance(value, dict):
        return {key: _replace_non_finite(item, token) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_replace_non_finite(item, token) for item in value]
    return value


# Looked up once: export encodes every row of a table with the first, listings with the second.
_LINE = _text_and_ascii(None, False)
_OUTPUT_LINE = _text_and_ascii(None, True)


def loads(text: str | bytes) -> Any:
    """``json.loads``, with a value nested too deeply for Python's recursion (about 1,000
    levels: still valid JSON) refused as ValueError like any other bad JSON, instead of a
    RecursionError that would stop a listing, an import or the agent's ``get``."""
    try:
        return _DECODER.decode(text if isinstance(text, str) else text.decode("utf-8"))
    except RecursionError:
        raise ValueError("JSON nested too deeply to read") from None


def _refuse_constant(name: str) -> Any:
    # Python's json reads NaN, Infinity and -Infinity; JSON.parse (the bot) refuses them.
    raise ValueError(f"{name} is not JSON")


# Built once: json.loads with an option builds a new decoder on every call (the agent's get
# decodes three columns per call).
_DECODER = json.JSONDecoder(parse_constant=_refuse_constant)


def dumps_like_json_stringify(value: Any) -> str:
    """``value`` as ``JSON.stringify`` writes it: compact, text as text ("서버 추천", not \\uc11c...).

    A lone surrogate is written as a lowercase ``\\uXXXX`` escape and everything else
    stays text, as JSON.stringify does. NaN and Infinity raise ValueError: JSON.stringify
    would silently write null, and JSON.parse refuses the NaN Python would write, so the
    bot could no longer read the session. Numbers are written as Python writes them
    (``1.0``, ``1e+16``); JSON.parse reads the same number. A value JSON cannot hold (a
    set, bytes) raises TypeError.
    """
    try:
        text = _STRINGIFY(value)
    except RecursionError:
        raise ValueError("nested too deeply to store as JSON") from None
    except ValueError as exc:
        if "Out of range float" not in str(exc):
            raise
        raise ValueError("NaN and Infinity are not JSON (JSON.parse refuses them)") from None
    if has_lone_surrogates(text):
        # As JavaScript sees the string: two halves that make a pair are one character.
        text = text.encode("utf-16-le", "surrogatepass").decode("utf-16-le", "surrogatepass")
        text = _SURROGATE.sub(lambda match: f"\\u{ord(match.group()):04x}", text)
    return text


def dumps_keeping_bytes(value: Any, *, indent: int | None = None) -> str:
    """JSON with text as text; ASCII-only when a string carries bytes that are not UTF-8.

    For JSON Lines files. A value JSON cannot hold (a BLOB's bytes) raises TypeError.
    """
    as_text, as_ascii = _LINE if indent is None else _text_and_ascii(indent, False)
    text = as_text(value)
    return as_ascii(value) if has_lone_surrogates(text) else text


def dumps_for_output(value: Any, *, indent: int | None = None) -> str:
    """What ``--format json/ndjson`` prints: as :func:`dumps_keeping_bytes`, and a value JSON
    cannot hold (a BLOB's bytes) is shown as its ``str()`` rather than failing a listing."""
    as_text, as_ascii = _OUTPUT_LINE if indent is None else _text_and_ascii(indent, True)
    text = as_text(value)
    return as_ascii(value) if has_lone_surrogates(text) else text


def dumps_for_terminal(value: Any, *, indent: int | None = None) -> str:
    """JSON for a person at a terminal (``sessions show``): text as text, and whatever is
    not UTF-8 shown as U+FFFD, never as escapes."""
    as_text, _ = _text_and_ascii(indent, False)
    return printable(as_text(value))
