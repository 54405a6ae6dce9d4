"""``serve``'s courier: the webhooks' outbox sent while the server runs, not only at the next ingest.

Hits are recorded as pending before anything is sent (:mod:`ftfsearch.watch`); an ingest's own courier
sends them once, and what a hook that was down did not take waited for the next ingest or a cron'd
``watch deliver``. A ``serve`` that can write the store sends that outbox every ``every_s`` seconds
(one try a round: the rounds are the retries), so a receiver that comes back gets its hits within a
round. Several servers on one Qdrant collection may each send a hit: delivery is at-least-once, and a
receiver drops repeats by each feature's ``hit_id``.
"""

from __future__ import annotations

import logging
import threading

from ftfsearch.commands.base import Commands
from ftfsearch.commands.requests import WatchDeliverRequest
from ftfsearch.errors import FtfError

log = logging.getLogger(__name__)


class Courier:
    """A daemon thread that runs ``watch deliver`` every ``every_s`` seconds until :meth:`stop`."""

    def __init__(self, commands: Commands, every_s: float, timeout_s: float = 5.0) -> None:
        self.commands = commands
        self.every_s = every_s
        self.request = WatchDeliverRequest(timeout=timeout_s, tries=1)
        self._stop = threading.Event()
        self._failing: dict[str, str] = {}
        """The errors last logged per watch: a hook that stays down is logged once, not every round."""
        self._thread = threading.Thread(target=self._run, name="ftf-courier", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=self.request.timeout + 5)

    def round(self) -> None:
        """One delivery round; a failure is logged, never raised (the server keeps serving)."""
        try:
            report = self.commands.watch_deliver(self.request)
        except FtfError as exc:
            log.warning("webhook delivery: %s", exc)
            return
        except Exception:  # a bug must not end the thread: logged, and the next round tries again
            log.exception("webhook delivery failed")
            return
        if report.delivered:
            log.info("webhook delivery: %d pending hits sent", report.delivered)
        for watch, error in report.errors.items():
            if self._failing.get(watch) != error:
                log.warning("webhook of watch %r: %s; %d hits stay pending, sent again every %g s",
                            watch, error, report.failed, self.every_s)
        self._failing = dict(report.errors)

    def _run(self) -> None:
        while not self._stop.wait(self.every_s):
            self.round()
