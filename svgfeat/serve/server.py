"""`svgfeat serve`: a small standard-library HTTP service over an index (``http.server.ThreadingHTTPServer``).

Endpoints (JSON errors ``{"error": message}`` with a 4xx/5xx status; a request never kills the server):

- ``GET /``: one HTML page (``svgfeat/web/search.html``) to upload an image and see the neighbours.
- ``GET /api/info``: the index summary (factory, metric, size, provenance, recall).
- ``POST /api/search[?k=10]``: body = an image (raw ``image/*`` / ``application/octet-stream`` body, or
  ``multipart/form-data`` with a file field, plus optional field ``k``) or JSON ``{"row": n}`` (a row of the
  index's own cache), ``{"cache_row": "NAME:ROW"}`` (a row of a cache the server was started with, by the name
  ``/api/info`` lists under ``caches``; provenance-checked; never a client-chosen path), optional ``"k"`` and for
  patch indexes ``"region": "r0:r1,c0:c1"``. Returns ``{"ids", "scores", "paths", "labels", "results"}``.
- ``GET /thumb/<id>``: a JPEG thumbnail of indexed image ``id``.

Limits: uploads above ``max_upload`` bytes get 413 without being read; a body not received whole within ``body_timeout``
seconds gets 408; at most ``max_concurrent`` searches / thumbnails run at once (others get 503 with
``Retry-After``); ``k`` is capped at ``max_k``. Every malformed request is a 4xx. ``/api/info`` shows no server
paths. Hosts may be IPv4 or IPv6 (``::1``).
"""

from __future__ import annotations

import contextlib
import errno
import functools
import json
import re
import socket
import threading
import time
import traceback
from email.parser import BytesParser
from email.policy import HTTP
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

from ..errors import CacheError, ConfigError, DataError, SvgfeatError
from .engine import SearchService, parse_region

MAX_UPLOAD = 10 * 1024 * 1024


