"""Response cache for any backend (cf. lm-evaluation-harness's ``CachingLM``).

``CachingBackend(backend, path)`` answers each request from an sqlite file when it has seen the
same request for the same model before, and asks the wrapped backend only for the rest (in one
batch, so batching and concurrency still apply). Reruns, resumed runs and a second method over
the same questions do not re-query the model.

The key of an entry is the SHA-256 of (model identity, request kind, request payload) as canonical
JSON; the model identity is ``backend.describe()`` at the time of the request (never a secret; it names
any intervention attached to the model), plus the attached intervention's ``fingerprint()`` where it has
one (a projection's basis: answers made with two estimates never share an entry). Sampled generation requests
(temperature > 0) without a seed are not cached: each call must draw anew. Entries are committed
after every call, so a crash loses at most the call in flight.

Each new entry also records what computed it (table ``computed_on``: library versions and the CPU's
bf16 units, see ``runner.environment``), and ``answered_by`` counts this instance's calls by that
environment, cache hits included: a run resumed on another kind of machine is then known to mix
two machines' answers (near-ties can round either way between them).
"""
from __future__ import annotations

import hashlib
import json
import sqlite3
import threading
import time
from collections import Counter
from dataclasses import asdict
from pathlib import Path
from typing import Any, Callable, Sequence

from .base import Backend, GenerationRequest, GenerationResult


