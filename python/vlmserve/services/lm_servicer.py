"""vlm.v1.LmService: Chat, Generate, Info.

A request's path: validate (lm_request) -> encode its images on the vision
service within the caller's deadline -> build the prompt (chat template,
placeholders expanded) -> enqueue in the engine -> stream token ids and text
deltas -> a last message with the finish reason, usage and timings. A client
that cancels or whose deadline passes aborts the engine request, which frees
its KV blocks.

Chat and Generate parse their own request bytes, so a malformed request
(invalid UTF-8 in a string, say) is INVALID_ARGUMENT rather than INTERNAL."""
from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING

import grpc
from google.protobuf.message import DecodeError

from vlmserve import __version__
from vlmserve.config import KV_CACHE_DTYPES
from vlmserve.engine import Embeddings
from vlmserve.errors import InternalError, InvalidArgumentError, UnavailableError
from vlmserve.services import protos
from vlmserve.services.lm_request import (MAX_STOP_STRINGS, MAX_STOP_TOKEN_IDS, MAX_TOP_LOGPROBS, chat_messages,
                                          embedding_spans, generation_config)
from vlmserve.services.log import request_id
from vlmserve.text_stream import TextStreamer

if TYPE_CHECKING:
    from vlmserve.services.lm_server import LmServer

SERVICE_NAME = "vlm.v1.LmService"
FINISH = {"stop": 1, "length": 2}
KV_ENUM = {"auto": 1, "fp32": 1, "fp16": 2, "bf16": 3, "int8": 4, "int4": 5}


