"""Credentials in a model URL (user:password@ and ?api_key=) are sent to the server and appear nowhere else:
not in the run folder, the response cache, stdout/stderr or the report; two runs that differ only in the
secret share their identity."""
from __future__ import annotations

import base64
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest

from fairdistill.redaction import redact_urls, split_credentials

S1, S2, S3 = "hunter2-userinfo-SECRET", "qk-SECRET-in-query", "another-SECRET-9"


def test_redact_urls_by_hand():
    assert redact_urls(f"openai:http://bob:{S1}@127.0.0.1:8000/v1?api_key={S2}&x=1#m") == \
        "openai:http://127.0.0.1:8000/v1?x=1#m"
    assert redact_urls({"cmd": [f"--model https://h/v1?token={S2}"], "n": 3}) == {"cmd": ["--model https://h/v1"], "n": 3}
    assert redact_urls("no url here: key=abc") == "no url here: key=abc"
    public, auth, params = split_credentials(f"http://bob:{S1}@h:1/v1?key={S2}&keep=yes")
    assert public == "http://h:1/v1?keep=yes" and auth == ("bob", S1) and params == {"key": S2}


class ChatServer:
    """Loopback OpenAI-compatible chat server: always answers "A"; records each request's auth and query."""

    def __init__(self):
        self.seen: list[dict] = []
        srv = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def do_POST(self):
                self.rfile.read(int(self.headers.get("content-length") or 0))
                srv.seen.append({"auth": self.headers.get("authorization"), "query": parse_qs(urlsplit(self.path).query),
                                 "path": urlsplit(self.path).path})
                data = json.dumps({"choices": [{"message": {"role": "assistant", "content": "A"}}],
                                   "usage": {"prompt_tokens": 10, "completion_tokens": 1}}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def url(self, user: str, password: str, key: str) -> str:
        return f"http://{user}:{password}@127.0.0.1:{self.server.server_address[1]}/v1?api_key={key}"


@pytest.fixture()
def chat_server():
    s = ChatServer()
    yield s
    s.server.shutdown()


def test_a_run_through_a_url_with_credentials_keeps_them_out_of_everything(chat_server, bbq_dir, tmp_path, capsys):
    from fairdistill.cli import main
    from fairdistill.report import build_report
    from fairdistill.runner import RunSpec

    model = f"openai:{chat_server.url('bob', S1, S2)}#m"
    out = tmp_path / "run"
    rc = main(["eval", "bbq", "--model", model, "--mode", "generate", "--categories", "Age", "--limit", "2",
               "--data", str(bbq_dir), "--out", str(out), "--cache", str(tmp_path / "cache.sqlite"), "--no-progress"])
    assert rc in (0, None)
    printed = capsys.readouterr()
    # the server got both credentials on every request
    assert chat_server.seen and all(s["path"] == "/v1/chat/completions" for s in chat_server.seen)
    assert all(s["auth"] == "Basic " + base64.b64encode(f"bob:{S1}".encode()).decode() for s in chat_server.seen)
    assert all(s["query"].get("api_key") == [S2] for s in chat_server.seen)
    report = build_report([out], tmp_path / "report.html")
    stored = [p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()]
    everything = b"\n".join(stored) + (printed.out + printed.err).encode()
    for secret in (S1, S2):
        assert secret.encode() not in everything, secret
    assert report.exists() and "127.0.0.1" in json.loads((out / "config.json").read_text())["model_spec"]
    # the identity (folder name hash, cache key) does not depend on the secret
    other = f"openai:{chat_server.url('eve', S3, S3)}#m"
    a = RunSpec(model=model, benchmark="bbq", options={"categories": "Age"})
    b = RunSpec(model=other, benchmark="bbq", options={"categories": "Age"})
    bench = a.build_benchmark()
    assert a.default_out(bench) == b.default_out(bench) and S3 not in a.model_dump_json() + b.model_dump_json()
    n = len(chat_server.seen)
    rc = main(["eval", "bbq", "--model", other, "--mode", "generate", "--categories", "Age", "--limit", "2",
               "--data", str(bbq_dir), "--out", str(tmp_path / "run2"), "--cache", str(tmp_path / "cache.sqlite"),
               "--no-progress"])
    assert len(chat_server.seen) == n  # answered from the cache: the same identity
    assert S3.encode() not in b"\n".join(p.read_bytes() for p in tmp_path.rglob("*") if p.is_file())
