"""Recognising an ArcGIS REST tile service in what the user typed: a MapServer or ImageServer
URL (with a trailing slash, `?f=json` or a `token=`), or a `…/tile/{z}/{y}/{x}` template."""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Optional
from urllib.parse import parse_qsl, unquote, unquote_plus, urlencode, urlsplit, urlunsplit

from ..errors import CacheError

SERVICE_RE = re.compile(r"^(?P<base>.*?/(?P<kind>mapserver|imageserver))(?:/.*)?$", re.IGNORECASE)
DROPPED_QUERY = {"f", "token", "blanktile"}
MASK = "********"


@dataclass(frozen=True)
class ServiceUrl:
    base: str  # scheme://host/…/MapServer, without query or trailing slash
    kind: str  # "MapServer" or "ImageServer"
    token: Optional[str] = None  # from a token= query; never shown
    extra_query: tuple[tuple[str, str], ...] = field(default=())

    @property
    def name(self) -> str:
        """The service name (folder/name -> name), for the output's name."""
        parts = urlsplit(self.base).path.rstrip("/").split("/")
        return unquote(parts[-2]) if len(parts) >= 2 else "service"

    def url(self, path: str = "", query: Optional[dict[str, str]] = None) -> str:
        pairs = list(self.extra_query) + list((query or {}).items())
        return self.base + path + ("?" + urlencode(pairs) if pairs else "")

    def __str__(self) -> str:
        return self.base  # safe to log: no query, so no token


def is_service_url(text: str) -> bool:
    return urlsplit(text.strip()).scheme.lower() in ("http", "https")


def parse_service_url(text: str) -> ServiceUrl:
    """The service behind a URL; CacheError when it is not a MapServer/ImageServer URL."""
    parts = urlsplit(unquote_braces(text.strip()))
    if parts.scheme.lower() not in ("http", "https") or not parts.netloc:
        raise CacheError(f"{_shown(text)!r} is not an http(s) URL.")
    match = SERVICE_RE.match(parts.path)
    if not match:
        raise CacheError(
            f"{_shown(text)!r} is not an ArcGIS REST tile service URL: give "
            "https://<host>/<instance>/rest/services/[<folder>/]<name>/MapServer (or ImageServer)."
        )
    kind = "MapServer" if match.group("kind").lower() == "mapserver" else "ImageServer"
    base = urlunsplit((parts.scheme.lower(), parts.netloc, match.group("base"), "", ""))
    query = parse_qsl(parts.query, keep_blank_values=True)
    token = next((v for k, v in query if k.lower() == "token" and v), None)
    extra = tuple((k, v) for k, v in query if k.lower() not in DROPPED_QUERY)
    return ServiceUrl(base, kind, token, extra)


def redacted(text: str) -> str:
    """`text` with the value of every `token=` of its query masked, the rest kept as typed (so
    that a logged command still names the service it read)."""
    head, mark, tail = text.partition("?")
    if not mark:
        return text
    query, hash_mark, fragment = tail.partition("#")
    pairs = []
    for pair in query.split("&"):
        key, equals, _ = pair.partition("=")
        pairs.append(f"{key}={MASK}" if equals and unquote_plus(key).lower() == "token"
                     else pair)
    return head + mark + "&".join(pairs) + hash_mark + fragment


def unquote_braces(text: str) -> str:
    """QGIS XYZ URIs percent-encode the template braces."""
    return re.sub(r"%7[bBdD]", lambda m: "{" if m.group(0).lower() == "%7b" else "}", text)


def _shown(text: str) -> str:
    """The URL without its query, so that a token never reaches a message."""
    parts = urlsplit(text.strip())
    return urlunsplit((parts.scheme, parts.netloc, parts.path, "", "")) if parts.netloc else (
        text.strip().split("?", 1)[0])
