"""The one reader for the configuration files: ``function.json``, ``host.json``,
``local.settings.json`` and ``worker.config.json``, read the way the host and Core Tools
read them.

Both read each file whole with .NET's ``File.ReadAllText`` and parse it with Newtonsoft.Json
13's ``JObject.Parse`` (default settings): the host in
src/WebJobs.Script/Host/HostFunctionMetadataProvider.cs (``ReadFunctionMetadata``),
src/WebJobs.Script/Config/HostJsonFileConfigurationSource.cs (``LoadHostConfig``) and
src/WebJobs.Script/Workers/Rpc/Configuration/RpcWorkerConfigFactory.cs (``AddProvider``) in
Azure/azure-functions-host; Core Tools in src/Cli/func/Common/AppSettingsFile.cs
(Azure/azure-functions-core-tools). So:

- Decoding (`decode_text`): a byte order mark picks UTF-8, UTF-16 or UTF-32 (little or big
  endian) and is dropped; without one the bytes are UTF-8, and invalid sequences become
  U+FFFD instead of failing (``StreamReader.DetectEncoding``).
- Parsing (`parse_json`), Newtonsoft's ``JsonTextReader``: ``//`` and ``/* */`` comments
  wherever whitespace may be, strings and property names in single or double quotes,
  unquoted property names (letters, digits, ``_``, ``$``), trailing commas, an empty array
  slot (``[1,,2]``, read as null), line breaks inside strings, ``NaN``, ``Infinity``,
  ``-Infinity``, ``undefined`` (null), 64-bit hexadecimal (``0x1F``) and leading-zero octal
  integers, numbers like ``.5`` and ``1.``; the last of duplicate property names wins;
  containers nest at most 64 deep (``JsonReader.MaxDepth``'s default since 13.0.1).
  Not read: Newtonsoft's JavaScript constructors (``new Date(…)``), which no configuration
  file uses.
- Errors name the file, the line and the column (1-based), with the reason.

Valid strict JSON takes the C-accelerated `json` module; only what it refuses goes through
the hand-written reader below (see `parse_json`). A JSON5 package was the alternative; JSON5
is not Newtonsoft's dialect: the ``json5`` package (0.17) and ``pyjson5`` (2.0) both refuse
line breaks in strings, ``[1,,2]``, ``undefined``, octal and names like ``1a``, and accept
``+1``; ``json5`` fails with a RecursionError before 64 levels and takes milliseconds per
file, ``pyjson5`` stops at 32 levels and reports no line or column.
"""

from __future__ import annotations

import json
import math
import re
import unicodedata
from collections.abc import Callable
from pathlib import Path
from typing import Any, Final

__all__ = [
    "MAX_DEPTH",
    "JsonSyntaxError",
    "check_function_json_files",
    "decode_text",
    "dotnet_string",
    "dotnet_strings",
    "parse_json",
    "read_host_json_object",
    "read_json_object",
]

#: Newtonsoft.Json's default ``MaxDepth`` (src/Newtonsoft.Json/JsonReader.cs, 13.0.1 on).
MAX_DEPTH: Final = 64

#: Makes the error a caller raises: ``error(path, reason)`` (``AppError``, ``WorkerConfigError``).
ErrorFactory = Callable[[Path, str], Exception]

_BOMS: Final = (  # StreamReader.DetectEncoding's order: FF FE 00 00 before FF FE
    (b"\xff\xfe\x00\x00", "utf-32-le"),
    (b"\x00\x00\xfe\xff", "utf-32-be"),
    (b"\xfe\xff", "utf-16-be"),
    (b"\xff\xfe", "utf-16-le"),
    (b"\xef\xbb\xbf", "utf-8"),
)
_ESCAPES: Final = {
    "b": "\b",
    "t": "\t",
    "n": "\n",
    "f": "\f",
    "r": "\r",
    "\\": "\\",
    '"': '"',
    "'": "'",
    "/": "/",
}
_CHUNK: Final = {'"': re.compile(r'[^"\\]*'), "'": re.compile(r"[^'\\]*")}
_LINE_BREAK: Final = re.compile(r"\r\n|\r|\n")
_NUMBER_TOKEN: Final = re.compile(r"[0-9A-Za-z.+\-]+")
_WORD: Final = re.compile(r"[0-9A-Za-z_$]+")
_HEX: Final = re.compile(r"0[xX][0-9a-fA-F]+")
_OCTAL: Final = re.compile(r"0[0-7]+")
_INTEGER: Final = re.compile(r"-?[0-9]+")
_FLOAT: Final = re.compile(r"-?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")
_LITERALS: Final[dict[str, Any]] = {
    "true": True,
    "false": False,
    "null": None,
    "undefined": None,
    "NaN": math.nan,
    "Infinity": math.inf,
}
_SPACE: Final = frozenset(" \t\n\r\v\f\x85\xa0")


