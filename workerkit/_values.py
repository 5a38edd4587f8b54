"""The Python values hooks see and return for HTTP and special bindings (`HttpRequest`,
`HttpResponse`, `HttpCookie`, identities, `ModelBindingData`), and `ConversionError`.
Public through `workerkit` and `workerkit.convert`, which converts them to and from
`TypedData`."""

import codecs
import datetime
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Final, Literal, Self


class ConversionError(ValueError):
    """A value could not be converted to or from `TypedData`.

    Raised for host input the worker cannot read (the other side misbehaved) and for
    function outputs the host would not accept (fix your code); the message says which.
    """


#: JSON as the host reads it: compact, UTF-8 kept, no NaN or Infinity.
_JSON_ENCODER: Final = json.JSONEncoder(ensure_ascii=False, allow_nan=False, separators=(",", ":"))


def _dump_json(value: Any) -> str:
    try:
        text: str = _JSON_ENCODER.encode(value)
    except (TypeError, ValueError, RecursionError) as exc:
        raise ConversionError(
            f"cannot encode value of type {type(value).__name__!r} as TypedData.json: {exc}"
        ) from exc
    return text


@dataclass(frozen=True, slots=True)
class Claim:
    """One claim of a `ClaimsIdentity` (`RpcClaim`)."""

    type: str
    value: str


@dataclass(frozen=True, slots=True)
class ClaimsIdentity:
    """An identity on the request's principal (`RpcClaimsIdentity`); None means unset."""

    authentication_type: str | None
    name_claim_type: str | None
    role_claim_type: str | None
    claims: tuple[Claim, ...]


@dataclass(frozen=True)
class HttpRequest:
    """An HTTP trigger input (`RpcHttp` sent by the host).

    The mappings are read-only copies made at construction; header names are lower-cased
    (the host lower-cases them too). Query values with several occurrences arrive comma-joined.
    """

    method: str
    url: str
    headers: Mapping[str, str] = field(default_factory=dict)
    query: Mapping[str, str] = field(default_factory=dict)
    params: Mapping[str, str] = field(default_factory=dict)
    """Route parameters."""
    body: bytes = b""
    identities: tuple[ClaimsIdentity, ...] = ()

    def __post_init__(self) -> None:
        put = object.__setattr__
        put(self, "headers", MappingProxyType({k.lower(): v for k, v in self.headers.items()}))
        put(self, "query", MappingProxyType(dict(self.query)))
        put(self, "params", MappingProxyType(dict(self.params)))
        if not isinstance(self.body, bytes):
            if isinstance(self.body, str):
                raise TypeError("HttpRequest.body must be bytes, not str: encode it first")
            put(self, "body", bytes(self.body))
        if not isinstance(self.identities, tuple):
            put(self, "identities", tuple(self.identities))

    def __reduce__(self) -> tuple[Any, ...]:
        # MappingProxyType cannot be pickled or deep-copied; rebuild from plain dicts.
        return (
            type(self),
            (
                self.method,
                self.url,
                dict(self.headers),
                dict(self.query),
                dict(self.params),
                self.body,
                self.identities,
            ),
        )

    def text(self, encoding: str | None = None) -> str:
        """Return the body as text.

        Args:
            encoding: codec to use; by default the `charset` of the `content-type` header,
                or UTF-8 when it is missing or unknown. Undecodable bytes become U+FFFD.
        """
        return self.body.decode(encoding or _charset(self.headers.get("content-type")), "replace")

    def json(self) -> Any:
        """Parse the body as JSON.

        Raises:
            ValueError: the body is not valid JSON.
        """
        return _parse_json_body(self.body, "request")

    @property
    def cookies(self) -> dict[str, str]:
        """Cookies from the `cookie` header; the first of duplicate names wins."""
        return _parse_cookie_header(self.headers.get("cookie", ""))


_SameSite = Literal["lax", "strict", "none"]


