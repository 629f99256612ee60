"""OpenAI Chat Completions (https://platform.openai.com/docs/api-reference/chat).

Also serves `openai_compatible` (vLLM, Ollama, a Ray Serve LLM app): the same wire format
at another base URL. Translation lives in `openai_translate`; this module only sends.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import aclosing

import orjson

from serve_app.canonical import ModelAnswer, ModelCall, StreamEvent
from serve_app.errors import UpstreamError
from serve_app.providers.base import Provider
from serve_app.providers.openai_translate import (
    OpenAIStreamTranslator,
    answer_from_completion,
    chat_request,
)
from serve_app.providers.transport import Endpoint, Transport

logger = logging.getLogger(__name__)

STREAM_DONE = "[DONE]"


class OpenAIProvider(Provider):
    def __init__(
        self,
        *,
        name: str,
        base_url: str,
        api_key: str | None,
        label: str,
        transport: Transport,
        credential_hint: str,
        max_tokens_field: str = "max_completion_tokens",
    ) -> None:
        headers = {"content-type": "application/json"}
        if api_key:
            headers["authorization"] = f"Bearer {api_key}"
        endpoint = Endpoint(
            provider=name,
            label=label,
            url=f"{base_url.rstrip('/')}/chat/completions",
            headers=headers,
            credential_hint=credential_hint,
        )
        super().__init__(endpoint, transport)
        self._max_tokens_field = max_tokens_field

    async def complete(self, call: ModelCall) -> ModelAnswer:
        request = chat_request(call, stream=False, max_tokens_field=self._max_tokens_field)
        completion = await self._transport.post_json(
            self._endpoint, orjson.dumps(request), call.request_id
        )

        answer = answer_from_completion(completion, upstream=self.label, provider=self.name)
        if "usage" not in completion:
            self._warn_no_usage(call)
        return answer

    async def stream(self, call: ModelCall) -> AsyncIterator[StreamEvent]:
        request = chat_request(call, stream=True, max_tokens_field=self._max_tokens_field)
        response = await self._transport.open_stream(
            self._endpoint, orjson.dumps(request), call.request_id
        )
        translator = OpenAIStreamTranslator(model=call.upstream_model, provider=self.name)

        # aclosing: if the consumer stops early, the response is closed now, not whenever
        # the abandoned generator is collected.
        async with aclosing(
            self._transport.read_events(response, self._endpoint, call.request_id)
        ) as chunks:
            async for sse in chunks:
                # Read on to the end of the body after the last event: a fully read
                # response returns its connection to the pool, an abandoned one is closed.
                if translator.finished:
                    continue
                if sse.data == STREAM_DONE:
                    events = translator.finish()
                else:
                    events = translator.feed(self._parse_chunk(sse.data))
                for event in events:
                    yield event

        for event in translator.finish():
            yield event
        if not translator.usage_reported and not translator.failed:
            self._warn_no_usage(call)

    def _parse_chunk(self, data: str) -> dict:
        try:
            chunk = orjson.loads(data)
        except orjson.JSONDecodeError:
            raise UpstreamError(f"the {self.name} stream sent a chunk that is not JSON") from None
        if not isinstance(chunk, dict):
            raise UpstreamError(f"the {self.name} stream sent a chunk that is not a JSON object")
        return chunk

    def _warn_no_usage(self, call: ModelCall) -> None:
        # The turn is then billed at zero tokens: a server that cannot report usage (for
        # streams: that ignores stream_options.include_usage) must not serve paid keys.
        logger.warning(
            "request %s: %s upstream reported no usage for model %s",
            call.request_id,
            self.name,
            call.upstream_model,
        )