class ApiError(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


PAGE = Path(__file__).resolve().parent.parent / "web" / "search.html"


def page_html() -> bytes:
    return PAGE.read_bytes()


class _Handler(BaseHTTPRequestHandler):
    server_version = "svgfeat"
    protocol_version = "HTTP/1.1"
    timeout = 30  # seconds a client may take to send its request

    # ------------------------------------------------------------------ plumbing
    def log_message(self, fmt, *args):  # quiet unless the server was started verbose
        if self.server.verbose:
            super().log_message(fmt, *args)

    def _send(self, status: int, body: bytes, ctype: str, extra: dict | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store" if ctype.startswith("application/json") else "max-age=3600")
        for k, v in (extra or {}).items():
            self.send_header(k, v)
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _json(self, status: int, obj, extra: dict | None = None) -> None:
        self._send(status, json.dumps(obj).encode(), "application/json; charset=utf-8", extra)

    def _error(self, status: int, message: str, extra: dict | None = None) -> None:
        self._json(status, {"error": message, "status": status}, extra)

    def _guard(self, fn) -> None:
        try:
            fn()
        except ApiError as e:
            self._error(e.status, str(e))
        except DataError as e:
            self._error(400, self.server.redact(str(e)))
        except (ConfigError, CacheError) as e:
            self._error(400 if isinstance(e, ConfigError) else 409, self.server.redact(str(e)))
        except SvgfeatError as e:
            self._error(400, self.server.redact(str(e)))
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True
        except Exception as e:  # noqa: BLE001 - a bad request must never take the server down
            if self.server.verbose:
                traceback.print_exc()
            self.close_connection = True
            self._error(500, f"internal error: {type(e).__name__}: {e}")

    def _slot(self):
        sem = self.server.slots
        if not sem.acquire(blocking=False):
            raise ApiError(503, f"server busy: {self.server.max_concurrent} requests already running; retry")
        return sem

    # ------------------------------------------------------------------ routes
    def do_GET(self):  # noqa: N802 - http.server API
        self._guard(self._get)

    def do_HEAD(self):  # noqa: N802
        self._guard(self._get)

    def do_POST(self):  # noqa: N802
        self._guard(self._post)

    def _get(self):
        url = urlsplit(self.path)
        if url.path in ("/", "/index.html"):
            self._send(200, self.server.page, "text/html; charset=utf-8")
        elif url.path == "/api/info":
            self._json(200, self.server.info)
        elif url.path.startswith("/thumb/"):
            tail = url.path[len("/thumb/"):]
            if not re.fullmatch(r"[0-9]{1,18}", tail):  # ASCII digits only: '²'.isdigit() is True
                raise ApiError(404, f"thumbnail id must be a non-negative integer, got {tail[:40]!r}")
            sem = self._slot()
            try:
                jpeg = self.server.thumb(int(tail))
            finally:
                sem.release()
            self._send(200, jpeg, "image/jpeg")
        elif url.path == "/favicon.ico":
            self._send(204, b"", "image/x-icon")
        else:
            raise ApiError(404, f"no such endpoint: {url.path}")

    def _read_body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            self.close_connection = True
            raise ApiError(411, "chunked uploads are not supported: send a Content-Length")
        try:
            length = int(self.headers.get("Content-Length", "0"))
        except ValueError:
            self.close_connection = True
            raise ApiError(400, "invalid Content-Length header") from None
        if length > self.server.max_upload:
            self.close_connection = True
            if length <= 8 * self.server.max_upload:  # drain it so that the client reads our answer cleanly
                with contextlib.suppress(ApiError):
                    self._read_within(length, keep=False)
            raise ApiError(413, f"upload of {length} bytes exceeds the limit of {self.server.max_upload} bytes")
        if length <= 0:
            raise ApiError(400, "empty request body: send an image, or JSON {\"row\": n}")
        body = self._read_within(length)
        if len(body) < length:
            self.close_connection = True
            raise ApiError(400, f"request body truncated ({len(body)} of {length} bytes)")
        return body

    def _read_within(self, length: int, keep: bool = True) -> bytes:
        """Up to ``length`` body bytes, all of them within ``body_timeout`` seconds in total (a body trickled
        a byte at a time cannot hold a worker thread longer); 408 when the time is up."""
        deadline = time.monotonic() + self.server.body_timeout
        parts, got = [], 0
        try:
            while got < length:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError
                self.connection.settimeout(left)
                chunk = self.rfile.read1(min(length - got, 1 << 16))
                if not chunk:
                    break
                got += len(chunk)
                if keep:
                    parts.append(chunk)
        except TimeoutError:
            self.close_connection = True
            raise ApiError(408, f"request body not received within {self.server.body_timeout:g} s") from None
        finally:
            with contextlib.suppress(OSError):
                self.connection.settimeout(self.timeout)
        return b"".join(parts)

    def _post(self):
        url = urlsplit(self.path)
        if url.path != "/api/search":
            raise ApiError(404, f"no such endpoint: POST {url.path}")
        body = self._read_body()
        params = {k: v[-1] for k, v in parse_qs(url.query).items()}
        ctype = self.headers.get("Content-Type", "application/octet-stream").split(";")[0].strip().lower()
        query = {}
        if ctype == "application/json":
            query = _parse_json(body)
            if not isinstance(query, dict):
                raise ApiError(400, "JSON body must be an object like {\"row\": 3, \"k\": 10}")
        elif ctype == "multipart/form-data":
            query = _parse_multipart(self.headers.get("Content-Type"), body)
        elif ctype.startswith("image/") or ctype == "application/octet-stream":
            query = {"image": body}
        else:
            raise ApiError(415, f"unsupported Content-Type {ctype!r}: send an image, multipart/form-data or "
                                "application/json")
        k = _int_param(params.get("k", query.get("k", 10)), "k", 1, self.server.max_k)
        region = parse_region(params.get("region", query.get("region")))
        aggregate = params.get("aggregate", query.get("aggregate", "max"))
        if aggregate not in ("max", "sum"):
            raise ApiError(400, f"aggregate must be 'max' or 'sum', got {str(aggregate)[:40]!r}")
        sem = self._slot()
        try:
            results = self.server.run_query(query, k, region, aggregate)
        finally:
            sem.release()
        self._json(200, {"k": k, "ids": [r["id"] for r in results], "scores": [r["score"] for r in results],
                         "paths": [r["path"] for r in results], "labels": [r["label"] for r in results],
                         "results": results})


def _reject_constant(name):
    raise ApiError(400, f"invalid JSON body: {name} is not a number JSON allows")


def _parse_json(body: bytes):
    """JSON body -> object; 400 for invalid JSON, NaN/Infinity literals, too deep nesting."""
    try:
        return json.loads(body, parse_constant=_reject_constant)
    except (ValueError, UnicodeDecodeError) as e:  # ValueError: also an integer of more than 4300 digits
        raise ApiError(400, f"invalid JSON body: {str(e)[:200]}") from None
    except RecursionError:
        raise ApiError(400, "invalid JSON body: nested too deeply") from None


def _int_param(v, name, lo, hi) -> int:
    """A JSON integer (not a bool, not a float) or a string of ASCII digits -> int in [lo, hi], else 400."""
    if isinstance(v, int) and not isinstance(v, bool):
        iv = v
    elif isinstance(v, str) and re.fullmatch(r"\s*-?[0-9]{1,19}\s*", v):
        iv = int(v)
    else:
        raise ApiError(400, f"{name} must be an integer, got {(v[:40] if isinstance(v, str) else v)!r}")
    if not lo <= iv <= hi:
        raise ApiError(400, f"{name} must be in [{lo}, {hi}], got {iv}")
    return iv


def _parse_multipart(content_type: str, body: bytes) -> dict:
    msg = BytesParser(policy=HTTP).parsebytes(
        b"Content-Type: " + content_type.encode("latin-1") + b"\r\nMIME-Version: 1.0\r\n\r\n" + body)
    if not msg.is_multipart():
        raise ApiError(400, "malformed multipart/form-data body")
    out = {}
    for part in msg.iter_parts():
        name = part.get_param("name", header="content-disposition")
        data = part.get_payload(decode=True) or b""
        if part.get_filename() is not None or name in ("image", "file"):
            out.setdefault("image", data)
        elif name:
            out[name] = data.decode("utf-8", "replace")
    if "image" not in out and not ({"row", "cache_row"} & set(out)):
        raise ApiError(400, "multipart body has no file field (expected a field named 'image')")
    return out


class SearchServer(ThreadingHTTPServer):
    """ThreadingHTTPServer bound to one :class:`SearchService`."""

    daemon_threads = True

    def __init__(self, service: SearchService, host="127.0.0.1", port=8080, max_upload=MAX_UPLOAD,
                 max_concurrent=4, max_k=100, verbose=False, caches: dict | None = None, body_timeout: float = 30):
        self.service, self.max_upload, self.max_k, self.verbose = service, int(max_upload), int(max_k), verbose
        self.max_concurrent = int(max_concurrent)
        if self.max_concurrent < 1 or self.max_upload < 1:
            raise ConfigError("max_concurrent and max_upload must be positive")
        self.body_timeout = float(body_timeout)
        self.slots = threading.BoundedSemaphore(self.max_concurrent)
        self.page = page_html()
        self.caches = _known_caches(service, caches)
        self.info = public_info(service.info(), sorted(self.caches))
        self.thumb = functools.lru_cache(maxsize=2048)(self._thumb)
        self.address_family = _address_family(host, port)
        try:
            super().__init__((host, port), _Handler)
        except OSError as e:
            reason = "the port is already in use" if e.errno == errno.EADDRINUSE else (e.strerror or str(e))
            raise ConfigError(f"cannot listen on {host!r} port {port}: {reason}") from None

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"

    @property
    def is_loopback(self) -> bool:
        import ipaddress

        return ipaddress.ip_address(self.server_address[0].split("%")[0]).is_loopback

    def redact(self, message: str) -> str:
        """An error message with the server's cache folders replaced by their public names."""
        for name, path in sorted(self.caches.items(), key=lambda kv: -len(kv[1])):
            message = message.replace(str(Path(path).resolve()), name).replace(path, name)
        return message

    def _thumb(self, i: int) -> bytes:
        from .thumbs import open_item, thumbnail_jpeg

        paths = self.service.meta.get("paths")
        if paths is None or not 0 <= i < len(paths):
            raise ApiError(404, f"no image with id {i} in this index")
        try:
            return thumbnail_jpeg(open_item(self.service.meta, i))
        except (DataError, OSError) as e:
            raise ApiError(404, f"image {i} cannot be read: {e}") from None

    def run_query(self, query: dict, k: int, region, aggregate: str) -> list[dict]:
        s = self.service
        if "image" in query:
            data = query["image"]
            if not isinstance(data, (bytes, bytearray)):
                raise ApiError(400, "'image' must be an uploaded file, not a text or JSON field")
            from ..data.decode import DecodeError

            try:
                return s.by_image(bytes(data), k, region, aggregate)
            except DecodeError as e:
                raise ApiError(400, f"the upload ({len(data)} bytes) is not a decodable image: {e.reason}"
                               + (f" ({e.detail})" if e.detail else "")) from None
        if "row" in query:
            n = len(s.meta.get("paths") or []) or None
            row = _int_param(query["row"], "row", 0, (n - 1) if n else 2**62)
            return s.by_row(row, k, region, aggregate)
        if "cache_row" in query:
            cr = query["cache_row"]
            if isinstance(cr, dict):
                name, row = cr.get("cache"), cr.get("row")
            elif isinstance(cr, str):
                name, _, row = cr.rpartition(":")
            else:
                name, row = None, None
            if not isinstance(name, str) or name not in self.caches:  # never a path: names listed by /api/info
                shown = name[:40] if isinstance(name, str) else name
                raise ApiError(400, "cache_row must be 'NAME:ROW' or {'cache': NAME, 'row': n} with NAME one of "
                                    f"this server's caches {sorted(self.caches)}, got cache {shown!r}")
            return s.by_cache_row(self.caches[name], _int_param(row, "row", -(2**62), 2**62), k, region,
                                  aggregate)
        raise ApiError(400, "nothing to search: send an image, or JSON {\"row\": n} / {\"cache_row\": \"NAME:ROW\"}")


def make_server(index, encoder=None, host: str = "127.0.0.1", port: int = 8080, *, max_upload: int = MAX_UPLOAD,
                max_concurrent: int = 4, max_k: int = 100, device="cpu", verbose: bool = False,
                caches: dict | None = None, body_timeout: float = 30) -> SearchServer:
    """A ready (not yet serving) server; ``port=0`` picks a free port (see ``server.url``).
    ``caches``: {name: cache folder} that ``cache_row`` queries may name (the index's own source cache is
    always known as ``index`` when present). Run it with ``server.serve_forever()`` (e.g. in a thread) and stop
    it with ``server.shutdown()``."""
    service = index if isinstance(index, SearchService) else SearchService(index, encoder, device=device)
    return SearchServer(service, host, port, max_upload=max_upload, max_concurrent=max_concurrent, max_k=max_k,
                        verbose=verbose, caches=caches, body_timeout=body_timeout)


def _address_family(host: str, port: int) -> int:
    """AF_INET or AF_INET6 for ``host`` (``::1`` works); ConfigError for a host that does not resolve."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except (socket.gaierror, UnicodeError, ValueError) as e:
        raise ConfigError(f"cannot listen on host {host!r}: not an IP address or a resolvable name "
                          f"({getattr(e, 'strerror', None) or e}); e.g. 127.0.0.1, ::1 or 0.0.0.0") from None
    return infos[0][0]


def _known_caches(service: SearchService, caches: dict | None) -> dict:
    """{name: folder} of the caches row queries may use: the index's source cache ('index') plus ``caches``."""
    out = {}
    src = (service.flat.provenance_ or {}).get("cache")
    if src and Path(src).is_dir():
        out["index"] = str(src)
    for name, path in (caches or {}).items():
        if not re.fullmatch(r"[A-Za-z0-9_.-]{1,64}", str(name)) or name == "index":
            raise ConfigError(f"cache name {name!r}: expected 1-64 letters, digits, '_', '.', '-' (not 'index')")
        if not Path(path).is_dir():
            raise ConfigError(f"cache {name!r}: {path} is not a folder")
        from ..cache import open_cache

        open_cache(path)  # a broken or incomplete cache fails now, not at the first query
        out[str(name)] = str(path)
    return out


def public_info(info: dict, cache_names: list) -> dict:
    """The index summary without server paths: the source cache is shown by name, absolute paths are dropped."""

    def scrub(v):
        if isinstance(v, dict):
            return {k: scrub(x) for k, x in v.items() if not (isinstance(x, str) and _is_path(x))}
        if isinstance(v, list):
            return [scrub(x) for x in v if not (isinstance(x, str) and _is_path(x))]
        return v

    out = scrub(info)
    prov = out.get("provenance")
    if isinstance(prov, dict) and (info.get("provenance") or {}).get("cache"):
        prov["cache"] = "index" if "index" in cache_names else None
    out["caches"] = list(cache_names)
    return out


def _is_path(s: str) -> bool:
    return s.startswith(("/", "~", "\\")) or bool(re.match(r"^[A-Za-z]:[\\/]", s)) or "/../" in s


def serve_in_thread(server: SearchServer) -> threading.Thread:
    t = threading.Thread(target=server.serve_forever, name="svgfeat-serve", daemon=True)
    t.start()
    return t


__all__ = ["make_server", "serve_in_thread", "SearchServer", "MAX_UPLOAD", "HTTPStatus"]
