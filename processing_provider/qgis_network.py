"""The engine's network transport on QGIS networking: `QgsBlockingNetworkRequest` on the threads
of a private `QThreadPool`, so the user's proxy, SSL, timeout and authentication settings apply
(qgis-notes §5, §7: Python threads would lose the timeout).

The pool threads' network managers do not pass their per-request signals on to the main
thread's manager: there QGIS's Network Logger (F12), when it records, keeps every request and
finds each answer's row by a linear search on the main thread, so an export of thousands of
tiles slowed the whole desktop down as it went (21,846 requests: 50 s in the desktop with the
logger recording against 18 s without it or in qgis_process)."""
from __future__ import annotations

import contextlib
import threading
from concurrent.futures import Future, wait
from typing import Callable

from qgis.core import (
    QgsBlockingNetworkRequest,
    QgsNetworkAccessManager,
    QgsNetworkReplyContent,
    QgsNetworkRequestParameters,
)
from qgis.PyQt.QtCore import (
    QByteArray,
    QCoreApplication,
    QEventLoop,
    QRunnable,
    Qt,
    QThread,
    QThreadPool,
    QUrl,
)
from qgis.PyQt.QtNetwork import QNetworkReply, QNetworkRequest

from ..core.sources.http_client import HttpResponse


def _prepare_manager() -> None:
    """This pool thread's own QgsNetworkAccessManager: no disk cache (tiles are fetched once,
    so caching them only floods the user's cache, and the shared disk cache's lock cost ~5 ms a
    request with 8 threads: 273 -> 363 tiles/s at 8 x 20 ms on 3.22), and its per-request
    monitoring signals are not passed on to the main thread (module docstring). Those that
    authentication, proxies and SSL errors need stay connected."""
    manager = QgsNetworkAccessManager.instance(Qt.ConnectionType.DirectConnection)
    if manager.cache() is not None:
        manager.setCache(None)
    for signal in (manager.requestAboutToBeCreated[QgsNetworkRequestParameters],
                   manager.finished[QgsNetworkReplyContent],
                   manager.requestTimedOut[QgsNetworkRequestParameters],
                   manager.downloadProgress):
        with contextlib.suppress(TypeError):  # TypeError: nothing was connected
            signal.disconnect()


_RETIRED: list[QThreadPool] = []  # closed pools whose last requests are still under way


class _Job(QRunnable):
    def __init__(self, future: Future, fn: Callable, args: tuple, done: Callable):
        super().__init__()
        self.setAutoDelete(False)  # Python keeps the reference until it has run
        self._future, self._fn, self._args, self._done = future, fn, args, done

    def run(self) -> None:
        try:
            if self._future.set_running_or_notify_cancel():
                try:
                    self._future.set_result(self._fn(*self._args))
                except BaseException as exc:  # handed to whoever waits on the future
                    self._future.set_exception(exc)
        finally:
            self._done(self)


