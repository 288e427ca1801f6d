"""OpenAI-compatible HTTP backend: vLLM, llama.cpp, Ollama, ``transformers serve``, hosted APIs.

Model string ``openai:URL#MODEL``, e.g. ``openai:http://127.0.0.1:8000/v1#Qwen/Qwen2.5-7B-Instruct``.
``URL`` is the API base (``/v1`` is appended when the URL has no path); ``MODEL`` is the name the
server knows the model by (``GET URL/models`` lists them).

- ``generate`` -> ``POST /chat/completions`` (temperature, top_p, max_tokens, seed, stop).
- ``loglikelihood_choices``, ``continuation_lengths``, ``sequence_logprob``,
  ``next_token_logprobs`` -> ``POST /completions`` with ``echo=true, logprobs=1, max_tokens=1``:
  the server returns the log-probability of every prompt token. Only some servers do (vLLM,
  llama-cpp-python's server); the first scoring call probes the server once and raises
  :class:`CapabilityError` with one line when it does not.

Continuation tokens are found by character offsets, counted from the *end* of the echoed prompt
(so a BOS token the server prepends does not shift them): a prompt token belongs to the
continuation when it contains at least one character of it. Trailing whitespace of the context
moves to the continuation, as in the in-process backend (the usual ``" answer"`` token).

Requests run concurrently (``concurrency``, default 8) on one asyncio loop; 429, 5xx, timeouts and
dropped connections are retried with exponential backoff and full jitter, honouring
``Retry-After``. A server that was never reached fails fast ("cannot reach URL: connection
refused"); one that goes away mid-run is waited for (``max_retries``). Every public method is
synchronous. The API key is read from the environment variable named by ``api_key_env`` (default
``OPENAI_API_KEY``); it is sent as a bearer token and never logged, stored in a run config or shown
by ``repr``/``describe``.
"""
from __future__ import annotations

import asyncio
import email.utils
import ipaddress
import logging
import os
import random
import time
from dataclasses import dataclass
from typing import Any, Awaitable, Callable, Sequence
from urllib.parse import parse_qsl, urlsplit, urlunsplit

from ..errors import CapabilityError, UserError
from ..redaction import split_credentials
from ..registry import BACKENDS
from .base import Backend, GenerationRequest, GenerationResult

log = logging.getLogger(__name__)

RETRY_STATUS = {408, 409, 425, 429, 500, 502, 503, 504}
NO_LOGPROBS = ("server {url} does not return prompt log-probabilities; log-likelihood scoring needs "
               "vLLM or a llama.cpp server (llama-cpp-python) — use --mode generate with this server")

#: the log-probability canary: a counting sequence every real language model continues with confidence
CANARY_PROMPT = "1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23, 24,"
#: the least mean log-prob (nats per token) of the canary's second half; a real LM scores it near 0 (measured
#: in-process: SmolLM2-135M -0.031, Qwen2.5-Coder-1.5B -0.014, 43 tokens), chance over a 50k vocabulary is -10.8,
#: and the broken echo of llama-cpp-python's server gave about -9 to -11 per token (the issue's measurement)
CANARY_MIN_MEAN_LOGPROB = -2.0
_CANARY_VERDICTS: dict[tuple[str, str], str | None] = {}  # (base URL, model) -> failure or None (passed)
REFUSED = ("{url} returned prompt log-probabilities that fail a check ({why}); the numbers would be wrong. "
           "Use --mode generate with this server, or pass --backend-option trust_logprobs=true to score anyway "
           "(recorded in config.json)")


@dataclass
class _Span:
    """Scored continuation: per-token log-probs (None where the server gave none)."""

    logprobs: list[float | None]

    @property
    def total(self) -> float:
        return float(sum(x for x in self.logprobs if x is not None))

    @property
    def n(self) -> int:
        return len(self.logprobs)


class _Secret:
    """Holds the API key; its repr never shows it (so vars(), logs and tracebacks do not either)."""

    __slots__ = ("_value",)

    def __init__(self, value: Any):
        self._value = value

    def get(self) -> Any:
        return self._value

    def __repr__(self) -> str:
        return "<hidden>" if self._value else "<unset>"

    __str__ = __repr__


