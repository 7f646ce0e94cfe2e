"""A small Python client of the LM service (what `vlmserve chat` and `vlmserve
info` use; any gRPC language works the same way from protos/)."""
from __future__ import annotations

import mimetypes
from pathlib import Path
from typing import Iterator

import grpc

from vlmserve.services import protos


class LmClient:
    def __init__(self, address: str, api_key: str | None = None, tls_root_cert: bytes | None = None,
                 max_message_bytes: int = 64 * 1024 * 1024):
        options = [("grpc.max_send_message_length", max_message_bytes),
                   ("grpc.max_receive_message_length", max_message_bytes)]
        self.channel = (grpc.secure_channel(address, grpc.ssl_channel_credentials(tls_root_cert), options)
                        if tls_root_cert else grpc.insecure_channel(address, options))
        self.stub = protos.lm_grpc().LmServiceStub(self.channel)
        self.pb, self.common = protos.lm(), protos.common()
        self.metadata = [("authorization", f"Bearer {api_key}")] if api_key else []

    def image_part(self, path: str | Path):
        p = Path(path)
        mime = mimetypes.guess_type(p.name)[0] or "application/octet-stream"
        return self.pb.ContentPart(image=self.common.ImageInput(data=p.read_bytes(), mime_type=mime))

    def chat(self, question: str, images: list[str | Path] = (), timeout: float | None = None,
             **params) -> Iterator:
        """Streams GenerateResponse messages for one user message (images first, then the text)."""
        content = [self.image_part(i) for i in images] + [self.pb.ContentPart(text=question)]
        request = self.pb.ChatRequest(messages=[self.pb.ChatMessage(role=self.pb.ROLE_USER, content=content)],
                                      params=self.pb.SamplingParams(**params))
        return self.stub.Chat(request, timeout=timeout, metadata=self.metadata)

    def info(self, timeout: float | None = 10.0):
        return self.stub.Info(self.pb.LmInfoRequest(), timeout=timeout, metadata=self.metadata)

    def close(self) -> None:
        self.channel.close()