class JsonSyntaxError(ValueError):
    """Text Newtonsoft's reader refuses: `message`, at 1-based `line` and `column`."""

    def __init__(self, message: str, line: int, column: int) -> None:
        super().__init__(f"{message} (line {line}, column {column})")
        self.message = message
        self.line = line
        self.column = column


def decode_text(data: bytes) -> str:
    """Bytes to text as .NET ``File.ReadAllText`` decodes them (module docstring)."""
    for bom, encoding in _BOMS:
        if data.startswith(bom):
            return data[len(bom) :].decode(encoding, "replace")
    return data.decode("utf-8", "replace")


def parse_json(text: str) -> Any:
    """Parse `text` as Newtonsoft's ``JsonTextReader`` does (module docstring).

    Raises:
        JsonSyntaxError: what Newtonsoft would refuse, nesting deeper than `MAX_DEPTH`
            included, with the line and column.
    """
    try:
        value = json.loads(text)
    except (ValueError, RecursionError):  # not strict JSON, or absurdly nested
        return _Parser(text).document()
    if _depth(value) > MAX_DEPTH:
        return _Parser(text).document()  # raises, saying where
    return value


def read_json_object(
    path: Path, *, error: ErrorFactory, missing: str = "file not found"
) -> dict[str, Any]:
    """Read `path` (decoded and parsed as the host does); its top level must be an object,
    as ``JObject.Parse`` requires.

    Raises:
        Exception: ``error(path, reason)``: the file is missing (reason `missing`),
            unreadable, not JSON as Newtonsoft reads it, or not an object.
    """
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise error(path, missing) from None
    except OSError as exc:
        raise error(path, f"cannot read it: {exc.strerror or exc}") from None
    try:
        document = parse_json(decode_text(data))
    except JsonSyntaxError as exc:
        raise error(path, f"not valid JSON: {exc}") from None
    if not isinstance(document, dict):
        raise error(path, "the top level must be a JSON object")
    return document


def read_host_json_object(
    path: Path, *, error: ErrorFactory, missing: str = "file not found"
) -> dict[str, Any]:
    """Read ``host.json`` as the host loads it before anything else (``LoadHostConfig`` and
    ``InitializeHostConfig`` in src/WebJobs.Script/Config/HostJsonFileConfigurationSource.cs):
    an empty object is the default ``{"version": "2.0"}``; otherwise ``version`` (that exact
    name: ``hostConfigObject["version"]`` is case-sensitive) must be the string ``"2.0"``.
    A number or ``true`` is taken as its .NET text (``2.0`` is ``'2'``) and refused.

    The host also writes the default object back to an empty file; the emulator leaves the
    file alone.

    Raises:
        Exception: ``error(path, reason)``: as `read_json_object`, or the host's message for
            a missing or invalid ``version``.
    """
    document = read_json_object(path, error=error, missing=missing)
    if not document:
        return {"version": "2.0"}
    version = document.get("version")
    if isinstance(version, dict | list):
        raise error(
            path,
            f"'version' is {'an object' if isinstance(version, dict) else 'an array'}: the host"
            ' fails to start (it reads the property as a string; set "version": "2.0")',
        )
    text = dotnet_string(version)
    if not text:
        raise error(
            path,
            "The host.json file is missing the required 'version' property. See"
            " https://aka.ms/functions-hostjson for steps to migrate the configuration file.",
        )
    if text != "2.0":
        hint = (
            "This does not correspond to the function runtime version, only to the schema"
            " version of the host.json file. "
            if text.lower().startswith("3")
            else ""
        )
        raise error(
            path,
            f"'{text}' is an invalid value for host.json 'version' property. We recommend you"
            f" set the 'version' property to '2.0'. {hint}See https://aka.ms/functions-hostjson"
            " for more information on this configuration file.",
        )
    return document