class _Failure(Exception):
    """A retryable failure of one HTTP attempt."""

    def __init__(self, kind: str, message: str, retry_after: float | None = None):
        super().__init__(message)
        self.kind = kind  # "connect" | "timeout" | "http" | "dropped"
        self.retry_after = retry_after


def _bool(v: Any) -> bool:
    if isinstance(v, str):
        return v.strip().lower() in ("1", "true", "yes", "on")
    return bool(v)


def _is_loopback(host: str | None) -> bool:
    if not host:
        return False
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _parse_retry_after(value: str | None) -> float | None:
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def _reason(e: BaseException) -> str:
    import errno

    chain, seen = [], set()
    cur: BaseException | None = e
    while cur is not None and id(cur) not in seen:  # httpx/anyio wrap the OSError that says why
        seen.add(id(cur))
        chain.append(cur)
        cur = cur.__cause__ or cur.__context__
    for c in chain:
        if isinstance(c, ConnectionRefusedError) or getattr(c, "errno", None) == errno.ECONNREFUSED:
            return "connection refused"
    text = " | ".join(str(c) for c in chain if str(c)) or type(e).__name__
    low = text.lower()
    if "refused" in low:
        return "connection refused"
    if "name or service not known" in low or "nodename nor servname" in low or "name resolution" in low:
        return "host name not found"
    if "reset" in low:
        return "connection reset"
    return text.splitlines()[0]


def _detail(resp) -> str:
    """The server's error message, one line, short."""
    try:
        body = resp.json()
    except ValueError:
        body = resp.text
    msg: Any = body
    if isinstance(body, dict):
        msg = body.get("error", body.get("detail", body.get("message", body)))
        if isinstance(msg, dict):
            msg = msg.get("message", msg)
    text = " ".join(str(msg).split())
    return text[:300]


