"""A small HTTP load generator on threads, standard library only, that counts every
request exactly: a request succeeded when it got a 200 with its whole body, and failed
otherwise (another status, a refused or reset connection, a timeout).

Each thread keeps one keep-alive connection and opens a new one after any failure. With a
rate, the threads share it and each keeps to its own schedule, so that two servers given
the same rate get the same requests whatever their speed (a thread that falls behind
catches up); without one, each thread sends its next request as soon as the last is answered.
"""

import collections
import http.client
import threading
import time


class Load:
    def __init__(self, port, path, threads, rate=None, timeout=30.0):
        self.port, self.path, self.threads, self.rate, self.timeout = (
            port,
            path,
            threads,
            rate,
            timeout,
        )
        self.ok = 0
        self.failed = 0
        self.why = collections.Counter()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._workers = []

    def start(self):
        for i in range(self.threads):
            t = threading.Thread(target=self._run, args=(i,), daemon=True)
            t.start()
            self._workers.append(t)
        return self

    def stop(self):
        self._stop.set()
        for t in self._workers:
            # A request in flight ends within the timeout.
            t.join(self.timeout + 5)
        return self

    def _count(self, ok, why=None):
        with self._lock:
            if ok:
                self.ok += 1
            else:
                self.failed += 1
                self.why[why] += 1

    def _run(self, index):
        interval = self.threads / self.rate if self.rate else 0.0
        # Threads start spread over one interval, so a paced load is smooth.
        next_at = time.monotonic() + interval * index / max(self.threads, 1)
        conn = None
        while not self._stop.is_set():
            if interval:
                delay = next_at - time.monotonic()
                if delay > 0 and self._stop.wait(delay):
                    break
                next_at += interval
            if conn is None:
                conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=self.timeout)
            try:
                conn.request("GET", self.path)
                response = conn.getresponse()
                response.read()
                if response.status == 200:
                    self._count(True)
                else:
                    self._count(False, f"status {response.status}")
                if response.will_close:
                    conn.close()
                    conn = None
            except (OSError, http.client.HTTPException) as err:
                self._count(False, type(err).__name__)
                conn.close()
                conn = None
        if conn is not None:
            conn.close()