def check_function_json_files(app_dir: Path, *, error: ErrorFactory) -> None:
    """Read every ``<app_dir>/*/function.json`` as Core Tools does before ``func start``
    starts the host, and fail on the first that is not JSON.

    ``IsPreCompiledFunctionApp`` in src/Cli/func/Actions/HostActions/StartHostAction.cs
    (Azure/azure-functions-core-tools) deserializes each one with no error handling, so a
    file Newtonsoft cannot parse (or whose top level is not an object or null) stops
    ``func start`` with exit code 1; the host alone would only fail that function. The
    emulator plays ``func start``, so it stops too. Sorted by folder name (Core Tools takes
    the file system's order).

    Raises:
        Exception: ``error(path, reason)`` for the first such file.
    """
    try:
        folders = sorted((p for p in Path(app_dir).iterdir() if p.is_dir()), key=lambda p: p.name)
    except OSError:
        return  # reported by whoever lists the app next
    for folder in folders:
        path = folder / "function.json"
        try:
            data = path.read_bytes()
        except OSError:
            continue  # absent (or unreadable: reported with the function)
        try:
            document = parse_json(decode_text(data))
        except JsonSyntaxError as exc:
            raise error(path, f"not valid JSON: {exc}") from None
        if document is not None and not isinstance(document, dict):
            raise error(path, "the top level must be a JSON object")


def dotnet_string(value: Any) -> str | None:
    """A parsed JSON scalar as Newtonsoft turns it into a string (``JValue.ToString`` with
    the invariant culture): ``True``/``False``, ``2`` for ``2.0``; None for null."""
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "True" if value else "False"
    if isinstance(value, float):
        if math.isnan(value):
            return "NaN"
        if math.isinf(value):
            return "Infinity" if value > 0 else "-Infinity"
        if value.is_integer() and abs(value) < 1e15:
            return str(int(value))
        return repr(value).replace("e", "E")
    return str(value)


def dotnet_strings(
    raw: Any, section: str, *, path: Path, error: ErrorFactory, inner: str | None = None
) -> dict[str, str | None]:
    """An object of settings (``local.settings.json`` ``Values``) as Newtonsoft's
    ``ToObject<Dictionary<string, string>>`` reads it: each scalar as its .NET text
    (`dotnet_string`), null as None, absent as empty. With `inner`, an object value is read
    as its `inner` property (``ConnectionStrings``: ``{"ConnectionString": …}``).

    Raises:
        Exception: ``error(path, reason)`` when `raw` is not an object or a value is an
            array or (without `inner`) an object.
    """
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise error(path, f"'{section}' must be an object")
    found: dict[str, str | None] = {}
    for key, value in raw.items():
        where = f"{section}.{key}"
        if inner is not None and isinstance(value, dict):
            where, value = f"{where}.{inner}", value.get(inner)
        if isinstance(value, dict | list):
            raise error(path, f"{where} must be a string, not a JSON {type(value).__name__}")
        found[key] = dotnet_string(value)
    return found


# -- the reader for what strict JSON refuses ------------------------------------------------------
def _depth(value: Any) -> int:
    """How deep containers nest in a parsed value (a scalar is 0, ``{}`` is 1)."""
    deepest = 0
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            children: Any = item.values()
        elif isinstance(item, list):
            children = item
        else:
            continue
        deepest = max(deepest, depth)
        stack.extend((child, depth + 1) for child in children)
    return deepest


def _is_space(char: str) -> bool:
    """.NET ``char.IsWhiteSpace``."""
    return char in _SPACE or (
        not char.isascii() and unicodedata.category(char) in ("Zs", "Zl", "Zp")
    )


