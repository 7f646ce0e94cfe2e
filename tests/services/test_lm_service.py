"""The LM service on the default model (real SmolLM2 weights as the LM of a
LLaVA-style VLM), with a real vision service, real gRPC clients on loopback."""
from __future__ import annotations

import random
import threading
import time

import grpc
import numpy as np
import pytest

from conftest import IMAGES, image_bytes
from lm_stack import LmServerThread, start_vision
from vlmserve.services import protos

pb, common = None, None


@pytest.fixture(scope="module")
def model():
    from vlmserve.default_model import default_vlm_checkpoint

    global pb, common
    pb, common = protos.lm(), protos.common()
    return default_vlm_checkpoint()


@pytest.fixture(scope="module")
def stack(model):
    vision = start_vision(model, max_image_pixels=4_000_000, max_images_per_request=4)
    lm = LmServerThread(model, vision.address, max_images_per_request=4)
    yield vision, lm
    lm.stop()
    vision.stop()


def stub(address):
    ch = grpc.insecure_channel(address)
    return ch, protos.lm_grpc().LmServiceStub(ch)


def user(*parts):
    content = []
    for p in parts:
        if isinstance(p, str):
            content.append(pb.ContentPart(text=p))
        else:
            content.append(pb.ContentPart(image=common.ImageInput(data=p[0], mime_type=p[1])))
    return pb.ChatRequest(messages=[pb.ChatMessage(role=pb.ROLE_USER, content=content)])


def collect(responses):
    ids, text, last = [], "", None
    for r in responses:
        ids += list(r.token_ids)
        text += r.text
        last = r
    return ids, text, last


def direct(lm: LmServerThread, messages, images, max_tokens):
    """The engine run directly with the same prompt and the same (fp16-rounded) embeddings."""
    from vlmserve import Embeddings, GenerationConfig
    from vlmserve.vision.encoder import VisionEncoder

    core = lm.server.ready()
    layouts, rows = [], []
    if images:
        enc = VisionEncoder(lm.server.model)
        enc.warmup()
        from PIL import Image
        import io

        for e in enc.encode([Image.open(io.BytesIO(b)).convert("RGB") for b in images]):
            layouts.append(e.layout)
            rows.append(e.embeddings.to(dtype=__import__("torch").float16).numpy())
    from vlmserve.prompt_builder import Layout

    built = core.builder.build(messages, [Layout(lay.num_tokens, lay.tokens_per_tile) for lay in layouts])
    spans = [Embeddings(pos, rows[img][row:row + n]) for pos, img, row, n in built.spans]
    out = core.engine.generate(built.token_ids, GenerationConfig(max_new_tokens=max_tokens,
                                                                 eos_token_ids=core.engine.spec.eos_token_ids), spans)
    return out.token_ids


def test_text_chat_streams_the_engine_answer(stack):
    _, lm = stack
    ch, s = stub(lm.address)
    req = user("What is the capital of France?")
    req.params.max_tokens = 32
    sent_ns = time.time_ns()
    ids, text, last = collect(s.Chat(req, timeout=60))
    done_ns = time.time_ns()
    assert "Paris" in text
    assert last.finish_reason == pb.FINISH_REASON_STOP and last.usage.completion_tokens == len(ids)
    assert last.timings.total_ns > 0 and last.timings.prefill_ns > 0
    # the call's arrival at the handler on the wall clock: after it was sent, its whole span before the answer ended
    # (1 ms slack: the service derives it from a monotonic clock)
    assert sent_ns - 1_000_000 <= last.timings.arrival_unix_ns
    assert last.timings.arrival_unix_ns + last.timings.total_ns <= done_ns + 1_000_000
    assert ids == direct(lm, [{"role": "user", "content": "What is the capital of France?"}], [], 32)
    ch.close()


def test_image_chat_with_two_images_equals_engine_direct(stack):
    _, lm = stack
    ch, s = stub(lm.address)
    imgs = [image_bytes("chelsea.png"), image_bytes("rocket.jpg")]
    req = user((imgs[0], "image/png"), "Compare the two pictures.", (imgs[1], "image/jpeg"))
    req.params.max_tokens = 12
    req.params.ignore_eos = True
    ids, text, last = collect(s.Chat(req, timeout=120))
    assert last.usage.image_tokens == 512 and last.timings.vision_ns > 0
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Compare the two pictures."},
                                             {"type": "image"}]}]
    from vlmserve import GenerationConfig  # noqa: F401

    expect = direct_ignore_eos(lm, messages, imgs, 12)
    assert ids == expect
    ch.close()


