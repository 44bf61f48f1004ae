"""The engine's network transport on QGIS networking: `QgsBlockingNetworkRequest` on the threads
of a private `QThreadPool`, so the user's proxy, SSL, timeout and authentication settings apply
(qgis-notes §5, §7: Python threads would lose the timeout).

The pool threads' network managers do not pass their per-request signals on to the main
thread's manager: there QGIS's Network Logger (F12), when it records, keeps every request and
finds each answer's row by a linear search on the main thread, so an export of thousands of
tiles slowed the whole desktop down as it went (21,846 requests: 50 s in the desktop with the
logger recording against 18 s without it or in qgis_process)."""
from __future__ import annotations

import atexit
import contextlib
import logging
import threading
import time
from concurrent.futures import Future, wait
from typing import Callable, Optional

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
    QMetaObject,
    QRunnable,
    Qt,
    QThread,
    QThreadPool,
    QUrl,
)
from qgis.PyQt.QtNetwork import QNetworkReply, QNetworkRequest

from ..core.sources.http_client import HttpResponse, ReplyLimits

LOG = logging.getLogger(__name__)

CLOSE_WAIT_S = 30.0


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


# closed pools whose last requests are still under way, with their threads' network objects
_RETIRED: list[tuple[QThreadPool, list]] = []


@atexit.register
def _wait_for_retired() -> None:
    """Deleting a pool waits for its threads without releasing the GIL, which a request's
    watch (a Python slot) needs: so the pools are waited for here, where the GIL is released,
    before the interpreter deletes them (a deadlock seen on 3.22)."""
    for pool, _ in _RETIRED:
        pool.waitForDone()


def _mib(size: int) -> str:
    return f"{size / (1 << 20):.3g} MiB"


class _ReplyWatch:
    """Holds one reply to its ReplyLimits while QgsBlockingNetworkRequest waits for it.

    `progress` runs on the request's own thread, from the request's downloadProgress signal,
    as data comes in. Past a limit it finds the reply among the children of the thread's
    network manager (one request at a time per thread) and posts an abort to it
    (QNetworkReply.abort finishes it; the request's own abort() in 3.22 leaves it waiting
    forever, qgis-notes §7). It only reads and posts: Python code holding the GIL must not make
    Qt emit or disconnect (reply.abort(), setReadBufferSize, read all do), because other threads
    take the GIL while holding Qt's signal-slot locks (a deadlock seen on 3.22)."""

    def __init__(self, limits: ReplyLimits, deadline: Optional[float],
                 canceled: threading.Event):
        self._limits, self._canceled = limits, canceled
        self._deadline = None if deadline is None else time.monotonic() + deadline
        self._deadline_text = f"{deadline:g} s" if deadline is not None else ""
        self.refused = ""
        self._aborted = False

    def progress(self, received: int, total: int) -> None:
        if self._aborted:
            return
        if not self._canceled.is_set():
            if max(received, total) > self._limits.max_bytes:
                self._refuse_size()
            elif self._deadline is not None and time.monotonic() > self._deadline:
                self.refused = f"reply not complete within {self._deadline_text}"
            else:
                return
        self._aborted = True
        for reply in QgsNetworkAccessManager.instance().findChildren(QNetworkReply):
            try:
                if not reply.isFinished():  # run by the thread's event loop, outside Python
                    QMetaObject.invokeMethod(reply, "abort", Qt.ConnectionType.QueuedConnection)
            except RuntimeError:  # a reply deleted since (a redirect's, an earlier request's)
                continue

    def check_size(self, size: int) -> None:
        """The whole reply's size: one that came between two looks is held to the limit too."""
        if size > self._limits.max_bytes and not self.refused:
            self._refuse_size()

    def _refuse_size(self) -> None:
        self.refused = f"reply larger than {_mib(self._limits.max_bytes)}"


