"""The demo's app: a small web app with the commonest leak there is, a cache that is never
emptied. Every page it renders is kept, so its memory grows with every request, as the
memory of a long-running Unicorn or gunicorn worker creeps up over days. Standard library
only, so that it runs wherever python3 does.

    PORT=5000 python3 app.py

    GET /      renders a page of PAGE_KB KiB (default 256), keeps it for ever, and answers
               how many pages this process holds
    GET /up    200 "ok", for health checks
"""

import itertools
import os
import signal
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

PAGE_KB = int(os.environ.get("PAGE_KB") or 256)

# The leak: rendered pages by request number, never evicted.
CACHE = {}
REQUESTS = itertools.count(1)


def render(number):
    row = f"<tr><td>{number}</td><td>{'x' * 100}</td></tr>\n".encode()
    return row * (PAGE_KB * 1024 // len(row) + 1)


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "leaky/1"
    # Buffered: headers and body leave in one write when the handler returns, so that a
    # kept-alive client never waits on a delayed ACK between the two.
    wbufsize = 64 * 1024

    def log_message(self, format, *args):
        pass

    def do_GET(self):
        if self.path == "/up":
            return self.reply(b"ok\n")
        if self.path != "/":
            return self.reply(b"not found\n", 404)
        number = next(REQUESTS)
        CACHE[number] = render(number)
        held = len(CACHE) * PAGE_KB // 1024
        self.reply(f"page {number} rendered; pid {os.getpid()} holds {held} MB of pages\n".encode())

    def reply(self, body, status=200):
        self.send_response(status)
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


class Server(ThreadingHTTPServer):
    daemon_threads = True


def main():
    port = os.environ.get("PORT")
    if not port:
        sys.exit("app.py: PORT is not set")
    signal.signal(signal.SIGTERM, lambda *_: os._exit(0))
    server = Server(("127.0.0.1", int(port)), Handler)
    print(f"leaky app: pid {os.getpid()} listening on 127.0.0.1:{port}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
