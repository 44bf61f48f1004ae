"""Talking to an ArcGIS REST tile service politely: requests go through a transport the caller
provides (QGIS networking in the plugin), every reply is checked before it is believed, and
failures are retried with exponential backoff, jitter and `Retry-After`, within a bound.
"""
from __future__ import annotations

import json
import logging
import random
import re
import threading
import time
from collections import Counter
from concurrent.futures import Future
from dataclasses import dataclass, field
from email.utils import parsedate_to_datetime
from typing import Callable, Optional, Protocol

from ..errors import CacheError, Concern, EngineBug, ExportCanceled, ServiceAuthError
from ..formats.image_kind import JPEG_END, PNG_END, is_jpeg, is_png
from .service_url import ServiceUrl

LOG = logging.getLogger(__name__)

RETRYABLE_STATUS = frozenset({408, 429, 500, 502, 503, 504})
AUTH_CODES = frozenset({401, 403, 498, 499})
HTML_ERROR = re.compile(rb"Error:\s*(?:</b>)?\s*([^<]*)<.*?Code:\s*(?:</b>)?\s*(\d+)",
                        re.IGNORECASE | re.DOTALL)
MAX_ERROR_PAGE = 64 << 10
# the service JSON and tilemaps: a wrong URL or a dead server is reported quickly, and a broken
# tilemap soon gives way to plain tile requests
SERVICE_ATTEMPTS = 3


MAX_JSON_BYTES = 64 << 20  # a service's JSON, a tilemap, a job's status


@dataclass(frozen=True)
class ReplyLimits:
    """What one reply may cost. The transport cuts it short (and says why in
    `HttpResponse.refused`) when its body, decoded, passes `max_bytes` or, with `deadline`, when
    the whole transfer outlasts twice the network timeout (a server that trickles a byte a
    second never goes silent)."""

    max_bytes: int
    deadline: bool = True


JSON_LIMITS = ReplyLimits(MAX_JSON_BYTES)


@dataclass
class HttpResponse:
    status: Optional[int]  # None when no HTTP answer came (network error, timeout, abort)
    headers: dict[str, str]  # names lower-cased
    body: bytes
    error: str = ""  # the transport's error text, "" when the transfer itself succeeded
    timed_out: bool = False
    refused: str = ""  # why the transport cut the reply short (ReplyLimits), "" when it did not


class Transport(Protocol):
    """How the engine reaches the network; the plugin implements it with QGIS networking."""

    def get(self, url: str, headers: dict[str, str], limits: ReplyLimits) -> HttpResponse:
        """One blocking GET; only called from inside functions given to `submit`."""

    def post(self, url: str, form: bytes, headers: dict[str, str],
             limits: ReplyLimits) -> HttpResponse:
        """One blocking POST of a form-encoded body (an exportTiles job with a long area of
        interest); like `get`, only called from inside functions given to `submit`."""

    def submit(self, fn: Callable, *args) -> Future:
        """Run `fn(*args)` on one of the transport's network threads."""

    def result(self, future: Future):
        """Wait for a submitted function's result, keeping the waiting thread responsive to
        what the network threads may need from it (the main thread's event loop)."""

    def idle(self) -> None:
        """Called by waiting loops: lets the main thread's event loop run."""

    @property
    def concurrency(self) -> int:
        """How many submitted functions run at once."""

    def cancel(self) -> None:
        """Abort requests under way; later `get`s fail at once."""


@dataclass(frozen=True)
class FetchPolicy:
    max_attempts: int = 6
    backoff_base: float = 0.5  # seconds before the first retry (before jitter)
    backoff_cap: float = 30.0
    retry_after_cap: float = 300.0  # a longer Retry-After is waited for this long at most
    requests_per_second: float = 0.0  # 0 = unlimited
    max_tile_bytes: int = 16 << 20  # a larger tile is refused, not buffered


class TileFailed(Exception):
    """A request that kept failing after every attempt; `reason` is short, for a tally."""

    def __init__(self, reason: str, what: str):
        super().__init__(f"{what}: {reason}")
        self.reason, self.what = reason, what


