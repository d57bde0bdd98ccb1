"""Serve an exported site from this machine: ``illustrated-sd serve SITE``.

A browser will not run the page from ``file://`` (it refuses module workers and ``fetch`` there), so even offline the
folder needs a web server; any static one does (``python -m http.server``). This one also sends the two headers that
make the page *cross-origin isolated*, which lets onnxruntime-web run on several threads (SharedArrayBuffer):

    Cross-Origin-Opener-Policy: same-origin
    Cross-Origin-Embedder-Policy: require-corp

(docs/web.md measures the difference: 4.1 s per 25-step image on one thread, 3.1 s on two.)
"""

import functools
import http.server
import threading
from pathlib import Path

ISOLATING = {"Cross-Origin-Opener-Policy": "same-origin", "Cross-Origin-Embedder-Policy": "require-corp"}


def site_server(folder: str | Path, port: int = 0, isolated: bool = True, host: str = "127.0.0.1",
                background: bool = False) -> tuple[http.server.ThreadingHTTPServer, str]:
    """A static server of ``folder`` on ``host:port`` (0: a free port) and its address. ``isolated``: send the headers
    above (several threads in the page). ``background``: already serving, from a daemon thread (tests, benchmarks);
    else call ``serve_forever()`` on it. Requests are not logged."""
    headers = ISOLATING if isolated else {}

    class Handler(http.server.SimpleHTTPRequestHandler):
        def end_headers(self):
            for name, value in headers.items():
                self.send_header(name, value)
            super().end_headers()

        def log_message(self, *args):
            pass

    httpd = http.server.ThreadingHTTPServer((host, port), functools.partial(Handler, directory=str(folder)))
    if background:
        threading.Thread(target=httpd.serve_forever, daemon=True).start()
    return httpd, f"http://{host}:{httpd.server_address[1]}/"