def direct_ignore_eos(lm, messages, images, n):
    import io

    import torch
    from PIL import Image

    from vlmserve import Embeddings, GenerationConfig
    from vlmserve.prompt_builder import Layout
    from vlmserve.vision.encoder import VisionEncoder

    core = lm.server.ready()
    enc = VisionEncoder(lm.server.model)
    enc.warmup()
    encs = enc.encode([Image.open(io.BytesIO(b)).convert("RGB") for b in images])
    built = core.builder.build(messages, [Layout(e.layout.num_tokens, e.layout.tokens_per_tile) for e in encs])
    spans = [Embeddings(pos, encs[img].embeddings[row:row + k].to(torch.float16).numpy())
             for pos, img, row, k in built.spans]
    return core.engine.generate(built.token_ids, GenerationConfig(max_new_tokens=n, ignore_eos=True), spans).token_ids


def test_generate_token_ids_and_info(stack):
    _, lm = stack
    ch, s = stub(lm.address)
    info = s.Info(pb.LmInfoRequest(), timeout=10)
    assert info.hidden_size == 576 and info.supports_images and info.limits.max_model_len == 1024
    req = pb.GenerateRequest(token_ids=pb.TokenIds(ids=[1, 4093, 198, 1780]))
    req.params.max_tokens = 5
    req.params.ignore_eos = True
    ids, _, last = collect(s.Generate(req, timeout=30))
    assert len(ids) == 5 and last.finish_reason == pb.FINISH_REASON_LENGTH
    # embedding spans over token ids
    rows = np.random.default_rng(0).normal(size=(3, 576)).astype(np.float32)
    req.embeddings.append(pb.EmbeddingSpan(position=1, dtype=common.TENSOR_DTYPE_FLOAT32, shape=[3, 576],
                                           data=rows.tobytes()))
    ids2, _, _ = collect(s.Generate(req, timeout=30))
    assert len(ids2) == 5
    ch.close()


def test_stop_strings_and_logprobs(stack):
    _, lm = stack
    ch, s = stub(lm.address)
    req = user("What is the capital of France?")
    req.params.max_tokens = 32
    req.params.stop.append(" Paris")
    req.params.logprobs = True
    req.params.top_logprobs = 2
    ids, text, last = collect(s.Chat(req, timeout=60))
    assert last.matched_stop == " Paris" and "Paris" not in text and last.finish_reason == pb.FINISH_REASON_STOP
    ch.close()


