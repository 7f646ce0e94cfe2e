"""Where an image's bytes come from: inline bytes, a data URL, or an http(s) URL
that the server allow-lists (off by default: fetching arbitrary URLs from inside a
cluster lets callers probe it)."""
from __future__ import annotations

import base64
import binascii
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass

from vlmserve.errors import InvalidArgumentError
from vlmserve.vision.config import VisionConfig


@dataclass(frozen=True)
class ImageSource:
    """One image as a request gives it: `data` with its `mime_type`, or a `url`."""

    data: bytes | None = None
    url: str | None = None
    mime_type: str = ""


def resolve(source: ImageSource, config: VisionConfig) -> tuple[bytes, str]:
    """Returns (encoded bytes, MIME type). Blocking (may fetch): call it off the event loop."""
    if source.data is not None and source.url is not None:
        raise InvalidArgumentError("an image has both data and url; give one")
    if source.data is not None:
        if not source.mime_type:
            raise InvalidArgumentError("an image given as bytes needs its mime_type (e.g. image/png)")
        return source.data, source.mime_type
    if source.url:
        if source.url[:5].lower() == "data:":
            return _parse_data_url(source.url, config.max_image_bytes)
        return _fetch(source.url, config)
    raise InvalidArgumentError("an image has neither data nor url")


def _parse_data_url(url: str, max_bytes: int) -> tuple[bytes, str]:
    header, sep, payload = url[5:].partition(",")
    if not sep:
        raise InvalidArgumentError("malformed data URL: no ',' between the media type and the data")
    params = [p.strip() for p in header.split(";")]
    mime = params[0].lower()
    if not mime:
        raise InvalidArgumentError("data URL has no media type (expected e.g. data:image/png;base64,...)")
    # base64 is 4 characters per 3 bytes: reject before decoding a huge payload.
    if len(payload) * 3 // 4 > max_bytes:
        raise InvalidArgumentError(f"image data is over the limit of {max_bytes} bytes")
    if "base64" in (p.lower() for p in params[1:]):
        try:
            data = base64.b64decode(payload, validate=True)
        except (binascii.Error, ValueError) as e:
            raise InvalidArgumentError(f"data URL payload is not valid base64: {e}") from None
    else:
        data = urllib.parse.unquote_to_bytes(payload)
    return data, mime


def host_allowed(host: str, allowed: tuple[str, ...]) -> bool:
    """Exact host names, or "*.example.com" for its subdomains."""
    host = host.lower().rstrip(".")
    for pattern in allowed:
        if pattern.startswith("*.") and host.endswith(pattern[1:]):
            return True
        if host == pattern:
            return True
    return False


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    # A redirect could lead off the allow-list: refuse it.
    def redirect_request(self, req, fp, code, msg, headers, newurl):
        raise InvalidArgumentError(f"image URL redirects (HTTP {code}) to {newurl}; redirects are not followed")


def _fetch(url: str, config: VisionConfig) -> tuple[bytes, str]:
    if not config.allowed_url_hosts:
        raise InvalidArgumentError("fetching image URLs is disabled on this server: send the image bytes or a "
                                   "data URL (or start the server with --allowed-image-hosts)")
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise InvalidArgumentError(f"image URL must be data:, http: or https:, got {url[:64]!r}")
    if not host_allowed(parts.hostname, config.allowed_url_hosts):
        raise InvalidArgumentError(f"image URL host {parts.hostname!r} is not in the server's allow-list")
    opener = urllib.request.build_opener(_NoRedirect, urllib.request.ProxyHandler({}))
    try:
        with opener.open(urllib.request.Request(url, headers={"Accept": "image/*"}),
                         timeout=config.url_timeout_s) as resp:
            data = resp.read(config.max_image_bytes + 1)
            mime = resp.headers.get_content_type()
    except (urllib.error.URLError, OSError, ValueError) as e:
        raise InvalidArgumentError(f"could not fetch image URL {url[:128]!r}: {e}") from None
    if len(data) > config.max_image_bytes:
        raise InvalidArgumentError(f"image at {url[:128]!r} is over the limit of {config.max_image_bytes} bytes")
    return data, mime
