"""A small OpenAI-compatible ``/v1/completions`` server that returns prompt log-probabilities.

Neither vLLM nor a llama.cpp server can run in CI here, so this loopback server answers
``echo=true, logprobs=N`` the way vLLM does, from a transformers model: ``choices[0].logprobs``
holds ``tokens`` (each token's decoded text), ``token_logprobs`` (``null`` for the first token),
``text_offset`` (running sum of token text lengths, so a prepended BOS shifts every offset, as in
vLLM) and ``top_logprobs``; the prompt tokens are followed by one greedy token; ``usage`` counts
both. With ``prepend_bos`` the server puts BOS before the prompt (vLLM with Llama tokenizers).
It exists to check the HTTP backend's log-likelihood path against in-process scores.
"""
from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class EchoLogprobServer:
    def __init__(self, model, tokenizer, *, name: str = "m", prepend_bos: bool = False):
        self.model, self.tok, self.name, self.prepend_bos = model, tokenizer, name, prepend_bos
        self._lock = threading.Lock()
        srv = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers.get("content-length") or 0)) or b"{}")
                if self.path != "/v1/completions":
                    status, out = 404, {"error": {"message": f"no route {self.path}"}}
                elif body.get("model") != srv.name:
                    status, out = 404, {"error": {"message": f"model {body.get('model')!r} not found"}}
                else:
                    with srv._lock:
                        status, out = 200, srv.complete(body)
                data = json.dumps(out).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/v1"

    def complete(self, body: dict) -> dict:
        import torch

        ids = self.tok(body["prompt"], add_special_tokens=True)["input_ids"]
        if self.prepend_bos:
            ids = [self.tok.bos_token_id] + ids
        with torch.inference_mode():
            logits = self.model(input_ids=torch.tensor([ids])).logits[0].float()
        lp = torch.log_softmax(logits, -1)
        nxt = int(lp[-1].argmax())
        all_ids = ids + [nxt]
        tokens = [self.tok.decode([i]) for i in all_ids]
        token_lps: list = [None] + [float(lp[k - 1, all_ids[k]]) for k in range(1, len(all_ids))]
        offsets, pos = [], 0
        for t in tokens:
            offsets.append(pos)
            pos += len(t)
        top = [None] + [{tokens[k]: token_lps[k]} for k in range(1, len(all_ids))]
        return {
            "id": "cmpl-echo", "object": "text_completion", "model": self.name,
            "choices": [{"index": 0, "text": "".join(tokens), "finish_reason": "length",
                         "logprobs": {"tokens": tokens, "token_logprobs": token_lps, "text_offset": offsets,
                                      "top_logprobs": top}}],
            "usage": {"prompt_tokens": len(ids), "completion_tokens": 1, "total_tokens": len(ids) + 1},
        }

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()