def _is_identifier(char: str) -> bool:
    """Newtonsoft's ``ValidIdentifierChar``: .NET ``char.IsLetterOrDigit``, ``_`` or ``$``."""
    if char.isascii():
        return char.isalnum() or char in "_$"
    category = unicodedata.category(char)
    return category[0] == "L" or category == "Nd"


class _Parser:
    """A recursive-descent reader of Newtonsoft's JSON dialect; depth is bounded by
    `MAX_DEPTH`, so is the recursion."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.pos = 0

    def fail(self, message: str, pos: int | None = None) -> JsonSyntaxError:
        where = self.pos if pos is None else pos
        before = self.text[:where]
        breaks = list(_LINE_BREAK.finditer(before))
        line_start = breaks[-1].end() if breaks else 0
        return JsonSyntaxError(message, len(breaks) + 1, where - line_start + 1)

    def document(self) -> Any:
        self.skip()
        if self.pos >= len(self.text):
            raise self.fail("there is no JSON value (the file is empty or only comments)")
        value = self.value(0)
        self.skip()
        if self.pos < len(self.text):
            raise self.fail(f"unexpected {self.text[self.pos]!r} after the end of the JSON value")
        return value

    def skip(self) -> None:
        """Move past whitespace and comments."""
        text, size = self.text, len(self.text)
        while self.pos < size:
            char = text[self.pos]
            if char == "/":
                following = text[self.pos + 1 : self.pos + 2]
                if following == "/":
                    end = _LINE_BREAK.search(text, self.pos)
                    self.pos = end.start() if end else size
                elif following == "*":
                    end_at = text.find("*/", self.pos + 2)
                    if end_at < 0:
                        raise self.fail("a /* comment is never closed")
                    self.pos = end_at + 2
                else:
                    raise self.fail("'/' that does not start a comment (// or /*)")
            elif _is_space(char):
                self.pos += 1
            else:
                return

    def at_end(self, what: str) -> None:
        if self.pos >= len(self.text):
            raise self.fail(f"the file ends inside {what}")

    def value(self, depth: int) -> Any:
        char = self.text[self.pos]
        if char == "{":
            return self.object(depth + 1)
        if char == "[":
            return self.array(depth + 1)
        if char in "\"'":
            return self.string(char)
        if char == "-" and self.text.startswith("-Infinity", self.pos):
            self.pos += len("-Infinity")
            return -math.inf
        if char in "-." or char.isdigit():
            return self.number()
        word = _WORD.match(self.text, self.pos)
        if word is not None and word.group() in _LITERALS:
            self.pos = word.end()
            return _LITERALS[word.group()]
        if word is not None and word.group() == "new":
            raise self.fail("a JavaScript constructor (new …) is not a value the emulator reads")
        raise self.fail(f"unexpected {char!r} where a value should be")

    def enter(self, depth: int) -> None:
        if depth > MAX_DEPTH:
            raise self.fail(
                f"objects and arrays nest deeper than {MAX_DEPTH} levels (the reader's MaxDepth)"
            )
        self.pos += 1

    def object(self, depth: int) -> dict[str, Any]:
        self.enter(depth)
        result: dict[str, Any] = {}
        while True:
            self.skip()
            self.at_end("an object (a '}' is missing)")
            if self.text[self.pos] == "}":
                self.pos += 1
                return result
            key = self.property_name()
            self.skip()
            self.at_end("an object (a '}' is missing)")
            if self.text[self.pos] != ":":
                raise self.fail(f"expected ':' after the property name {key!r}")
            self.pos += 1
            self.skip()
            self.at_end("an object (a value is missing)")
            result[key] = self.value(depth)  # a repeated name: the last one wins
            self.skip()
            self.at_end("an object (a '}' is missing)")
            char = self.text[self.pos]
            if char == "}":
                self.pos += 1
                return result
            if char != ",":
                raise self.fail(f"expected ',' or '}}' after the value of {key!r}, not {char!r}")
            self.pos += 1

    def property_name(self) -> str:
        char = self.text[self.pos]
        if char in "\"'":
            return self.string(char)
        if not _is_identifier(char):
            raise self.fail(f"unexpected {char!r} where a property name should be")
        start = self.pos
        while self.pos < len(self.text) and _is_identifier(self.text[self.pos]):
            self.pos += 1
        if self.pos < len(self.text):
            following = self.text[self.pos]
            if following != ":" and not _is_space(following):
                raise self.fail(f"{following!r} cannot be part of an unquoted property name")
        return self.text[start : self.pos]

    def array(self, depth: int) -> list[Any]:
        self.enter(depth)
        items: list[Any] = []
        while True:
            self.skip()
            self.at_end("an array (a ']' is missing)")
            char = self.text[self.pos]
            if char == "]":
                self.pos += 1
                return items
            if char == ",":  # an empty slot: Newtonsoft's `undefined`
                items.append(None)
                self.pos += 1
                continue
            items.append(self.value(depth))
            self.skip()
            self.at_end("an array (a ']' is missing)")
            char = self.text[self.pos]
            if char == "]":
                self.pos += 1
                return items
            if char != ",":
                raise self.fail(f"expected ',' or ']' after an array item, not {char!r}")
            self.pos += 1

    def string(self, quote: str) -> str:
        start = self.pos
        self.pos += 1
        text, parts = self.text, []
        while True:
            chunk = _CHUNK[quote].match(text, self.pos)
            assert chunk is not None  # the pattern matches the empty string
            parts.append(chunk.group())
            self.pos = chunk.end()
            if self.pos >= len(text):
                raise self.fail(f"a string is never closed (no {quote})", start)
            if text[self.pos] == quote:
                self.pos += 1
                return "".join(parts)
            parts.append(self.escape())

    def escape(self) -> str:
        text, at = self.text, self.pos
        code = text[at + 1 : at + 2]
        if code in _ESCAPES:
            self.pos += 2
            return _ESCAPES[code]
        if code != "u":
            if not code:
                raise self.fail("a string is never closed")
            raise self.fail(f"\\{code} is not an escape sequence JSON knows")
        unit = self.hex4(at + 2)
        self.pos = at + 6
        if 0xD800 <= unit < 0xDC00 and text.startswith("\\u", self.pos):
            low = self.hex4(self.pos + 2)
            if 0xDC00 <= low < 0xE000:
                self.pos += 6
                return chr(0x10000 + ((unit - 0xD800) << 10) + (low - 0xDC00))
        return chr(unit)

    def hex4(self, at: int) -> int:
        digits = self.text[at : at + 4]
        if len(digits) < 4 or any(c not in "0123456789abcdefABCDEF" for c in digits):
            raise self.fail("\\u must be followed by four hexadecimal digits", at - 2)
        return int(digits, 16)

    def number(self) -> int | float:
        token_match = _NUMBER_TOKEN.match(self.text, self.pos)
        assert token_match is not None  # the first character is a digit, '-' or '.'
        token = token_match.group()
        value = _number(token)
        if value is None:
            raise self.fail(f"{token!r} is not a number")
        self.pos = token_match.end()
        return value


def _number(token: str) -> int | float | None:
    """A number token as Newtonsoft reads it (``ParseReadNumber``), or None.

    A token that starts with ``0`` and another character than ``.``, ``e`` or ``E`` is
    hexadecimal (``0x``) or octal, read with ``Convert.ToInt64(token, 16 or 8)``: at most 64
    bits, the top one the sign (``0xFFFFFFFFFFFFFFFF`` is -1); no minus sign (``-0x1F`` is
    no number, ``-010`` is -10).
    """
    if len(token) > 1 and token[0] == "0" and token[1] not in ".eE":
        if _HEX.fullmatch(token):
            value = int(token[2:], 16)
        elif _OCTAL.fullmatch(token):
            value = int(token, 8)
        else:
            return None  # 09, 0x, 00.5: FormatException
        if value >= 1 << 64:
            return None  # OverflowException
        return value - (1 << 64) if value >= 1 << 63 else value
    try:
        if _INTEGER.fullmatch(token):
            return int(token)
        if _FLOAT.fullmatch(token):
            return float(token)
    except ValueError:  # more digits than Python converts
        return None
    return None
