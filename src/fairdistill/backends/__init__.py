"""Model backends: everything that answers model requests (in-process HF, HTTP servers, vLLM)."""
from .base import Backend, ChatMessage, GenerationRequest, load_backend

__all__ = ["Backend", "ChatMessage", "GenerationRequest", "load_backend"]