@dataclass
class FailureTally:
    """What went wrong during a run, for the final message (thread-safe)."""

    retries: int = 0
    failed: Counter = field(default_factory=Counter)  # reason -> tiles that never came
    examples: list[str] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def retried(self) -> None:
        with self._lock:
            self.retries += 1

    def add(self, failure: TileFailed) -> None:
        with self._lock:
            self.failed[failure.reason] += 1
            if len(self.examples) < 3:
                self.examples.append(str(failure))

    def summary(self, attempts: int) -> str:
        with self._lock:
            total = sum(self.failed.values())
            reasons = ", ".join(f"{n} x {reason}" for reason, n in self.failed.most_common())
            examples = "; ".join(self.examples)
        return (
            f"{total} tile{'s' if total != 1 else ''} could not be downloaded after {attempts} "
            f"attempts each ({reasons}; e.g. {examples}). The export was stopped and nothing "
            "was written. Try again later with fewer parallel requests or a lower request "
            "rate, or check the service."
        )


class Throttle:
    """Spaces requests to a rate and holds everybody back after a 429/503 `Retry-After`."""

    def __init__(self, requests_per_second: float, stop: threading.Event):
        self._interval = 1.0 / requests_per_second if requests_per_second > 0 else 0.0
        self._next = 0.0
        self._paused_until = 0.0
        self._lock = threading.Lock()
        self._stop = stop

    def pause(self, seconds: float) -> None:
        with self._lock:
            self._paused_until = max(self._paused_until, time.monotonic() + seconds)

    def wait_turn(self) -> None:
        while True:
            with self._lock:
                now = time.monotonic()
                start = max(now, self._paused_until, self._next)
                if start <= now:
                    self._next = now + self._interval
                    return
            if self._stop.wait(min(start - now, 0.25)):
                raise ExportCanceled("The export was stopped.")


