"""Images in: the formats, data URLs and URL policy, and the checks that keep a bad
upload from hurting the server (MIME types, pixel limit before decoding, minimum size,
corrupt and truncated data)."""
from __future__ import annotations

import base64
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from conftest import IMAGES, encoded, image_bytes
from vlmserve.errors import InvalidArgumentError
from vlmserve.vision.config import VisionConfig
from vlmserve.vision.image_decode import decode_image
from vlmserve.vision.image_source import ImageSource, host_allowed, resolve

CONFIG = VisionConfig()


def png_header(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height: the pixel limit must refuse it unread."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 16)) + chunk(b"IEND", b"")


@pytest.mark.parametrize("fmt,mime", [("PNG", "image/png"), ("JPEG", "image/jpeg"), ("WEBP", "image/webp"),
                                      ("GIF", "image/gif"), ("BMP", "image/bmp")])
def test_every_allowed_format_decodes_to_rgb(fmt, mime):
    source = Image.open(IMAGES / "chelsea.png").convert("RGB").resize((90, 60))
    image = decode_image(encoded(source, fmt), mime, CONFIG)
    assert image.mode == "RGB" and image.size == (90, 60)


def test_grayscale_and_alpha_become_rgb_like_the_hf_processors():
    gray = decode_image(image_bytes("camera.png"), "image/png", CONFIG)
    assert gray.mode == "RGB" and gray.size == (512, 512)
    rgba = Image.new("RGBA", (8, 8), (255, 0, 0, 0))  # fully transparent red: composited onto white
    assert np.asarray(decode_image(encoded(rgba), "image/png", CONFIG)).tolist()[0][0] == [255, 255, 255]


def test_data_url_and_mime_parameters():
    data = image_bytes("rocket.jpg")
    url = "data:image/jpeg;base64," + base64.b64encode(data).decode()
    got, mime = resolve(ImageSource(url=url), CONFIG)
    assert (got, mime) == (data, "image/jpeg")
    assert decode_image(data, "Image/JPEG; charset=binary", CONFIG).size == (640, 427)


@pytest.mark.parametrize("data,mime,message", [
    (b"", "image/png", "empty"),
    (b"\x00" * 100, "image/png", "not a PNG, JPEG, WebP, GIF or BMP image"),
    (image_bytes("camera.png")[:5000], "image/png", "could not decode"),
    (image_bytes("rocket.jpg"), "image/tiff", "unsupported image MIME type 'image/tiff'"),
    (image_bytes("rocket.jpg"), "text/html", "unsupported image MIME type"),
    (png_header(40000, 40000), "image/png", "over the limit of"),
    (png_header(9000, 8000), "image/png", "9000x8000 = 72000000 pixels, over the limit of 67108864"),
    (encoded(Image.new("RGB", (1, 1))), "image/png", "1x1 pixels; the smallest accepted is 2x2"),
    (encoded(Image.new("RGB", (1, 300))), "image/png", "smallest accepted"),
])
def test_bad_images_are_invalid_arguments(data, mime, message):
    with pytest.raises(InvalidArgumentError, match=message.replace("(", r"\(")):
        decode_image(data, mime, CONFIG)


def test_byte_limit():
    with pytest.raises(InvalidArgumentError, match="over the limit of 1000"):
        decode_image(image_bytes("rocket.jpg"), "image/jpeg", VisionConfig(max_image_bytes=1000))


@pytest.mark.parametrize("source,message", [
    (ImageSource(), "neither data nor url"),
    (ImageSource(data=b"x"), "needs its mime_type"),
    (ImageSource(url="data:image/png;base64,@@@"), "not valid base64"),
    (ImageSource(url="data:;base64,AAAA"), "no media type"),
    (ImageSource(url="data:image/png;base64"), "malformed data URL"),
    (ImageSource(url="https://example.com/cat.png"), "fetching image URLs is disabled"),
    (ImageSource(url="file:///etc/passwd"), "fetching image URLs is disabled"),
])
def test_bad_sources(source, message):
    with pytest.raises(InvalidArgumentError, match=message):
        resolve(source, CONFIG)


def test_url_allow_list():
    config = VisionConfig(allowed_url_hosts=("images.example.com", "*.cdn.example.org"))
    assert host_allowed("images.example.com", config.allowed_url_hosts)
    assert host_allowed("a.b.cdn.example.org", config.allowed_url_hosts)
    assert not host_allowed("cdn.example.org.evil.com", config.allowed_url_hosts)
    assert not host_allowed("example.com", config.allowed_url_hosts)
    with pytest.raises(InvalidArgumentError, match="not in the server's allow-list"):
        resolve(ImageSource(url="http://169.254.169.254/latest/meta-data"), config)
    with pytest.raises(InvalidArgumentError, match="must be data:, http: or https:"):
        resolve(ImageSource(url="ftp://images.example.com/x.png"), config)


def test_allow_listed_url_is_fetched_and_redirects_are_not_followed():
    import http.server
    import threading

    body = image_bytes("rocket.jpg")

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            if self.path == "/rocket.jpg":
                self.send_response(200)
                self.send_header("Content-Type", "image/jpeg")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
            else:
                self.send_response(302)
                self.send_header("Location", "http://169.254.169.254/")
                self.end_headers()

        def log_message(self, *args):
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        base = f"http://127.0.0.1:{httpd.server_port}"
        config = VisionConfig(allowed_url_hosts=("127.0.0.1",))
        assert resolve(ImageSource(url=base + "/rocket.jpg"), config) == (body, "image/jpeg")
        with pytest.raises(InvalidArgumentError, match="redirects are not followed"):
            resolve(ImageSource(url=base + "/elsewhere"), config)
    finally:
        httpd.shutdown()
