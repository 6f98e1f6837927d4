"""Incremental Content-Encoding codecs for bodies that are passed on as they arrive.

mitmproxy hands a streamed body over still encoded; reading usage out of a gzip stream
means decoding it chunk by chunk, and changing it means encoding it again the same way.
"""

from __future__ import annotations

import zlib
from typing import Protocol

import brotli
import zstandard


class Decoder(Protocol):
    def decode(self, data: bytes) -> bytes: ...


class Encoder(Protocol):
    def encode(self, data: bytes) -> bytes: ...
    def finish(self) -> bytes: ...


class _Identity:
    def decode(self, data: bytes) -> bytes:
        return data

    def encode(self, data: bytes) -> bytes:
        return data

    def finish(self) -> bytes:
        return b""


class _ZlibDecoder:
    def __init__(self) -> None:
        self._obj = zlib.decompressobj(wbits=47)  # 32 + 15: gzip or zlib header, detected

    def decode(self, data: bytes) -> bytes:
        out = self._obj.decompress(data)
        while self._obj.eof and self._obj.unused_data:  # a gzip body may hold several members
            rest = self._obj.unused_data
            self._obj = zlib.decompressobj(wbits=47)
            out += self._obj.decompress(rest)
        return out


class _BrotliDecoder:
    def __init__(self) -> None:
        self._obj = brotli.Decompressor()

    def decode(self, data: bytes) -> bytes:
        return self._obj.process(data)


class _ZstdDecoder:
    def __init__(self) -> None:
        self._obj = zstandard.ZstdDecompressor().decompressobj(read_across_frames=True)

    def decode(self, data: bytes) -> bytes:
        return self._obj.decompress(data)


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