class ServiceClient:
    """Requests to one service: JSON resources, tiles and tilemaps, each checked and retried."""

    def __init__(self, service: ServiceUrl, transport: Transport, token: Optional[str] = None,
                 policy: Optional[FetchPolicy] = None):
        self.service, self.transport = service, transport
        self.policy = policy = policy or FetchPolicy()
        self._headers = {"X-Esri-Authorization": f"Bearer {token}"} if token else {}
        self.stop = threading.Event()
        self.throttle = Throttle(policy.requests_per_second, self.stop)
        self.tally = FailureTally()
        self.requests = 0
        self.tiles: Counter = Counter()  # tiles received per level (for progress)
        self.count_lock = threading.Lock()

    def cancel(self) -> None:
        self.stop.set()
        self.transport.cancel()

    def close(self) -> None:
        self.cancel()

    # -- the three kinds of request -------------------------------------------------------

    def json(self, path: str = "", query: Optional[dict[str, str]] = None) -> dict:
        """A JSON resource (fetched on a network thread); CacheError when unusable."""
        url = self.service.url(path, {"f": "json", **(query or {})})
        what = f"{self.service}{path}"
        try:
            return self.transport.result(self.transport.submit(
                self._with_retries, url, what, _check_json, JSON_LIMITS, SERVICE_ATTEMPTS))
        except TileFailed as exc:
            raise CacheError(
                f"The service at {self.service} did not answer usably: {exc.reason} (after "
                f"{min(SERVICE_ATTEMPTS, self.policy.max_attempts)} attempts). Check the URL, "
                "your network and proxy settings (QGIS Options > Network), and that the "
                "service is running."
            ) from None

    def json_at(self, url: str, what: str, form: Optional[bytes] = None) -> dict:
        """A JSON resource at an absolute URL (a job's output folder), or the answer to a form
        POSTed there; the token goes as a header, as for every request."""
        try:
            return self.transport.result(self.transport.submit(
                self._with_retries, url, what, _check_json, JSON_LIMITS, SERVICE_ATTEMPTS,
                form))
        except TileFailed as exc:
            raise CacheError(f"{what} did not answer usably: {exc.reason}.") from None

    @property
    def headers(self) -> dict[str, str]:
        """The headers every request carries (the token's), for a download made elsewhere."""
        return dict(self._headers)

    def tile(self, level: int, row: int, col: int) -> Optional[bytes]:
        """The tile's bytes, None when the service has no such tile (404 or blank tile).
        Runs on a network thread (see `Transport.submit`)."""
        url = self.service.url(f"/tile/{level}/{row}/{col}", {"blankTile": "false"})
        data = self._with_retries(url, f"tile {level}/{row}/{col}", _check_tile,
                                  ReplyLimits(self.policy.max_tile_bytes))
        if data is not None:
            with self.count_lock:
                self.tiles[level] += 1
        return data

    def tilemap(self, level: int, row: int, col: int, height: int, width: int
                ) -> Optional[dict]:
        """The tilemap of a window (esri-formats §7.3); None for HTTP 422 (no tile in it)."""
        path = f"/tilemap/{level}/{row}/{col}/{width}/{height}"
        return self._with_retries(self.service.url(path, {"f": "json"}), f"tilemap {path}",
                                  _check_tilemap, JSON_LIMITS, SERVICE_ATTEMPTS)

    # -- retries ---------------------------------------------------------------------------

    def _with_retries(self, url: str, what: str, check: Callable[[HttpResponse], object],
                      limits: ReplyLimits, attempts: int = 0, form: Optional[bytes] = None):
        attempts = min(attempts or self.policy.max_attempts, self.policy.max_attempts)
        for attempt in range(1, attempts + 1):
            if self.stop.is_set():
                raise ExportCanceled("The export was stopped.")
            self.throttle.wait_turn()
            response = (self.transport.get(url, self._headers, limits) if form is None
                        else self.transport.post(url, form, self._headers, limits))
            with self.count_lock:
                self.requests += 1
            if self.stop.is_set():
                raise ExportCanceled("The export was stopped.")
            try:
                return check(response)
            except _Retry as retry:
                if attempt == attempts or not retry.retryable:
                    raise TileFailed(retry.reason, what) from None
                self.tally.retried()
                delay = self._backoff(attempt)
                if retry.retry_after is not None:
                    delay = max(delay, min(retry.retry_after, self.policy.retry_after_cap))
                if retry.retry_after is not None or retry.reason == "HTTP 429":
                    LOG.info("The service asked to slow down (%s): all requests pause %.1f s.",
                             retry.reason, delay)
                    self.throttle.pause(delay)  # the server asked everybody to slow down
                if self.stop.wait(delay):
                    raise ExportCanceled("The export was stopped.") from None
        raise EngineBug("a retry loop ended without an answer or an error")

    def _backoff(self, attempt: int) -> float:
        """Exponential backoff with full jitter on the upper half."""
        ceiling = min(self.policy.backoff_cap, self.policy.backoff_base * 2 ** (attempt - 1))
        return ceiling / 2 + random.uniform(0, ceiling / 2)


class _Retry(Exception):
    def __init__(self, reason: str, retry_after: Optional[float] = None, retryable=True):
        super().__init__(reason)
        self.reason, self.retry_after, self.retryable = reason, retry_after, retryable


def _refused(status: int) -> _Retry:
    """A client error other than 404/408/429: asking again would get the same answer."""
    return _Retry(f"HTTP {status}", retryable=False)


def _retry_after(headers: dict[str, str]) -> Optional[float]:
    value = headers.get("retry-after", "").strip()
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        return max(0.0, parsedate_to_datetime(value).timestamp() - time.time())
    except (TypeError, ValueError):
        return None


def _json_error(body: bytes) -> Optional[tuple[int, str]]:
    """ArcGIS reports errors as {"error": {"code": n, "message": ...}}, often with HTTP 200."""
    if body.lstrip()[:1] != b"{":
        return None
    try:
        error = json.loads(body).get("error")
    except (ValueError, AttributeError):
        return None
    if not isinstance(error, dict):
        return None
    try:
        code = int(error.get("code") or 0)
    except (TypeError, ValueError):
        code = 0
    message = str(error.get("message") or "error")
    details = error.get("details")
    if isinstance(details, list):
        extra = [str(detail) for detail in details[:3] if str(detail) != message]
        if extra:  # ArcGIS Online repeats the message as its only detail ("Token Required")
            message += " (" + "; ".join(extra) + ")"
    return code, message


