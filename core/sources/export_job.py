"""One job of a service's own `exportTiles` (or `estimateExportTilesSize`), driven as ArcGIS
clients drive it: submit, poll `jobs/<id>` with a growing interval, report the job's status and
new messages, cancel it when asked (`jobs/<id>/cancel`; a job still submitted cannot be, so it is
polled until it runs), find the result (`results/out_service_url` and its folder listing, or a
hosted job's `output.outputUrl`) and download the package, resuming with HTTP Range after a
dropped connection.
"""
from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional
from urllib.parse import urlencode, urlsplit

from ..errors import CacheError, ExportCanceled
from .http_client import HttpResponse, ReplyLimits, ServiceClient

LOG = logging.getLogger(__name__)

SUBMITTED = "esriJobSubmitted"
SUCCEEDED = "esriJobSucceeded"
ENDED_BADLY = frozenset({"esriJobFailed", "esriJobTimedOut", "esriJobCancelled"})
MAX_URL = 2000  # longer exportTiles requests (a detailed area of interest) are POSTed
PACKAGE_SUFFIXES = (".tpkx", ".tpk")
ZIP_MAGIC = b"PK\x03\x04"
DOWNLOAD_ATTEMPTS = 6  # failed requests of one package download
# a package is downloaded in HTTP Range parts of this size (what is held at once), each of which
# may take its time
PACKAGE_PART = 64 << 20
PACKAGE_LIMITS = ReplyLimits(PACKAGE_PART, deadline=False)


@dataclass(frozen=True)
class JobTiming:
    """How a job is polled: from `first` seconds, growing by `growth`, to `most`; given up
    after `timeout` seconds; a cancelled job is waited for `cancel_wait` seconds at most."""

    first: float = 1.0
    most: float = 10.0
    growth: float = 1.5
    timeout: float = 6 * 3600.0
    cancel_wait: float = 60.0


