"""Test doubles for a chat model: pipeline logic is checked against scripted replies."""
from __future__ import annotations

from fairdistill.backends.base import Backend, GenerationRequest, GenerationResult


class ChatDouble(Backend):
    """A chat backend that records every request and answers with ``reply(request)``."""

    name = "chat-double"
    prompt_tokens = completion_tokens = 0

    def __init__(self):
        self.requests: list[GenerationRequest] = []

    @property
    def can_chat(self) -> bool:
        return True

    def reply(self, request: GenerationRequest) -> str:
        raise NotImplementedError

    def generate(self, requests):
        out = []
        for r in requests:
            self.requests.append(r)
            out.append(GenerationResult(text=self.reply(r), prompt_tokens=self.prompt_tokens,
                                        completion_tokens=self.completion_tokens))
        return out


class ServedBackend(Backend):
    """Stands for a served model (``vllm:`` / ``openai:``): no model object here, no full distributions."""

    name = "served"

    def __init__(self, kind: str = "vllm"):
        self.kind = kind

    def describe(self):
        return {"backend": self.kind, "model": self.name}