def _html_error(body: bytes) -> Optional[tuple[int, str]]:
    """The ArcGIS REST Framework's HTML error page ("Error: …", "Code: …"), which servers send
    instead of JSON on some requests (an expired token on a tile, with HTTP 200)."""
    if body.lstrip()[:1] != b"<":
        return None
    match = HTML_ERROR.search(body[:MAX_ERROR_PAGE])
    if match is None:
        return None
    return int(match.group(2)), match.group(1).decode("utf-8", "replace").strip() or "error"


def _check_http(response: HttpResponse) -> None:
    """Raise for what every kind of request treats alike: transport errors, auth, 5xx, 429."""
    if response.refused:  # the same server would send the same again
        raise _Retry(response.refused, retryable=False)
    if response.timed_out:
        raise _Retry("timeout")
    status = response.status
    if status is None:
        raise _Retry(f"network error ({response.error or 'no answer'})")
    error = None
    if status in AUTH_CODES or status == 200:
        error = _json_error(response.body) or _html_error(response.body)
    code = error[0] if error else status
    if code in AUTH_CODES:
        message = error[1] if error else f"HTTP {status}"
        raise ServiceAuthError(
            f"The service refused access ({code}: {message}). Give a valid token or "
            "credentials for this service, and check that they have not expired.",
            Concern.CREDENTIALS)
    if status in RETRYABLE_STATUS:
        raise _Retry(f"HTTP {status}", _retry_after(response.headers))
    if response.error and status != 404 and status < 400:
        raise _Retry(f"network error ({response.error})")


def _check_tile(response: HttpResponse) -> Optional[bytes]:
    _check_http(response)
    status, body = response.status, response.body
    if status == 404 or (status == 200 and response.headers.get("blank-tile", "").lower() ==
                         "true"):
        return None
    if status != 200:
        raise _refused(status) if 400 <= status < 500 else _Retry(f"HTTP {status}")
    error = _json_error(body)
    if error is not None:
        raise _Retry(f"error {error[0]} from the service: {error[1]}")
    content_type = response.headers.get("content-type", "").split(";")[0].strip().lower()
    if not content_type.startswith("image/"):
        raise _Retry(f"not an image ({content_type or 'no content type'})")
    declared = response.headers.get("content-length", "").strip()
    encoded = response.headers.get("content-encoding", "identity").lower() != "identity"
    if declared.isdigit() and not encoded and int(declared) != len(body):
        raise _Retry(f"truncated ({len(body)} of {declared} bytes)")
    problem = image_problem(body)
    if problem:
        raise _Retry(problem)
    return body


def image_problem(body: bytes) -> str:
    """Why these bytes are not a complete PNG or JPEG tile ("" when they are)."""
    if not body:
        return "empty body"
    if is_png(body):
        return "" if body.endswith(PNG_END) else "truncated PNG"
    if is_jpeg(body):
        return "" if body.rstrip(b"\x00").endswith(JPEG_END) else "truncated JPEG"
    if body.lstrip()[:1] in (b"<", b"{"):
        return "an HTML or JSON page instead of an image"
    return ""  # another image format (LERC, WebP…): checked by its length only


def _check_json(response: HttpResponse) -> dict:
    _check_http(response)
    status = response.status
    if status != 200:
        raise _refused(status) if 400 <= status < 500 else _Retry(f"HTTP {status}")
    error = _json_error(response.body)
    if error is not None:
        if error[0] in RETRYABLE_STATUS:
            raise _Retry(f"error {error[0]}: {error[1]}")
        raise CacheError(f"The service answered with error {error[0]}: {error[1]}.")
    try:
        value = json.loads(response.body)
    except ValueError:
        raise _Retry("not JSON") from None
    if not isinstance(value, dict):
        raise _Retry("not a JSON object")
    return value


def _check_tilemap(response: HttpResponse) -> Optional[dict]:
    _check_http(response)
    if response.status == 422:
        return None
    error = _json_error(response.body) if response.status == 200 else None
    if error is not None and error[0] == 422:
        return None
    return _check_json(response)