def test_bad_input_gets_its_status_while_a_good_stream_runs(stack, tmp_path):
    _, lm = stack
    ch, s = stub(lm.address)
    good_req = user("Write a long story about a lighthouse.")
    good_req.params.max_tokens = 40
    good_req.params.ignore_eos = True
    expected = collect(s.Chat(good_req, timeout=120))[0]
    result = {}
    t = threading.Thread(target=lambda: result.setdefault("ids", collect(s.Chat(good_req, timeout=120))[0]))
    t.start()
    from PIL import Image

    tiny = tmp_path / "one.png"
    Image.new("RGB", (1, 1)).save(tiny)
    big = tmp_path / "big.png"
    Image.new("RGB", (2100, 2100)).save(big)
    png = image_bytes("chelsea.png")
    IA = grpc.StatusCode.INVALID_ARGUMENT
    cases = [
        ("corrupt image", user((b"\x89PNG\r\n\x1a\nnot really", "image/png"), "hi"), IA),
        ("truncated image", user((png[: len(png) // 3], "image/png"), "hi"), IA),
        ("unsupported MIME", user((png, "image/tiff"), "hi"), IA),
        ("1x1 image", user((tiny.read_bytes(), "image/png"), "hi"), IA),
        ("over the pixel limit", user((big.read_bytes(), "image/png"), "hi"), IA),
        ("too many images", user(*[(png, "image/png")] * 5, "hi"), IA),
        ("empty message list", pb.ChatRequest(), IA),
        ("unknown role", pb.ChatRequest(messages=[pb.ChatMessage(role=42, content=[pb.ContentPart(text="x")])]), IA),
        ("prompt over max_model_len", user("word " * 1500), grpc.StatusCode.OUT_OF_RANGE),
    ]
    bad_params = user("hi")
    bad_params.params.top_p = 1.5
    cases.append(("invalid top_p", bad_params, IA))
    bad_params2 = user("hi")
    bad_params2.params.temperature = -1
    cases.append(("negative temperature", bad_params2, IA))
    for name, req, code in cases:
        with pytest.raises(grpc.RpcError) as e:
            collect(s.Chat(req, timeout=60))
        assert e.value.code() == code, f"{name}: {e.value.code()} {e.value.details()}"
        assert e.value.details(), name
    # invalid UTF-8 inside a string field, sent as raw bytes
    raw = bytes([0x0A, 0x07, 0x08, 0x02, 0x12, 0x03, 0x0A, 0x01, 0xFF])  # messages{role=USER content{text="\xff"}}
    call = ch.unary_stream("/vlm.v1.LmService/Chat", request_serializer=None, response_deserializer=None)
    with pytest.raises(grpc.RpcError) as e:
        list(call(raw, timeout=30))
    assert e.value.code() == IA and "UTF-8" in e.value.details()
    # a message over the server's size limit
    with pytest.raises(grpc.RpcError) as e:
        collect(s.Chat(user((b"\x00" * (65 * 1024 * 1024), "image/png"), "hi"), timeout=60))
    assert e.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    t.join(120)
    assert result["ids"] == expected
    ch.close()


def test_concurrent_streams_with_cancellations_and_deadlines_free_every_block(stack):
    _, lm = stack
    rng = random.Random(7)
    outcomes = []
    lock = threading.Lock()
    ch, s = stub(lm.address)

    def client(i):
        req = user(f"Tell me fact number {i} about the sea.")
        req.params.max_tokens = 48
        req.params.ignore_eos = True
        mode = rng.choice(["full", "cancel", "deadline"])
        try:
            # The full streams' deadline only guards against a hang: on a slow, shared 2-core machine
            # 64 concurrent streams can take minutes, and this test is about freed blocks, not speed.
            call = s.Chat(req, timeout=0.3 if mode == "deadline" else 900)
            for j, _ in enumerate(call):
                if mode == "cancel" and j == 3:
                    call.cancel()
            res = "done"
        except grpc.RpcError as e:
            res = e.code().name
        with lock:
            outcomes.append((mode, res))

    threads = [threading.Thread(target=client, args=(i,)) for i in range(64)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(1000)
    assert len(outcomes) == 64
    assert {r for _, r in outcomes} <= {"done", "CANCELLED", "DEADLINE_EXCEEDED"}
    unfinished = [(m, r) for m, r in outcomes if m == "full" and r != "done"]
    assert not unfinished, unfinished
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        st = lm.engine.stats()
        if st.running_requests == 0 and st.waiting_requests == 0 and st.free_blocks == st.total_blocks:
            break
        time.sleep(0.1)
    st = lm.engine.stats()
    assert st.free_blocks == st.total_blocks, st
    ch.close()


def test_metrics_endpoint(stack):
    _, lm = stack
    text = lm.metrics_text()
    for name in ("vlmserve_lm_time_to_first_token_seconds", "vlmserve_lm_inter_token_latency_seconds",
                 "vlmserve_lm_e2e_request_latency_seconds", "vlmserve_lm_queue_time_seconds",
                 "vlmserve_lm_running_requests", "vlmserve_lm_waiting_requests", "vlmserve_lm_kv_cache_usage",
                 "vlmserve_grpc_server_handled_total", "vlmserve_event_loop_lag_seconds_count"):
        assert name in text, name


def test_vision_down_gives_unavailable_within_the_deadline_then_recovers(model):
    vision = start_vision(model)
    port = vision.port
    lm = LmServerThread(model, vision.address)
    ch, s = stub(lm.address)
    req = user((image_bytes("chelsea.png"), "image/png"), "What is it?")
    req.params.max_tokens = 3
    try:
        collect(s.Chat(req, timeout=60))
        vision.stop()
        t0 = time.monotonic()
        with pytest.raises(grpc.RpcError) as e:
            collect(s.Chat(req, timeout=5))
        assert e.value.code() == grpc.StatusCode.UNAVAILABLE and time.monotonic() - t0 < 5
        # text-only chats carry on meanwhile
        collect(s.Chat(user("hello"), timeout=30))
        vision = start_vision(model, port=port)
        deadline = time.monotonic() + 30
        while True:
            try:
                collect(s.Chat(req, timeout=30))
                break
            except grpc.RpcError as err:
                assert err.code() == grpc.StatusCode.UNAVAILABLE and time.monotonic() < deadline
                time.sleep(0.3)
    finally:
        ch.close()
        lm.stop()
        vision.stop()


def test_health_goes_serving_after_warm_up_and_reflection_lists_the_service(model):
    from grpc_health.v1 import health_pb2, health_pb2_grpc
    from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

    lm = LmServerThread(model, None, load=False)
    try:
        ch = grpc.insecure_channel(lm.address)
        health = health_pb2_grpc.HealthStub(ch)
        assert health.Check(health_pb2.HealthCheckRequest(service="vlm.v1.LmService"),
                            timeout=5).status == health_pb2.HealthCheckResponse.NOT_SERVING
        with pytest.raises(grpc.RpcError) as e:
            collect(protos.lm_grpc().LmServiceStub(ch).Chat(user("hi"), timeout=5))
        assert e.value.code() == grpc.StatusCode.UNAVAILABLE
        lm.load()
        assert health.Check(health_pb2.HealthCheckRequest(), timeout=5).status == health_pb2.HealthCheckResponse.SERVING
        refl = reflection_pb2_grpc.ServerReflectionStub(ch)
        resp = next(refl.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")])))
        names = {s.name for s in resp.list_services_response.service}
        assert {"vlm.v1.LmService", "grpc.health.v1.Health"} <= names
        ch.close()
    finally:
        lm.stop()


def test_vision_addr_list_spreads_calls_over_replicas(model):
    a, b = start_vision(model), start_vision(model)
    lm = LmServerThread(model, f"{a.address},{b.address}")
    ch, s = stub(lm.address)
    try:
        for i in range(8):
            req = user((image_bytes("chelsea.png"), "image/png"), f"Question {i}?")
            req.params.max_tokens = 1
            collect(s.Chat(req, timeout=60))

        def images(server):
            line = [x for x in server.metrics_text().splitlines() if x.startswith("vlmserve_vision_images_total")]
            return float(line[0].split()[-1]) if line else 0.0

        assert images(a) > 0 and images(b) > 0 and images(a) + images(b) == 8
    finally:
        ch.close()
        lm.stop()
        a.stop()
        b.stop()


def test_stream_interval_groups_tokens_after_the_first(stack, model):
    from vlmserve.errors import InvalidArgumentError
    from vlmserve.services.lm_server import LmLimits

    _, every = stack
    grouped = LmServerThread(model, None, stream_interval=4)
    try:
        req = pb.GenerateRequest(token_ids=pb.TokenIds(ids=[1, 4093, 198, 1780]))
        req.params.max_tokens = 10
        req.params.ignore_eos = True
        req.params.logprobs = True
        req.params.top_logprobs = 2
        results = {}
        for name, server in (("every", every), ("grouped", grouped)):
            ch, s = stub(server.address)
            msgs = list(s.Generate(req, timeout=60))
            ch.close()
            results[name] = msgs
        sizes = [len(m.token_ids) for m in results["grouped"]]
        assert sum(sizes) == 10
        carrying = [n for n in sizes if n]
        # The first message carries what had come when the stream first ran (one token unless the server was
        # slow to run it), then groups of at least 4 (the last may hold fewer).
        assert all(n >= 4 for n in carrying[1:-1]) and len(carrying) <= 4
        assert collect(results["grouped"])[:2] == collect(results["every"])[:2]  # same tokens and text
        assert results["grouped"][-1].finish_reason == pb.FINISH_REASON_LENGTH
        for m in results["grouped"]:  # one logprob entry per token, in the same message
            assert [lp.token_id for lp in m.logprobs] == list(m.token_ids)
            assert all(len(lp.top_logprobs) == 2 for lp in m.logprobs)
    finally:
        grouped.stop()
    for bad in (0, 65, 2.0, True):
        with pytest.raises(InvalidArgumentError, match="stream_interval"):
            LmLimits(stream_interval=bad)