class QgisTransport:
    """Runs engine functions on `concurrency` QThreadPool threads; `get` uses QGIS's stack."""

    def __init__(self, concurrency: int, authcfg: str = ""):
        self._concurrency = max(1, concurrency)
        self._pool = QThreadPool()
        self._pool.setMaxThreadCount(self._concurrency)
        self._pool.setExpiryTimeout(-1)  # the threads prepared below serve the whole run
        self._authcfg = authcfg
        self._canceled = threading.Event()
        self._lock = threading.Lock()
        self._jobs: set[_Job] = set()
        self._prepare_threads()

    def _prepare_threads(self) -> None:
        """Start every pool thread now and take its network manager's disk cache away before
        any request exists: deleting a cache while another thread's QgsBlockingNetworkRequest
        (a Python-made object) is being disconnected deadlocks on the GIL (seen on 3.22)."""
        ready = threading.Barrier(self._concurrency + 1, timeout=60)

        def prepare() -> None:
            _prepare_manager()
            ready.wait()  # holds this thread, so that every job lands on a thread of its own

        futures = [self.submit(prepare) for _ in range(self._concurrency)]
        ready.wait()
        for future in futures:
            future.result()

    @property
    def concurrency(self) -> int:
        return self._concurrency

    def submit(self, fn: Callable, *args) -> Future:
        future: Future = Future()
        job = _Job(future, fn, args, self._finished)
        with self._lock:
            self._jobs.add(job)
        self._pool.start(job)
        return future

    def result(self, future: Future):
        while not future.done():
            wait([future], timeout=0.02)
            self.idle()
        return future.result()

    def idle(self) -> None:
        """On the main thread (qgis_process runs algorithms there), let Qt deliver what the
        network threads send it, e.g. QGIS's handling of an authentication challenge."""
        app = QCoreApplication.instance()
        if app is not None and QThread.currentThread() == app.thread():
            QCoreApplication.processEvents(QEventLoop.ProcessEventsFlag.AllEvents, 20)

    def _finished(self, job: _Job) -> None:
        with self._lock:
            self._jobs.discard(job)

    def cancel(self) -> None:
        """Later requests fail at once; those under way finish on their own. (Aborting them
        through a QgsFeedback left QgsBlockingNetworkRequest stuck in 3.22, qgis-notes §7.)"""
        self._canceled.set()

    def close(self) -> None:
        """Returns at once: the pool is kept alive until its last request has finished."""
        self.cancel()
        _RETIRED[:] = [pool for pool in _RETIRED if pool.activeThreadCount()]
        if self._pool.activeThreadCount():
            _RETIRED.append(self._pool)

    def get(self, url: str, headers: dict[str, str]) -> HttpResponse:
        return self._request(url, headers, None)

    def post(self, url: str, form: bytes, headers: dict[str, str]) -> HttpResponse:
        """A form POST (QgsBlockingNetworkRequest.post): an exportTiles job whose area of
        interest is too long for a URL."""
        return self._request(url, {**headers, "Content-Type":
                                   "application/x-www-form-urlencoded"}, form)

    def _request(self, url: str, headers: dict[str, str], form) -> HttpResponse:
        if self._canceled.is_set():
            return HttpResponse(None, {}, b"", "canceled")
        request = QNetworkRequest(QUrl.fromEncoded(url.encode("ascii")))
        for name, value in headers.items():
            request.setRawHeader(name.encode("latin-1"), value.encode("latin-1"))
        # tiles must come from the server, and thousands of them must not flood QGIS's cache
        request.setAttribute(QNetworkRequest.Attribute.CacheLoadControlAttribute,
                             QNetworkRequest.CacheLoadControl.AlwaysNetwork)
        request.setAttribute(QNetworkRequest.Attribute.CacheSaveControlAttribute, False)
        blocking = QgsBlockingNetworkRequest()
        if self._authcfg:
            blocking.setAuthCfg(self._authcfg)
        code = (blocking.get(request, True) if form is None  # never a stale tile from a cache
                else blocking.post(request, QByteArray(form), True))
        reply = blocking.reply()
        status = reply.attribute(QNetworkRequest.Attribute.HttpStatusCodeAttribute)
        error = reply.error()
        canceled = self._canceled.is_set()
        response = HttpResponse(
            status=int(status) if status is not None and not canceled else None,
            headers={bytes(name).decode("latin-1").lower():
                     bytes(reply.rawHeader(name)).decode("latin-1")
                     for name in reply.rawHeaderList()},
            body=bytes(reply.content()),
            error="canceled" if canceled else (
                reply.errorString() if error != QNetworkReply.NetworkError.NoError else ""),
            # in 3.22 a timeout shows as an aborted reply with no HTTP status (qgis-notes §7)
            timed_out=not canceled and status is None and (
                error == QNetworkReply.NetworkError.OperationCanceledError
                or code == QgsBlockingNetworkRequest.ErrorCode.TimeoutError),
        )
        return response
