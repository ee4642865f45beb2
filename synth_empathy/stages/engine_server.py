"""The shared engine's Ray Serve deployment: Ray Serve LLM's ``LLMServer`` (vLLM's
OpenAI-style server) with one more method, :meth:`EngineServer.chat_dict`, that takes
a chat request as a plain dict.

Ray Data's senders would otherwise build every request as vLLM's ``ChatCompletionRequest``
and receive vLLM's ``ChatCompletionResponse``, and either class loads most of vLLM,
torch and transformers into the sender: about 11 s of one core in every sender process,
one per LLM stage, on the 2-core machine (measured: ``import
ray.serve.llm.openai_api_models`` 12.0 s against 2.0 s for the sender's own module). The
engine's replica has all of it loaded already, so requests and answers cross as dicts.
This module is imported only where the deployment is built (the driver) and where it
runs (the replica), never by a sender.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator
from typing import Any

from pydantic import BaseModel
from ray.serve.llm import LLMServer
from ray.serve.llm.openai_api_models import ChatCompletionRequest


class EngineServer(LLMServer):
    async def chat_dict(self, request: dict[str, Any]) -> AsyncGenerator[Any, None]:
        """:meth:`LLMServer.chat` of ``ChatCompletionRequest(**request)``, each answer
        as a dict (what the sender makes of a pydantic answer anyway). A request that
        does not validate raises pydantic's ValidationError, which Ray Data's sender
        records as that row's error (``should_continue_on_error``)."""
        stream = await self.chat(ChatCompletionRequest(**request))
        async for item in stream:
            error = getattr(item, "error", None)
            if error is not None and hasattr(error, "message"):
                # vLLM answers a request it refuses (a prompt over max_model_len, ...)
                # with an ErrorResponse; raised, it becomes that row's error column
                # instead of an answer with no text and no error.
                raise ValueError(f"{getattr(error, 'type', None) or 'engine error'}: {error.message}")
            yield item.model_dump() if isinstance(item, BaseModel) else item