@dataclass(slots=True)
class HttpCookie:
    """A `Set-Cookie` on an `HttpResponse` (`RpcHttpCookie`); None leaves an attribute out.

    `expires` must be timezone-aware; `max_age` is in seconds and must be finite.
    """

    name: str
    value: str
    domain: str | None = None
    path: str | None = None
    expires: datetime.datetime | None = None
    secure: bool | None = None
    http_only: bool | None = None
    max_age: float | None = None
    same_site: _SameSite | None = None


@dataclass
class HttpResponse:
    """An HTTP output (`RpcHttp` returned to the host).

    `status_code` must be 200..599 (a 1xx status is not a final response: the client would
    wait for one that never comes). A str body is sent as text, bytes verbatim. With
    `enable_content_negotiation` the host runs content negotiation and ignores cookies.
    """

    status_code: int = 200
    body: bytes | str = b""
    headers: dict[str, str] = field(default_factory=dict)
    cookies: list[HttpCookie] = field(default_factory=list)
    enable_content_negotiation: bool = False

    @classmethod
    def from_json(
        cls, value: Any, status_code: int = 200, headers: Mapping[str, str] | None = None
    ) -> Self:
        """Build a response whose body is `value` as compact JSON text.

        `content-type: application/json` is added unless `headers` has a content type.

        Raises:
            ConversionError: `value` is not JSON-serialisable (NaN and Infinity included).
        """
        body = _dump_json(value)
        out = dict(headers) if headers is not None else {}
        if not any(k.lower() == "content-type" for k in out):
            out["content-type"] = "application/json"
        return cls(status_code=status_code, body=body, headers=out)

    def text(self, encoding: str | None = None) -> str:
        """Return the body as text (a str body as is; bytes decoded as `HttpRequest.text`)."""
        if isinstance(self.body, str):
            return self.body
        return self.body.decode(encoding or _charset(self._header("content-type")), "replace")

    def json(self) -> Any:
        """Parse the body as JSON.

        Raises:
            ValueError: the body is not valid JSON.
        """
        return _parse_json_body(self.body, "response")

    def _header(self, name: str) -> str | None:
        for key, value in self.headers.items():
            if key.lower() == name:
                return value
        return None


@dataclass(frozen=True, slots=True)
class ModelBindingData:
    """SDK-type binding data (`ModelBindingData`): the worker hydrates it into a client object."""

    version: str
    source: str
    content_type: str
    content: bytes


# ---------------------------------------------------------------------------------------------
# HTTP helpers


#: Python codecs that decode bytes to str but are not character sets: a Content-Type naming
#: one is a mistake, not a reason to turn a body into escapes or Punycode.
_NOT_CHARSETS = frozenset({"idna", "punycode", "undefined", "unicode-escape", "raw-unicode-escape"})


def _charset(content_type: str | None) -> str:
    # For text(): the charset when it is a character set Python can decode any bytes with
    # (errors replaced), else UTF-8. Not one: "base64", "zlib" (not text encodings at all),
    # the codecs above, and whatever cannot decode one stray byte. The host ignores the
    # charset of a request body (`host_text` in emulator/_rpchttp.py).
    if content_type:
        for param in content_type.split(";")[1:]:
            name, sep, value = param.partition("=")
            if sep and name.strip().lower() == "charset":
                value = value.strip().strip("\"'").strip()
                try:
                    info = codecs.lookup(value)
                    b"\xff".decode(info.name, "replace")
                except (LookupError, UnicodeError):
                    break
                if info.name in _NOT_CHARSETS or not getattr(info, "_is_text_encoding", True):
                    break
                return info.name
    return "utf-8"


def _parse_json_body(body: bytes | str, what: str) -> Any:
    try:
        return json.loads(body)
    except (ValueError, RecursionError) as exc:
        raise ValueError(f"{what} body is not valid JSON: {exc}") from exc


def _parse_cookie_header(header: str) -> dict[str, str]:
    cookies: dict[str, str] = {}
    for part in header.split(";"):
        name, sep, value = part.partition("=")
        name = name.strip()
        if not sep or not name or name in cookies:
            continue
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] == '"':
            value = value[1:-1]
        cookies[name] = value
    return cookies