class LmServicer:
    def __init__(self, owner: "LmServer"):
        self.owner = owner
        self.pb = protos.lm()

    def handlers(self) -> grpc.GenericRpcHandler:
        pb = self.pb
        return grpc.method_handlers_generic_handler(SERVICE_NAME, {
            "Chat": grpc.unary_stream_rpc_method_handler(
                self.Chat, response_serializer=pb.GenerateResponse.SerializeToString),
            "Generate": grpc.unary_stream_rpc_method_handler(
                self.Generate, response_serializer=pb.GenerateResponse.SerializeToString),
            "Info": grpc.unary_unary_rpc_method_handler(
                self.Info, request_deserializer=pb.LmInfoRequest.FromString,
                response_serializer=pb.LmInfoResponse.SerializeToString),
        })

    def _parse(self, cls, raw: bytes):
        try:
            return cls.FromString(raw)
        except DecodeError as e:
            raise InvalidArgumentError(f"the request is not a valid {cls.__name__} ({e}); strings must be "
                                       "valid UTF-8") from None

    # -- RPCs ---------------------------------------------------------------------------------------
    async def Chat(self, raw: bytes, context):
        received = time.perf_counter_ns()
        request = self._parse(self.pb.ChatRequest, raw)
        core = self.owner.ready()
        messages, images = chat_messages(request, core.limits.max_images_per_request)
        encoded, vision_ns = [], 0
        if images:
            if not self.owner.has_vision:
                raise InvalidArgumentError("this server has no vision service configured; send text only")
            encoded, vision_ns = await self.owner.vision_client().encode(images, context.time_remaining(),
                                                                         request_id.get())
            self.owner.metrics.vision.observe(vision_ns / 1e9)
        add_prompt = request.add_generation_prompt if request.HasField("add_generation_prompt") else True
        loop = asyncio.get_running_loop()
        built = await loop.run_in_executor(None, core.builder.build, messages, [e.layout for e in encoded], add_prompt)
        spans = [Embeddings(pos, encoded[img].rows[row:row + n]) for pos, img, row, n in built.spans]
        async for msg in self._stream(built.token_ids, spans, request.params, received, vision_ns,
                                      built.image_tokens, context):
            yield msg

    async def Generate(self, raw: bytes, context):
        received = time.perf_counter_ns()
        request = self._parse(self.pb.GenerateRequest, raw)
        core = self.owner.ready()
        kind = request.WhichOneof("prompt")
        if kind == "text":
            if not request.text:
                raise InvalidArgumentError("text must not be empty")
        add_special = request.add_special_tokens if request.HasField("add_special_tokens") else True
        if kind == "text":
            ids = core.builder.tokenizer(request.text, add_special_tokens=add_special)["input_ids"]
        elif kind == "token_ids":
            ids = list(request.token_ids.ids)
            if not ids:
                raise InvalidArgumentError("token_ids must hold at least one id")
        else:
            raise InvalidArgumentError("the request has neither text nor token_ids")
        spans = embedding_spans(request.embeddings, core.engine.spec.hidden_size)
        image_tokens = sum(len(s.rows) for s in spans)
        async for msg in self._stream(ids, spans, request.params, received, 0, image_tokens, context):
            yield msg

    async def Info(self, request, context):
        core = self.owner.ready()
        spec, cfg = core.engine.spec, core.engine.config
        stats = core.engine.stats()
        lm = self.pb
        return lm.LmInfoResponse(
            model=str(self.owner.model), model_type=spec.config.get("model_type", ""),
            dtype=1, quantization=2 if spec.awq_group_size else 1, quantization_group_size=spec.awq_group_size,
            kv_cache_dtype=KV_ENUM[cfg.kv_cache_dtype], vocab_size=spec.vocab_size, hidden_size=spec.hidden_size,
            eos_token_ids=spec.eos_token_ids, supports_images=self.owner.has_vision and spec.family != "causal_lm",
            device="cpu", server_version=__version__,
            limits=lm.LmLimits(max_model_len=stats.max_model_len, max_batch_size=cfg.max_batch_size,
                               max_images_per_request=core.limits.max_images_per_request,
                               max_stop_strings=MAX_STOP_STRINGS, max_stop_token_ids=MAX_STOP_TOKEN_IDS,
                               max_top_logprobs=MAX_TOP_LOGPROBS,
                               max_message_bytes=self.owner.server_config.max_message_bytes))

    # -- streaming ----------------------------------------------------------------------------------
    async def _stream(self, ids, spans, params, received: int, vision_ns: int, image_tokens: int, context):
        core, metrics, lm = self.owner.ready(), self.owner.metrics, self.pb
        max_len = core.engine.stats().max_model_len
        gen, text_opts = generation_config(params, len(ids), max_len, core.engine.spec.eos_token_ids)
        stream = core.engine.add_request(ids, gen, spans, loop=asyncio.get_running_loop())
        streamer = TextStreamer(core.builder.tokenizer, text_opts["stop"], text_opts["skip_special_tokens"])
        finished = False
        last_token_ns = None
        count = 0
        try:
            # One message per batch of tokens the engine produced since the last one: one token while this loop
            # keeps up, several when it falls behind (then fewer, larger messages let it catch up), and at least
            # --stream-interval after the first.
            async for batch in stream.batches(core.limits.stream_interval):
                now = time.perf_counter_ns()
                if last_token_ns is None:
                    metrics.ttft.observe((now - received) / 1e9)
                # The wait spread over the tokens it delivered, as a client measures it (the first has none).
                gap = (now - (last_token_ns or received)) / 1e9 / len(batch)
                for _ in range(len(batch) - (last_token_ns is None)):
                    metrics.itl.observe(gap)
                last_token_ns = now
                msg = lm.GenerateResponse()
                if not streamer.stop:  # no stop string can cut the batch: its tokens are decoded together
                    count += len(batch)
                    msg.token_ids.extend(tok.token_id for tok in batch)
                    msg.logprobs.extend(self._logprob(core.builder.tokenizer, tok) for tok in batch
                                        if tok.logprob is not None)
                    msg.text = streamer.push_many(batch).text
                    yield msg
                    continue
                texts = []
                for tok in batch:
                    count += 1
                    chunk = streamer.push(tok)
                    msg.token_ids.append(tok.token_id)
                    texts.append(chunk.text)
                    if tok.logprob is not None:
                        msg.logprobs.append(self._logprob(core.builder.tokenizer, tok))
                    if chunk.matched_stop:  # the tokens after it in this batch are dropped with the rest
                        stream.cancel()
                        await asyncio.get_running_loop().run_in_executor(None, stream.wait)
                        finished = True
                        msg.text = "".join(texts)
                        msg.finish_reason = FINISH["stop"]
                        msg.matched_stop = chunk.matched_stop
                        self._finish(msg, stream.result, len(ids), count, image_tokens, received, vision_ns)
                        yield msg
                        return
                msg.text = "".join(texts)
                yield msg
            out = stream.result
            finished = True
            if out.finish_reason == "error":
                raise InternalError(f"the engine failed the request: {out.error}")
            if out.finish_reason == "cancelled":
                raise UnavailableError("the request was cancelled by the server (shutting down)")
            msg = lm.GenerateResponse(text=streamer.flush(), finish_reason=FINISH[out.finish_reason])
            self._finish(msg, out, len(ids), count, image_tokens, received, vision_ns)
            yield msg
        finally:
            if not finished:  # client gone, deadline passed or an error: free the request's KV blocks now
                core.engine.abort(stream.request_id)

    def _finish(self, msg, out, prompt_tokens, completion, image_tokens, received, vision_ns) -> None:
        total = time.perf_counter_ns() - received
        msg.usage.prompt_tokens = prompt_tokens
        msg.usage.completion_tokens = completion
        msg.usage.image_tokens = image_tokens
        t = msg.timings
        t.queue_ns, t.vision_ns = int(out.queue_s * 1e9), vision_ns
        t.prefill_ns, t.decode_ns, t.total_ns = int(out.prefill_s * 1e9), int(out.decode_s * 1e9), total
        t.arrival_unix_ns = time.time_ns() - total  # the wall clock at arrival (`received` is a monotonic clock)
        m = self.owner.metrics
        m.e2e.observe(total / 1e9)
        m.queue.observe(out.queue_s)
        m.finished.labels(msg.finish_reason and {1: "stop", 2: "length"}[msg.finish_reason]).inc()
        m.prompt_tokens.inc(prompt_tokens)
        m.generation_tokens.inc(completion)

    def _logprob(self, tokenizer, tok):
        lm = self.pb
        entry = lm.TokenLogprob(token_id=tok.token_id, logprob=tok.logprob,
                                token=tokenizer.decode([tok.token_id]))
        for tid, lp in (tok.top_logprobs or {}).items():
            entry.top_logprobs.append(lm.TopLogprob(token_id=tid, logprob=lp, token=tokenizer.decode([tid])))
        return entry