@BACKENDS.register("openai")
class OpenAIBackend(Backend):
    """A model behind an OpenAI-compatible HTTP API."""

    def __init__(
        self,
        base_url: str,
        model: str,
        *,
        api_key_env: str = "OPENAI_API_KEY",
        concurrency: int = 8,
        max_retries: int = 8,
        startup_retries: int = 1,
        timeout: float = 300.0,
        connect_timeout: float = 10.0,
        backoff_base: float = 0.5,
        backoff_max: float = 30.0,
        chat: bool = True,
        prompt_logprobs: bool | None = None,
        trust_logprobs: bool = False,
    ):
        # credentials in the URL (user:password@, ?api_key=) are sent with every request and appear nowhere else
        public, auth, params = split_credentials(base_url)
        parts = urlsplit(public)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise UserError(f"not an http(s) URL: {public!r} (model string is openai:URL#MODEL)")
        public = urlunsplit((parts.scheme, parts.netloc, parts.path, "", ""))  # the query's other parameters
        if parts.path in ("", "/"):
            public = public.rstrip("/") + "/v1"
        self.base_url = public.rstrip("/")
        other = {k: v for k, v in parse_qsl(parts.query, keep_blank_values=True)}
        self._auth = _Secret(auth)  # type: ignore[arg-type]
        self._params = _Secret({**other, **params} or None)  # type: ignore[arg-type]
        self.model = model
        self.name = model
        self.model_type = "causal"
        self.api_key_env = api_key_env
        self._key = _Secret(os.environ.get(api_key_env) or None)  # never logged, described or repr'd
        self.concurrency = max(1, int(concurrency))
        self.max_retries = max(0, int(max_retries))
        self.startup_retries = max(0, int(startup_retries))
        self.timeout = float(timeout)
        self.connect_timeout = float(connect_timeout)
        self.backoff_base = float(backoff_base)
        self.backoff_max = float(backoff_max)
        self._chat = _bool(chat)
        self._prompt_logprobs = None if prompt_logprobs is None else _bool(prompt_logprobs)
        self.trust_logprobs = _bool(trust_logprobs)  # skip the canary (a user's explicit choice, in the identity)
        self._reached = False  # once the server answered, connection failures mean "down mid-run"
        self._trust_env = not _is_loopback(parts.hostname)  # no HTTP(S)_PROXY detour for loopback
        self._spans: dict[tuple[str, str], _Span] = {}  # memo: choices and lengths share one request
        self.counts = {"requests": 0, "retries": 0}

    @classmethod
    def from_spec(cls, target: str, **options: Any) -> "OpenAIBackend":
        url, sep, model = target.partition("#")
        if not sep or not model:
            raise UserError(f"model string openai:{target} names no model: use openai:URL#MODEL "
                            "(GET URL/models lists the server's models)")
        keys = ("api_key_env", "concurrency", "max_retries", "startup_retries", "timeout", "connect_timeout",
                "backoff_base", "backoff_max", "chat", "prompt_logprobs", "trust_logprobs")
        # device, dtype, batch_size etc. are for in-process backends; the server decides those
        return cls(url, model, **{k: v for k, v in options.items() if k in keys and v is not None})

    def __repr__(self) -> str:
        return f"OpenAIBackend({self.base_url!r}, model={self.model!r})"

    def stats(self) -> dict[str, Any]:
        return dict(self.counts)

    def describe(self) -> dict[str, Any]:
        out = {"backend": "openai", "model": self.model, "base_url": self.base_url, "model_type": "causal"}
        if self.trust_logprobs:
            out["trust_logprobs"] = True
        return out

    # -- capabilities ---------------------------------------------------------------------------
    @property
    def can_chat(self) -> bool:
        return self._chat

    @property
    def can_score(self) -> bool:
        if self._prompt_logprobs is None:
            try:
                self._run(lambda client: self._probe(client))
            except CapabilityError:
                self._prompt_logprobs = False
        return bool(self._prompt_logprobs)

    # -- event loop and HTTP --------------------------------------------------------------------
    def _headers(self) -> dict[str, str]:
        h = {"Content-Type": "application/json"}
        key = self._key.get()
        if key:
            h["Authorization"] = f"Bearer {key}"
        return h

    def _run(self, job: Callable[[Any], Awaitable[Any]]) -> Any:
        """Run ``job(client)`` to completion on a fresh loop; works inside a running loop too."""
        import httpx

        async def main():
            limits = httpx.Limits(max_connections=self.concurrency, max_keepalive_connections=self.concurrency)
            timeout = httpx.Timeout(self.timeout, connect=self.connect_timeout)
            async with httpx.AsyncClient(timeout=timeout, limits=limits, trust_env=self._trust_env,
                                         auth=self._auth.get(), params=self._params.get()) as client:
                return await job(client)

        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return asyncio.run(main())
        # called from async code (a notebook): run on a private loop in a worker thread
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(1) as ex:
            return ex.submit(asyncio.run, main()).result()

    def _map(self, endpoint: str, payloads: list[dict]) -> list[dict]:
        """POST every payload (bounded concurrency, retries); responses in input order."""
        if not payloads:
            return []

        async def job(client):
            sem = asyncio.Semaphore(self.concurrency)
            return await asyncio.gather(*(self._post(client, sem, endpoint, p) for p in payloads))

        return self._run(job)

    async def _attempt(self, client, sem: asyncio.Semaphore, url: str, payload: dict) -> dict:
        import httpx

        async with sem:
            self.counts["requests"] += 1
            try:
                resp = await client.post(url, json=payload, headers=self._headers())
            except httpx.ConnectError as e:
                raise _Failure("connect", _reason(e)) from None
            except httpx.TimeoutException:
                raise _Failure("timeout", f"no answer within {self.timeout:g}s") from None
            except httpx.TransportError as e:  # dropped mid-response (server killed, proxy reset)
                raise _Failure("dropped", _reason(e)) from None
        self._reached = True
        if resp.status_code == 200:
            try:
                return resp.json()
            except ValueError:
                raise _Failure("http", "HTTP 200 with a body that is not JSON") from None
        detail = _detail(resp)
        if resp.status_code in RETRY_STATUS or resp.status_code >= 500:
            raise _Failure("http", f"HTTP {resp.status_code} {detail}".strip(),
                           _parse_retry_after(resp.headers.get("retry-after")))
        if resp.status_code in (401, 403):
            raise UserError(f"{self.base_url} refused the request (HTTP {resp.status_code}): {detail}; "
                            f"is the API key in ${self.api_key_env} right?")
        raise _HTTPError(resp.status_code, f"{url} answered HTTP {resp.status_code}: {detail}")

    async def _post(self, client, sem: asyncio.Semaphore, endpoint: str, payload: dict) -> dict:
        url = self.base_url + endpoint
        attempt = 0
        while True:
            try:
                return await self._attempt(client, sem, url, payload)
            except _Failure as f:
                # a server never reached is probably not there: fail fast rather than wait minutes
                limit = self.max_retries if (self._reached or f.kind != "connect") else self.startup_retries
                if attempt >= limit:
                    raise self._final_error(f, attempt + 1) from None
                delay = min(self.backoff_max, self.backoff_base * 2 ** attempt) * random.uniform(0.5, 1.0)
                if f.retry_after is not None:
                    delay = min(max(f.retry_after, delay), max(self.backoff_max, 60.0))
                attempt += 1
                self.counts["retries"] += 1
                log.warning("%s%s: %s; retry %d/%d in %.1fs", self.base_url, endpoint, f, attempt, limit, delay)
                await asyncio.sleep(delay)

    def _final_error(self, f: _Failure, attempts: int) -> UserError:
        tries = f" ({attempts} attempts)" if attempts > 1 else ""
        if f.kind == "connect":
            return UserError(f"cannot reach {self.base_url}: {f}{tries}")
        if f.kind == "timeout":
            return UserError(f"{self.base_url} gave no answer within {self.timeout:g}s{tries}; "
                             "raise the timeout option or lower concurrency")
        return UserError(f"{self.base_url} kept failing: {f}{tries}")

    # -- generation -----------------------------------------------------------------------------
    def _chat_payload(self, r: GenerationRequest) -> dict:
        p: dict[str, Any] = {"model": self.model, "messages": [dict(m) for m in r.messages],
                             "max_tokens": int(r.max_new_tokens), "temperature": float(r.temperature)}
        if r.temperature and r.top_p != 1.0:
            p["top_p"] = float(r.top_p)
        if r.seed is not None:
            p["seed"] = int(r.seed)
        if r.stop:
            p["stop"] = list(r.stop)
        return p

    def generate(self, requests: Sequence[GenerationRequest]) -> list[GenerationResult]:
        if not self._chat:
            raise CapabilityError(f"{self.name} was configured without chat (chat=false)")
        try:
            responses = self._map("/chat/completions", [self._chat_payload(r) for r in requests])
        except _HTTPError as e:
            raise UserError(str(e)) from None
        out = []
        for r, resp in zip(requests, responses):
            try:
                choice = resp["choices"][0]
                text = (choice.get("message") or {}).get("content") or ""
            except (KeyError, IndexError, TypeError):
                raise UserError(f"{self.base_url}/chat/completions answered without choices[0].message") from None
            for s in r.stop:  # servers differ on whether they trim stop strings
                if s and s in text:
                    text = text[: text.index(s)]
            usage = resp.get("usage") or {}
            out.append(GenerationResult(text=text.strip(), prompt_tokens=int(usage.get("prompt_tokens") or 0),
                                        completion_tokens=int(usage.get("completion_tokens") or 0)))
        return out

    # -- prompt log-probabilities ---------------------------------------------------------------
    def _score_payload(self, prompt: str) -> dict:
        return {"model": self.model, "prompt": prompt, "max_tokens": 1, "temperature": 0.0,
                "echo": True, "logprobs": 1}

    def _no_logprobs(self) -> CapabilityError:
        self._prompt_logprobs = False
        return CapabilityError(NO_LOGPROBS.format(url=self.base_url))

    async def _probe(self, client) -> None:
        """One request: does the server return prompt log-probabilities, and do they mean anything (the canary,
        :func:`canary_failure`)? The verdict is kept per URL and model for the process."""
        key = (self.base_url, self.model)
        if key in _CANARY_VERDICTS and not self.trust_logprobs:
            self._refuse_if(_CANARY_VERDICTS[key])
            self._prompt_logprobs = True
            return
        sem = asyncio.Semaphore(1)
        payload = {**self._score_payload(CANARY_PROMPT), "logprobs": 5}
        try:
            resp = await self._post(client, sem, "/completions", payload)
        except _HTTPError as e:
            if e.status in (400, 404, 405, 422, 501):  # no /completions, or echo/logprobs refused
                raise self._no_logprobs() from None
            raise UserError(str(e)) from None
        why = canary_failure(resp, CANARY_PROMPT)
        if why is None or not why.startswith("generated token only"):
            self._prompt_tokens(resp)  # raises CapabilityError when the answer holds no prompt log-probs
        if not self.trust_logprobs:
            _CANARY_VERDICTS[key] = why
            self._refuse_if(why)
        self._prompt_logprobs = True

    def _refuse_if(self, why: str | None) -> None:
        if why is not None:
            self._prompt_logprobs = False
            self.why_no_scores = REFUSED.format(url=self.base_url, why=why)
            raise CapabilityError(self.why_no_scores)

    def _prompt_tokens(self, resp: dict) -> tuple[list[str], list[float | None], list[int]]:
        """(tokens, log-probs, end offsets) of the echoed prompt, without the generated token."""
        try:
            lp = resp["choices"][0].get("logprobs") or {}
        except (KeyError, IndexError, TypeError, AttributeError):
            lp = {}
        tokens, lps = lp.get("tokens"), lp.get("token_logprobs")
        if not tokens or not lps or len(tokens) != len(lps) or all(x is None for x in lps[1:]):
            raise self._no_logprobs()
        offs = lp.get("text_offset")
        if not offs or len(offs) != len(tokens):
            offs, pos = [], 0
            for t in tokens:
                offs.append(pos)
                pos += len(t)
        usage = resp.get("usage") or {}
        n = usage.get("prompt_tokens")
        if not isinstance(n, int) or not 0 < n <= len(tokens):
            n = len(tokens) - 1 if len(tokens) > 1 else len(tokens)  # max_tokens=1: one generated
        ends = [offs[i + 1] if i + 1 < len(tokens) else offs[i] + len(tokens[i]) for i in range(n)]
        return tokens[:n], [None if x is None else float(x) for x in lps[:n]], ends

    def _require_scoring(self) -> None:
        if self._prompt_logprobs is False:
            raise CapabilityError(self.why_no_scores or NO_LOGPROBS.format(url=self.base_url))
        if self._prompt_logprobs is None:
            self._run(lambda client: self._probe(client))

    def _score_texts(self, prompts: list[str]) -> list[tuple[list[float | None], list[int]]]:
        self._require_scoring()
        try:
            responses = self._map("/completions", [self._score_payload(p) for p in prompts])
        except _HTTPError as e:
            raise UserError(str(e)) from None
        out = []
        for resp in responses:
            _, lps, ends = self._prompt_tokens(resp)
            out.append((lps, ends))
        return out

    def _spans_for(self, pairs: list[tuple[str, str]]) -> list[_Span]:
        todo = sorted({p for p in pairs if p not in self._spans})
        if todo:
            prompts, tails = [], []
            for context, cont in todo:
                n_space = len(context) - len(context.rstrip())
                if n_space:
                    context, cont = context[:-n_space], context[-n_space:] + cont
                if not cont:
                    raise UserError("empty continuation after the context")
                prompts.append(context + cont)
                tails.append(len(cont))
            if len(self._spans) > 200_000:
                self._spans.clear()
            for key, tail, (lps, ends) in zip(todo, tails, self._score_texts(prompts)):
                boundary = ends[-1] - tail if ends else 0
                span = [lp for lp, e in zip(lps, ends) if e > boundary]
                if not span:
                    raise UserError(f"continuation {key[1]!r} maps to no token in the server's answer")
                if span[0] is None:
                    log.warning("first continuation token of %r has no log-prob (empty context?)", key[1])
                self._spans[key] = _Span(span)
        return [self._spans[p] for p in pairs]

    def loglikelihood_choices(self, requests: Sequence[tuple[str, Sequence[str]]]) -> list[list[float]]:
        pairs = [(ctx, c) for ctx, conts in requests for c in conts]
        spans = iter(self._spans_for(pairs))
        return [[next(spans).total for _ in conts] for _, conts in requests]

    def continuation_lengths(self, requests: Sequence[tuple[str, Sequence[str]]]) -> list[list[int]]:
        pairs = [(ctx, c) for ctx, conts in requests for c in conts]
        spans = iter(self._spans_for(pairs))
        return [[next(spans).n for _ in conts] for _, conts in requests]

    def next_token_logprobs(self, contexts: Sequence[str], candidates: Sequence[Sequence[str]]) -> list[list[float]]:
        pairs = [(ctx, c) for ctx, cands in zip(contexts, candidates) for c in cands]
        spans = iter(self._spans_for(pairs))
        return [[float(next(spans).logprobs[0] or 0.0) for _ in cands] for cands in candidates]

    def sequence_logprob(self, texts: Sequence[str]) -> list[tuple[float, int]]:
        """(sum, count) over the text's tokens that the server scored (all but an unconditioned
        first token; servers that prepend BOS score every token)."""
        out = []
        for lps, _ in self._score_texts(list(texts)):
            scored = [x for x in lps if x is not None]
            out.append((float(sum(scored)), len(scored)))
        return out