class _ThreadNetwork:
    """The QgsBlockingNetworkRequest a pool thread makes all its requests with, made and
    connected once when the thread is prepared and deleted on that thread when the transport
    closes. Deleting or connecting a Python-made QObject takes Qt's signal-slot locks while
    holding the GIL, and QgsBlockingNetworkRequest, deleting its event loop, takes the GIL (a
    Python-made object's disconnectNotify) while holding one of them: made per request, with a
    watch connected to each, they deadlocked (seen on 3.22)."""

    def __init__(self, authcfg: str):
        self.request = QgsBlockingNetworkRequest()
        if authcfg:
            self.request.setAuthCfg(authcfg)
        self.request.downloadProgress.connect(self._progress)
        self._watch: Optional[_ReplyWatch] = None

    def _progress(self, received: int, total: int) -> None:
        """A slot: an exception escaping it would end the process (PyQt 5.5+)."""
        if self._watch is None:
            return
        try:
            self._watch.progress(received, total)
        except Exception:  # noqa: BLE001 (logged; the request goes on unwatched)
            LOG.exception("Looking at a reply under way failed")

    def close(self) -> None:
        self.request.downloadProgress.disconnect(self._progress)

    def watched(self, watch: _ReplyWatch, send: Callable[[QgsBlockingNetworkRequest], int]
                ) -> int:
        """`send(request)` with `watch` told of its reply's progress all along."""
        self._watch = watch
        try:
            return send(self.request)
        finally:
            self._watch = None


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
        # per pool thread, by its OS thread id: threading.local would not do, as a pool thread's
        # Python thread state (and its locals) goes whenever a job ends; deleted with the pool
        self._networks: dict[int, _ThreadNetwork] = {}
        self._prepare_threads()

    def _prepare_threads(self) -> None:
        """Start every pool thread now and take its network manager's disk cache away before
        any request exists: deleting a cache while another thread's QgsBlockingNetworkRequest
        (a Python-made object) is being disconnected deadlocks on the GIL (seen on 3.22)."""
        ready = threading.Barrier(self._concurrency + 1, timeout=60)

        def prepare() -> None:
            _prepare_manager()
            self._thread_network()
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
        """Later requests fail at once; those under way are aborted by their watches."""
        self._canceled.set()

    def close(self) -> None:
        """Cancels, and waits a little for the requests under way (their watches abort them);
        a pool still busy after that is kept alive until its last request has finished."""
        self.cancel()
        waited_until = time.monotonic() + CLOSE_WAIT_S
        while self._pool.activeThreadCount() and time.monotonic() < waited_until:
            self._pool.waitForDone(50)
            self.idle()
        _RETIRED[:] = [retired for retired in _RETIRED if retired[0].activeThreadCount()]
        if self._pool.activeThreadCount():
            _RETIRED.append((self._pool, list(self._networks.values())))
        else:
            self._tear_down_threads()

    def _tear_down_threads(self) -> None:
        """Each pool thread's network objects are deleted on that thread, now that no request
        runs: deleted later from another thread (when the transport is collected), their Qt
        halves crashed the thread that collected them (seen on 3.22)."""
        networks, self._networks = self._networks, {}
        done = threading.Barrier(len(networks) + 1, timeout=60)

        def tear_down() -> None:
            network = networks.pop(threading.get_ident(), None)
            if network is not None:
                network.close()
            del network  # the last reference: deleted here, on its own thread
            done.wait()  # holds this thread, so that every thread gets one of these

        futures = [self.submit(tear_down) for _ in range(len(networks))]
        done.wait()
        for future in futures:
            future.result()

    def _thread_network(self) -> _ThreadNetwork:
        """This pool thread's network objects (made when the thread was prepared)."""
        thread = threading.get_ident()
        with self._lock:
            network = self._networks.get(thread)
        if network is None:
            network = _ThreadNetwork(self._authcfg)
            with self._lock:
                self._networks[thread] = network
        return network

    def get(self, url: str, headers: dict[str, str], limits: ReplyLimits) -> HttpResponse:
        return self._request(url, headers, None, limits)

    def post(self, url: str, form: bytes, headers: dict[str, str],
             limits: ReplyLimits) -> HttpResponse:
        """A form POST (QgsBlockingNetworkRequest.post): an exportTiles job whose area of
        interest is too long for a URL."""
        return self._request(url, {**headers, "Content-Type":
                                   "application/x-www-form-urlencoded"}, form, limits)

    def _request(self, url: str, headers: dict[str, str], form, limits: ReplyLimits
                 ) -> HttpResponse:
        if self._canceled.is_set():
            return HttpResponse(None, {}, b"", "canceled")
        request = QNetworkRequest(QUrl.fromEncoded(url.encode("ascii")))
        for name, value in headers.items():
            request.setRawHeader(name.encode("latin-1"), value.encode("latin-1"))
        # tiles must come from the server, and thousands of them must not flood QGIS's cache
        request.setAttribute(QNetworkRequest.Attribute.CacheLoadControlAttribute,
                             QNetworkRequest.CacheLoadControl.AlwaysNetwork)
        request.setAttribute(QNetworkRequest.Attribute.CacheSaveControlAttribute, False)
        timeout = QgsNetworkAccessManager.timeout()
        deadline = 2 * timeout / 1000 if timeout > 0 and limits.deadline else None
        watch = _ReplyWatch(limits, deadline, self._canceled)
        network = self._thread_network()
        code = network.watched(watch, lambda blocking: (
            blocking.get(request, True) if form is None  # never a stale cached tile
            else blocking.post(request, QByteArray(form), True)))
        reply = network.request.reply()
        watch.check_size(reply.content().size())
        if watch.refused:
            return HttpResponse(None, {}, b"", error=watch.refused, refused=watch.refused)
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
