"""A loopback HTTP proxy that injects scripted failures, then passes requests through.

``FaultProxy(upstream).faults = [429, 500]`` answers the next two requests with those statuses
(429 carries ``Retry-After``) and forwards the rest. Every request is recorded: path, JSON body,
the status the client got and the Authorization header (to check the API key is sent).
"""
from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx


class FaultProxy:
    def __init__(self, upstream: str, retry_after: str = "0.2"):
        self.upstream = upstream.rstrip("/")  # e.g. http://127.0.0.1:8000 (no /v1)
        self.retry_after = retry_after
        self.faults: list[int] = []
        self.log: list[dict] = []
        self._lock = threading.Lock()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # quiet
                pass

            def do_POST(self):
                n = int(self.headers.get("content-length") or 0)
                raw = self.rfile.read(n)
                with proxy._lock:
                    fault = proxy.faults.pop(0) if proxy.faults else None
                entry = {"path": self.path, "body": json.loads(raw or b"{}"),
                         "auth": self.headers.get("authorization")}
                if fault is not None:
                    body = json.dumps({"error": {"message": f"injected {fault}"}}).encode()
                    self.send_response(fault)
                    if fault == 429:
                        self.send_header("Retry-After", proxy.retry_after)
                    status = fault
                else:
                    try:
                        r = httpx.post(proxy.upstream + self.path, content=raw, timeout=300, trust_env=False,
                                       headers={"content-type": "application/json"})
                        status, body = r.status_code, r.content
                    except httpx.HTTPError:
                        status, body = 502, b'{"error": {"message": "upstream unreachable"}}'
                    self.send_response(status)
                entry["status"] = status
                with proxy._lock:
                    proxy.log.append(entry)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()
