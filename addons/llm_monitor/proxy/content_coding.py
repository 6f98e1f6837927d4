"""Incremental Content-Encoding codecs for bodies that are passed on as they arrive.

mitmproxy hands a streamed body over still encoded; reading usage out of a gzip stream
means decoding it chunk by chunk, and changing it means encoding it again the same way.
"""

from __future__ import annotations

import zlib
from typing import Protocol

import brotli
import zstandard


class TooLarge(ValueError):
    """Decoding would produce more than the caller allowed: the body is not read."""


class Decoder(Protocol):
    def decode(self, data: bytes, limit: int) -> bytes:
        """The bytes `data` decodes to, if at most `limit`; else TooLarge (a compression
        bomb is found after decoding `limit` bytes, never more)."""
        ...


class Encoder(Protocol):
    def encode(self, data: bytes) -> bytes: ...
    def finish(self) -> bytes: ...


def _too_large(limit: int) -> TooLarge:
    return TooLarge(f"decodes to more than {limit} bytes")


class _Identity:
    def decode(self, data: bytes, limit: int) -> bytes:
        if len(data) > limit:
            raise _too_large(limit)
        return data

    def encode(self, data: bytes) -> bytes:
        return data

    def finish(self) -> bytes:
        return b""


class _ZlibDecoder:
    def __init__(self) -> None:
        self._obj = zlib.decompressobj(wbits=47)  # 32 + 15: gzip or zlib header, detected

    def decode(self, data: bytes, limit: int) -> bytes:
        out = self._obj.decompress(data, limit + 1)
        while self._obj.eof and self._obj.unused_data:  # a gzip body may hold several members
            rest = self._obj.unused_data
            self._obj = zlib.decompressobj(wbits=47)
            out += self._obj.decompress(rest, limit + 1 - len(out))
        if len(out) > limit or self._obj.unconsumed_tail:
            raise _too_large(limit)
        return out


class _BrotliDecoder:
    def __init__(self) -> None:
        self._obj = brotli.Decompressor()

    def decode(self, data: bytes, limit: int) -> bytes:
        out = self._obj.process(data, output_buffer_limit=limit + 1)
        if len(out) > limit or not self._obj.can_accept_more_data():
            raise _too_large(limit)
        return out


class _ZstdDecoder:
    # zstandard's decompressobj has no output limit: fed in slices small enough that one
    # slice cannot expand far (a 4-byte RLE block is at most 128 KiB).
    # RFC 9659 caps an HTTP zstd window at 8 MiB; a larger one is refused, not allocated.
    _SLICE = 64
    _MAX_WINDOW = 8 * 1024 * 1024

    def __init__(self) -> None:
        decompressor = zstandard.ZstdDecompressor(max_window_size=self._MAX_WINDOW)
        self._obj = decompressor.decompressobj(read_across_frames=True)

    def decode(self, data: bytes, limit: int) -> bytes:
        out = bytearray()
        view = memoryview(data)
        for start in range(0, len(view), self._SLICE):
            out += self._obj.decompress(view[start : start + self._SLICE])
            if len(out) > limit:
                raise _too_large(limit)
        return bytes(out)


def decode_body(data: bytes, content_encoding: str, limit: int) -> bytes:
    """A whole body decoded, if it decodes to at most `limit` bytes; else TooLarge.
    ValueError for an encoding that is not supported or data that is not valid."""
    try:
        return decoder_for(content_encoding).decode(data, limit)
    except (zlib.error, brotli.error, zstandard.ZstdError) as e:
        raise ValueError(f"invalid {content_encoding} body: {e}") from None


class _ZlibEncoder:
    def __init__(self, wbits: int) -> None:
        self._obj = zlib.compressobj(wbits=wbits)

    def encode(self, data: bytes) -> bytes:
        return self._obj.compress(data) + self._obj.flush(zlib.Z_SYNC_FLUSH)

    def finish(self) -> bytes:
        return self._obj.flush(zlib.Z_FINISH)


class _BrotliEncoder:
    def __init__(self) -> None:
        self._obj = brotli.Compressor()

    def encode(self, data: bytes) -> bytes:
        return self._obj.process(data) + self._obj.flush()

    def finish(self) -> bytes:
        return self._obj.finish()


class _ZstdEncoder:
    def __init__(self) -> None:
        self._obj = zstandard.ZstdCompressor().compressobj()

    def encode(self, data: bytes) -> bytes:
        return self._obj.compress(data) + self._obj.flush(zstandard.COMPRESSOBJ_FLUSH_BLOCK)

    def finish(self) -> bytes:
        return self._obj.flush()


def _normalise(content_encoding: str) -> str:
    return content_encoding.strip().lower()


SUPPORTED = {"", "identity", "gzip", "x-gzip", "deflate", "br", "zstd"}


def is_supported(content_encoding: str) -> bool:
    return _normalise(content_encoding) in SUPPORTED


def decoder_for(content_encoding: str) -> Decoder:
    """A decoder for one of `SUPPORTED`; ValueError for anything else (e.g. chained codings)."""
    match _normalise(content_encoding):
        case "" | "identity":
            return _Identity()
        case "gzip" | "x-gzip" | "deflate":
            return _ZlibDecoder()
        case "br":
            return _BrotliDecoder()
        case "zstd":
            return _ZstdDecoder()
    raise ValueError(f"unsupported content-encoding: {content_encoding!r}")


def encoder_for(content_encoding: str) -> Encoder:
    match _normalise(content_encoding):
        case "" | "identity":
            return _Identity()
        case "gzip" | "x-gzip":
            return _ZlibEncoder(wbits=31)
        case "deflate":
            return _ZlibEncoder(wbits=15)
        case "br":
            return _BrotliEncoder()
        case "zstd":
            return _ZstdEncoder()
    raise ValueError(f"unsupported content-encoding: {content_encoding!r}")