class _HTTPError(Exception):
    """A non-retryable HTTP answer (4xx); callers turn it into a one-line UserError."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


def canary_failure(resp: dict, prompt: str) -> str | None:
    """Which check an echoed ``/completions`` answer to ``prompt`` (max_tokens=1, temperature 0, top log-probs)
    fails, with its numbers; None when it passes. The checks, against the two known server bugs:

    * **generated token only**: log-probs for the generated token and none for the prompt (llama-server,
      llama.cpp #27174), which would otherwise pass as a prompt without scores;
    * **alignment**: the echoed tokens spell the prompt; where ``top_logprobs`` are given, each token's log-prob is
      its own entry there, and the greedy generated token's is the top value (log-probs that belong to the next
      position, llama-cpp-python #1983, fail this);
    * **predictable tail**: the mean log-prob of the prompt's second half is at least ``CANARY_MIN_MEAN_LOGPROB``.
    """
    try:
        lp = resp["choices"][0].get("logprobs") or {}
    except (KeyError, IndexError, TypeError, AttributeError):
        return None  # no log-probs at all: the caller's own check says so
    tokens, lps, top = lp.get("tokens") or [], lp.get("token_logprobs") or [], lp.get("top_logprobs")
    if not tokens or not lps:
        return None  # no log-probs at all: the caller's own check says so
    n = (resp.get("usage") or {}).get("prompt_tokens")
    n = n if isinstance(n, int) and 0 < n <= len(tokens) else max(len(tokens) - 1, 0)
    if len(tokens) <= 1 or (lps and all(x is None for x in lps[:n]) and any(x is not None for x in lps[n:])):
        return f"generated token only: {len(tokens)} token(s) echoed, none of the prompt's scored"
    text = "".join(tokens[:n])
    if prompt not in text:
        return f"the echoed tokens do not spell the prompt (got {text[-40:]!r})"
    if isinstance(top, list) and len(top) == len(tokens) and any(isinstance(t, dict) for t in top):
        bad = [k for k in range(1, len(tokens)) if isinstance(top[k], dict) and tokens[k] in top[k]
               and lps[k] is not None and abs(float(top[k][tokens[k]]) - float(lps[k])) > 1e-3]
        if bad:
            k = bad[0]
            return (f"misaligned: token {k} ({tokens[k]!r}) has log-prob {float(lps[k]):.3f} but {float(top[k][tokens[k]]):.3f}"
                    " in its own top_logprobs (log-probs shifted by a position?)")
        last, got = top[-1], lps[-1] if len(lps) == len(tokens) else None
        if not isinstance(last, dict) or not last or got is None:
            return ("misaligned: the greedy generated token has no log-prob or top_logprobs at its own position "
                    "(log-probs shifted by a position?)")
        best = max(float(v) for v in last.values())
        if abs(float(got) - best) > 1e-3:
            return (f"misaligned: the greedy generated token has log-prob {float(got):.3f} but the top value at its "
                    f"position is {best:.3f} (log-probs shifted by a position?)")
    start = len(text) - len(prompt) + len(prompt) // 2
    pos, tail = 0, []
    for t, x in zip(tokens[:n], lps[:n]):
        pos += len(t)
        if pos > start and x is not None:
            tail.append(float(x))
    if not tail:
        return "no log-prob for the prompt's second half"
    mean = sum(tail) / len(tail)
    if mean < CANARY_MIN_MEAN_LOGPROB:
        return (f"implausible: a counting sequence's second half scores {mean:.2f} nats per token on average "
                f"(a real language model: above {CANARY_MIN_MEAN_LOGPROB:g}; chance: about -10)")
    return None