class ServerJob:
    """One job on the service of `client`; `report` gets its status lines."""

    def __init__(self, client: ServiceClient, report: Callable[[str], None],
                 is_canceled: Callable[[], bool], timing: JobTiming = JobTiming()):
        self.client, self.report, self.is_canceled, self.timing = (
            client, report, is_canceled, timing)
        self.job_id = ""
        self._seen = 0  # messages already reported

    # -- the two operations ---------------------------------------------------------------

    def export(self, query: dict[str, str], folder: Path,
               progress: Callable[[int, Optional[int]], None]) -> Path:
        """Runs an exportTiles job to its end and downloads its package into `folder`."""
        status = self._run("/exportTiles", query)
        return self._download(self._package_url(status), folder, progress)

    def estimate(self, query: dict[str, str]) -> tuple[int, int]:
        """(totalTilesToExport, totalSize) by estimateExportTilesSize; a server that answers
        at once is taken at its word, else its job is polled and its result read."""
        answer = self._submit("/estimateExportTilesSize", query)
        if "totalTilesToExport" not in answer:
            self._wait(answer)
            answer = self.client.json(f"/jobs/{self.job_id}/results/out_service_tile_size")
            answer = answer.get("value", answer)
        try:
            return int(answer["totalTilesToExport"]), int(answer.get("totalSize") or 0)
        except (KeyError, TypeError, ValueError):
            raise CacheError("The service's estimateExportTilesSize answer has no "
                             "totalTilesToExport.") from None

    # -- submitting and polling -----------------------------------------------------------

    def _run(self, operation: str, query: dict[str, str]) -> dict:
        return self._wait(self._submit(operation, query))

    def _submit(self, operation: str, query: dict[str, str]) -> dict:
        url = self.client.service.url(operation, {"f": "json", **query})
        if len(url) > MAX_URL:
            answer = self.client.json_at(
                self.client.service.url(operation), f"{self.client.service}{operation}",
                urlencode({"f": "json", **query}).encode("ascii"))
        else:
            answer = self.client.json(operation, query)
        if "totalTilesToExport" in answer:
            return answer
        self.job_id = str(answer.get("jobId") or "")
        if not self.job_id:
            raise CacheError(f"The service did not start a job for {operation[1:]}: its answer "
                             "has no jobId.")
        self.report(f"exportTiles job {self.job_id}: {answer.get('jobStatus', SUBMITTED)}")
        return answer

    def _wait(self, answer: dict) -> dict:
        """Polls the job until it ends; its final status JSON when it succeeded."""
        interval, started, cancel_sent = self.timing.first, time.monotonic(), False
        status = str(answer.get("jobStatus", SUBMITTED))
        last = ""
        while True:
            if self.is_canceled() and not cancel_sent and status != SUBMITTED:
                self.client.json(f"/jobs/{self.job_id}/cancel")
                self.report(f"exportTiles job {self.job_id}: cancel sent")
                cancel_sent, started = True, time.monotonic()
            if cancel_sent and (status in ENDED_BADLY or status == SUCCEEDED
                                or time.monotonic() - started > self.timing.cancel_wait):
                raise ExportCanceled(f"The export was stopped (the server's job {self.job_id} "
                                     f"is {status}).")
            if time.monotonic() - started > self.timing.timeout:
                raise CacheError(f"The server's exportTiles job {self.job_id} did not end within "
                                 f"{self.timing.timeout:.0f} s (last status {status}).")
            time.sleep(interval if not self.is_canceled() else min(interval, 0.25))
            interval = min(self.timing.most, interval * self.timing.growth)
            answer = self.client.json(f"/jobs/{self.job_id}")
            status = str(answer.get("jobStatus", ""))
            self._report_messages(answer, status != last)
            last = status
            if status == SUCCEEDED and not cancel_sent:
                return answer
            if status in ENDED_BADLY and not cancel_sent:
                raise CacheError(
                    f"The server's exportTiles job {self.job_id} ended {status}: "
                    + ("; ".join(_errors(answer)) or "it gave no reason") + ".")

    def _report_messages(self, answer: dict, status_changed: bool) -> None:
        messages = answer.get("messages") if isinstance(answer.get("messages"), list) else []
        new = [m.get("description", "") for m in messages[self._seen:] if isinstance(m, dict)]
        self._seen = len(messages)
        if status_changed:
            self.report(f"exportTiles job {self.job_id}: {answer.get('jobStatus')}")
        for text in new:
            self.report(f"exportTiles job {self.job_id}: {text}")

    # -- the result -------------------------------------------------------------------------

    def _package_url(self, status: dict) -> str:
        output = status.get("output")
        hosted = output.get("outputUrl") if isinstance(output, dict) else None
        if isinstance(hosted, list):
            hosted = hosted[0] if hosted else None
        if isinstance(hosted, str) and hosted:
            return hosted
        result = self.client.json(f"/jobs/{self.job_id}/results/out_service_url")
        value = result.get("value")
        if isinstance(value, dict):
            value = value.get("url")
        if not isinstance(value, str) or not value:
            raise CacheError(f"The server's job {self.job_id} names no out_service_url.")
        folder = value.split("?", 1)[0].rstrip("/")
        listing = self.client.json_at(f"{folder}?f=json", f"the output folder of job "
                                      f"{self.job_id}")
        for entry in listing.get("files") or []:
            name = entry.get("name", "") if isinstance(entry, dict) else str(entry)
            if name.lower().endswith(PACKAGE_SUFFIXES):
                return f"{folder}/{name}"
        raise CacheError(f"The output folder of the server's job {self.job_id} holds no tile "
                         "package (.tpk or .tpkx).")

    def _download(self, url: str, folder: Path,
                  progress: Callable[[int, Optional[int]], None]) -> Path:
        """The package, written to `folder` in Range parts; a dropped part is asked again
        from where it stopped."""
        name = Path(urlsplit(url).path).name
        path = folder / f"{self.job_id}-{name}"
        total: Optional[int] = None
        transport = self.client.transport
        failures = 0
        with open(path, "wb") as out:
            while True:
                if self.is_canceled():
                    raise ExportCanceled("The export was stopped.")
                done = out.tell()
                headers = {**self.client.headers,
                           "Range": f"bytes={done}-{done + PACKAGE_PART - 1}"}
                response = transport.result(transport.submit(
                    transport.get, url, headers, PACKAGE_LIMITS))
                with self.client.count_lock:
                    self.client.requests += 1
                if response.refused:
                    raise CacheError(
                        f"The download of the package of job {self.job_id} was stopped: "
                        f"{response.refused} in one answer (the server ignores HTTP Range "
                        "requests, so a package this large cannot be downloaded in parts).")
                body = _package_bytes(response, done, self.job_id)
                if done and response.status == 200:  # the server ignored Range: start over
                    out.seek(0)
                    out.truncate()
                out.write(body)
                total = _total_length(response) or total
                progress(out.tell(), total)
                if total is not None and out.tell() >= total or (
                        total is None and not response.error):
                    return path
                if response.error or not body:
                    failures += 1
                    if failures == DOWNLOAD_ATTEMPTS:
                        raise CacheError(
                            f"The package of the server's job {self.job_id} could not be "
                            f"downloaded whole: {DOWNLOAD_ATTEMPTS} requests failed.")
                    LOG.info("The download of job %s's package stopped at %d of %s bytes (%s):"
                             " resuming.", self.job_id, out.tell(), total,
                             response.error or "short")


def _package_bytes(response: HttpResponse, done: int, job_id: str) -> bytes:
    """The bytes of a package download, or a CacheError for an answer that is not the file."""
    if response.status not in (200, 206):
        if response.status is None:
            return b""  # no answer (a dropped connection): tried again, from where it stopped
        raise CacheError(f"The download of the package of job {job_id} was refused: HTTP "
                         f"{response.status}.")
    body = response.body
    offset = 0 if response.status == 200 else done
    if offset == 0 and body[:4] != ZIP_MAGIC:
        reason = "it is not a tile package"
        if body[:1] == b"{":
            try:
                error = json.loads(body).get("error", {})
                reason = f"error {error.get('code')}: {error.get('message')}"
            except (ValueError, AttributeError):
                pass
        raise CacheError(f"The download of the package of job {job_id} did not give the "
                         f"file ({reason}).")
    return body


def _total_length(response: HttpResponse) -> Optional[int]:
    whole = response.headers.get("content-range", "").rpartition("/")[2]
    if whole.isdigit():
        return int(whole)
    length = response.headers.get("content-length", "")
    return int(length) if response.status == 200 and length.isdigit() else None


def _errors(answer: dict) -> list[str]:
    messages = answer.get("messages") if isinstance(answer.get("messages"), list) else []
    return [str(m.get("description")) for m in messages
            if isinstance(m, dict) and "Error" in str(m.get("type", ""))]