def _key(identity: dict, kind: str, payload: Any) -> str:
    blob = json.dumps([identity, kind, payload], sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()


class CachingBackend(Backend):
    """Wraps ``backend``; same interface, answers from ``path`` (sqlite) when it can."""

    def __init__(self, backend: Backend, path: str | Path):
        self.backend = backend
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(str(self.path), check_same_thread=False, timeout=60)
        for attempt in range(20):  # processes of one sharded run open the file at the same moment
            try:
                self._db.execute("PRAGMA journal_mode=WAL")
                self._db.execute("CREATE TABLE IF NOT EXISTS responses (key TEXT PRIMARY KEY, kind TEXT, value TEXT)")
                # a table of its own, not a column: processes of an older release may write the same file
                self._db.execute("CREATE TABLE IF NOT EXISTS computed_on (key TEXT PRIMARY KEY, environment TEXT)")
                self._db.commit()
                break
            except sqlite3.OperationalError as e:
                if "locked" not in str(e) or attempt == 19:
                    raise
                time.sleep(0.1 * (attempt + 1))
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0
        from ..machine import environment

        self.environment = json.dumps(environment(), sort_keys=True)
        #: calls answered, by the environment that computed the answer ("" = not recorded: an older entry)
        self.answered_by: Counter[str] = Counter()
        #: also look up the key without the intervention's fingerprint (entries written before it was part
        #: of the key): set by the runner while it replays a finished run that recorded no fingerprint
        self.legacy_keys = False

    # -- the wrapped backend's identity and capabilities ----------------------------------------
    @property
    def identity(self) -> dict[str, Any]:
        # read per call: an intervention attached to the wrapped model for a run changes its answers
        desc = self.backend.describe()
        fp = self._fingerprint()
        return {**desc, "intervention_fingerprint": fp} if fp else desc

    def _fingerprint(self) -> str | None:
        from .base import in_process

        iv = getattr(in_process(self.backend), "intervention", None)
        return iv.fingerprint() if iv is not None else None

    @property
    def name(self) -> str:  # type: ignore[override]
        return self.backend.name

    @property
    def model_type(self) -> str:  # type: ignore[override]
        return self.backend.model_type

    @property
    def can_chat(self) -> bool:
        return self.backend.can_chat

    @property
    def can_score(self) -> bool:
        return self.backend.can_score

    def describe(self) -> dict[str, Any]:
        return self.backend.describe()

    def stats(self) -> dict[str, Any]:
        return self.backend.stats()

    # -- optional abilities: the wrapped backend's; scores are cached like every request kind ---------
    def capabilities(self) -> set[str]:
        return self.backend.capabilities()

    @property
    def tokenizer(self):  # type: ignore[override]
        return self.backend.tokenizer

    def apply_chat_template(self, messages):
        return self.backend.apply_chat_template(messages)

    def model_and_tokenizer(self):
        return self.backend.model_and_tokenizer()

    def pll_positions(self, seqs, positions):
        payloads = [[list(s), list(p)] for s, p in zip(seqs, positions)]
        res = self._cached("pll_positions", payloads, [True] * len(payloads),
                           lambda idx: [list(v) for v in self.backend.pll_positions([seqs[i] for i in idx],
                                                                                   [positions[i] for i in idx])])
        return [(float(a), int(b)) for a, b in res]

    def __getattr__(self, attr: str):  # backend-specific helpers (apply_chat_template, pll_positions...)
        if attr == "backend":
            raise AttributeError(attr)
        return getattr(self.backend, attr)

    def close(self) -> None:
        with self._lock:
            self._db.close()
        self.backend.close()

    # -- cache core -----------------------------------------------------------------------------
    def _lookup(self, keys: set[str]) -> tuple[dict[str, Any], dict[str, str]]:
        """The stored values of ``keys`` and the environments that computed them (those recorded)."""
        found: dict[str, Any] = {}
        env_of: dict[str, str] = {}
        wanted = sorted(keys)
        with self._lock:
            for i in range(0, len(wanted), 500):
                chunk = wanted[i : i + 500]
                marks = ','.join('?' * len(chunk))
                rows = self._db.execute(f"SELECT key, value FROM responses WHERE key IN ({marks})", chunk).fetchall()
                found.update((k, json.loads(v)) for k, v in rows)
                env_of.update(self._db.execute(
                    f"SELECT key, environment FROM computed_on WHERE key IN ({marks})", chunk).fetchall())
        return found, env_of

    def _cached(self, kind: str, payloads: list[Any], cacheable: list[bool],
                compute: Callable[[list[int]], list[Any]]) -> list[Any]:
        ident = self.identity
        keys = [_key(ident, kind, p) if ok else None for p, ok in zip(payloads, cacheable)]
        found, env_of = self._lookup({k for k in keys if k is not None})
        if self.legacy_keys and self._fingerprint():
            plain = self.backend.describe()  # entries written before the fingerprint was part of the key
            legacy = {_key(plain, kind, p): k for k, p in zip(keys, payloads) if k is not None and k not in found}
            old, old_env = self._lookup(set(legacy))
            found.update((legacy[k], v) for k, v in old.items())
            env_of.update((legacy[k], e) for k, e in old_env.items())
        out: list[Any] = [None] * len(payloads)
        todo: list[int] = []
        first_of: dict[str, int] = {}
        dupes: list[tuple[int, int]] = []
        for i, k in enumerate(keys):
            if k is not None and k in found:
                out[i] = found[k]
                self.hits += 1
                self.answered_by[env_of.get(k, "")] += 1
            elif k is not None and k in first_of:  # the same request twice in one call: ask once
                dupes.append((i, first_of[k]))
            else:
                if k is not None:
                    first_of[k] = i
                todo.append(i)
        if todo:
            self.misses += len(todo)
            self.answered_by[self.environment] += len(todo)
            fresh = compute(todo)
            rows = []
            for i, v in zip(todo, fresh):
                out[i] = v
                if keys[i] is not None:
                    rows.append((keys[i], kind, json.dumps(v)))
            with self._lock:
                self._db.executemany("INSERT OR REPLACE INTO responses (key, kind, value) VALUES (?, ?, ?)", rows)
                self._db.executemany("INSERT OR REPLACE INTO computed_on (key, environment) VALUES (?, ?)",
                                     [(r[0], self.environment) for r in rows])
                self._db.commit()
        for i, j in dupes:
            out[i] = out[j]
        return out

    # -- request kinds ----------------------------------------------------------------------------
    def loglikelihood_choices(self, requests: Sequence[tuple[str, Sequence[str]]]) -> list[list[float]]:
        reqs = [(c, list(o)) for c, o in requests]
        return self._cached("loglikelihood_choices", [list(r) for r in reqs], [True] * len(reqs),
                            lambda idx: self.backend.loglikelihood_choices([reqs[i] for i in idx]))

    def continuation_lengths(self, requests: Sequence[tuple[str, Sequence[str]]]) -> list[list[int]]:
        reqs = [(c, list(o)) for c, o in requests]
        return self._cached("continuation_lengths", [list(r) for r in reqs], [True] * len(reqs),
                            lambda idx: self.backend.continuation_lengths([reqs[i] for i in idx]))

    def sequence_logprob(self, texts: Sequence[str]) -> list[tuple[float, int]]:
        texts = list(texts)
        res = self._cached("sequence_logprob", texts, [True] * len(texts),
                           lambda idx: [list(v) for v in self.backend.sequence_logprob([texts[i] for i in idx])])
        return [(float(s), int(n)) for s, n in res]

    def next_token_logprobs(self, contexts: Sequence[str], candidates: Sequence[Sequence[str]]) -> list[list[float]]:
        pairs = [[c, list(o)] for c, o in zip(contexts, candidates)]
        return self._cached(
            "next_token_logprobs", pairs, [True] * len(pairs),
            lambda idx: self.backend.next_token_logprobs([pairs[i][0] for i in idx], [pairs[i][1] for i in idx]),
        )

    def chat_choice_logprobs(self, conversations, candidates) -> list[list[float]]:
        payloads = [[list(c), list(candidates)] for c in conversations]
        return self._cached(
            "chat_choice_logprobs", payloads, [True] * len(payloads),
            lambda idx: self.backend.chat_choice_logprobs([conversations[i] for i in idx], list(candidates)),
        )

    def generate(self, requests: Sequence[GenerationRequest]) -> list[GenerationResult]:
        reqs = list(requests)
        payloads = [asdict(r) for r in reqs]
        cacheable = [not (r.temperature and r.temperature > 0 and r.seed is None) for r in reqs]
        res = self._cached("generate", payloads, cacheable,
                           lambda idx: [asdict(g) for g in self.backend.generate([reqs[i] for i in idx])])
        return [GenerationResult(**r) for r in res]
