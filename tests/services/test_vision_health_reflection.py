"""The standard health protocol (NOT_SERVING until the model is loaded and warmed
up) and server reflection, used the way grpcurl uses it: no local .proto files."""
from __future__ import annotations

import threading

import grpc
from google.protobuf import descriptor_pool
from google.protobuf.message_factory import GetMessageClass
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase

import vision_client as vc
from conftest import image_bytes

SERVING, NOT_SERVING = health_pb2.HealthCheckResponse.SERVING, health_pb2.HealthCheckResponse.NOT_SERVING


def test_health_is_not_serving_until_warm_then_serving(start_server):
    server = start_server("llava", load=False)
    with grpc.insecure_channel(server.address) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        for service in ("", "vlm.v1.VisionService"):
            assert health.Check(health_pb2.HealthCheckRequest(service=service)).status == NOT_SERVING
        try:
            vc.encode(vc.stub(channel), [vc.image_input(image_bytes("chelsea.png"))])
            raise AssertionError("Encode answered before the model was loaded")
        except grpc.RpcError as e:
            assert e.code() == grpc.StatusCode.UNAVAILABLE and "still loading" in e.details()

        seen, warm_when_serving = [], []
        watch = health.Watch(health_pb2.HealthCheckRequest(service="vlm.v1.VisionService"))

        def follow():
            for msg in watch:
                seen.append(msg.status)
                if msg.status == SERVING:
                    warm_when_serving.append(server.server.encoder is not None
                                             and server.server.encoder.tokens_per_tile > 0)
                    return

        t = threading.Thread(target=follow)
        t.start()
        server.load()
        t.join(30)
        watch.cancel()
        assert seen[0] == NOT_SERVING and seen[-1] == SERVING and warm_when_serving == [True]
        assert health.Check(health_pb2.HealthCheckRequest(service="")).status == SERVING
        unknown = None
        try:
            health.Check(health_pb2.HealthCheckRequest(service="vlm.v1.Nope"))
        except grpc.RpcError as e:
            unknown = e.code()
        assert unknown == grpc.StatusCode.NOT_FOUND
        out, _ = vc.encode(vc.stub(channel), [vc.image_input(image_bytes("chelsea.png"))])
        assert out[0].header.num_tokens == 16


def test_reflection_lists_services_and_serves_descriptors(start_server):
    server = start_server("llava")
    with grpc.insecure_channel(server.address) as channel:
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        responses = list(stub.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")])))
        names = {s.name for s in responses[0].list_services_response.service}
        assert {"vlm.v1.VisionService", "grpc.health.v1.Health", "grpc.reflection.v1alpha.ServerReflection"} <= names

        # What grpcurl does: build the descriptors from reflection alone, then call the method.
        pool = descriptor_pool.DescriptorPool(ProtoReflectionDescriptorDatabase(channel))
        service = pool.FindServiceByName("vlm.v1.VisionService")
        encode = service.methods_by_name["Encode"]
        assert encode.server_streaming and not encode.client_streaming
        layout = pool.FindMessageTypeByName("vlm.v1.ImageLayout")  # from the imported common.proto
        assert {"num_tokens", "grid_rows", "grid_cols", "has_global_tile"} <= set(layout.fields_by_name)
        family = pool.FindEnumTypeByName("vlm.v1.VisionFamily")
        assert family.values[0].name == "VISION_FAMILY_UNSPECIFIED" and family.values[0].number == 0

        request_cls = GetMessageClass(encode.input_type)
        response_cls = GetMessageClass(encode.output_type)
        request = request_cls()
        image = request.images.add()
        image.data, image.mime_type = image_bytes("chelsea.png"), "image/png"
        call = channel.unary_stream("/vlm.v1.VisionService/Encode", request_serializer=request_cls.SerializeToString,
                                    response_deserializer=response_cls.FromString)
        kinds = [m.WhichOneof("payload") for m in call(request)]
        assert kinds[0] == "header" and kinds[-1] == "summary" and "chunk" in kinds
