"""`svgfeat serve`: a small standard-library HTTP service over an index (``http.server.ThreadingHTTPServer``).

Endpoints (JSON errors ``{"error": message}`` with a 4xx/5xx status; a request never kills the server):

- ``GET /``: one HTML page (``svgfeat/web/search.html``) to upload an image and see the neighbours.
- ``GET /api/info``: the index summary (factory, metric, size, provenance, recall).
- ``POST /api/search[?k=10]``: body = an image (raw ``image/*`` / ``application/octet-stream`` body, or
  ``multipart/form-data`` with a file field, plus optional field ``k``) or JSON ``{"row": n}`` (a row of the
  index's own cache), ``{"cache_row": "CACHE:ROW"}`` (another cache; provenance-checked), optional ``"k"`` and for
  patch indexes ``"region": "r0:r1,c0:c1"``. Returns ``{"ids", "scores", "paths", "labels", "results"}``.
- ``GET /thumb/<id>``: a JPEG thumbnail of indexed image ``id``.

Limits: uploads above ``max_upload`` bytes get 413 without being read; at most ``max_concurrent`` searches /
thumbnails run at once (others get 503 with ``Retry-After``); ``k`` is capped at ``max_k``.
"""

from __future__ import annotations

import functools
import json
import threading
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
            self._error(400, str(e))
        except (ConfigError, CacheError) as e:
            self._error(400 if isinstance(e, ConfigError) else 409, str(e))
        except SvgfeatError as e:
            self._error(400, str(e))
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
            if not tail.isdigit():
                raise ApiError(404, f"thumbnail id must be a non-negative integer, got {tail!r}")
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
                left = length
                while left > 0:
                    chunk = self.rfile.read(min(left, 1 << 16))
                    if not chunk:
                        break
                    left -= len(chunk)
            raise ApiError(413, f"upload of {length} bytes exceeds the limit of {self.server.max_upload} bytes")
        if length <= 0:
            raise ApiError(400, "empty request body: send an image, or JSON {\"row\": n}")
        body = self.rfile.read(length)
        if len(body) < length:
            self.close_connection = True
            raise ApiError(400, f"request body truncated ({len(body)} of {length} bytes)")
        return body

    def _post(self):
        url = urlsplit(self.path)
        if url.path != "/api/search":
            raise ApiError(404, f"no such endpoint: POST {url.path}")
        body = self._read_body()
        params = {k: v[-1] for k, v in parse_qs(url.query).items()}
        ctype = self.headers.get("Content-Type", "application/octet-stream").split(";")[0].strip().lower()
        query = {}
        if ctype == "application/json":
            try:
                query = json.loads(body)
            except (json.JSONDecodeError, UnicodeDecodeError) as e:
                raise ApiError(400, f"invalid JSON body: {e}") from None
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
        sem = self._slot()
        try:
            results = self.server.run_query(query, k, region, aggregate)
        finally:
            sem.release()
        self._json(200, {"k": k, "ids": [r["id"] for r in results], "scores": [r["score"] for r in results],
                         "paths": [r["path"] for r in results], "labels": [r["label"] for r in results],
                         "results": results})


def _int_param(v, name, lo, hi) -> int:
    try:
        iv = int(v)
    except (TypeError, ValueError):
        raise ApiError(400, f"{name} must be an integer, got {v!r}") from None
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
                 max_concurrent=4, max_k=100, verbose=False):
        self.service, self.max_upload, self.max_k, self.verbose = service, int(max_upload), int(max_k), verbose
        self.max_concurrent = int(max_concurrent)
        if self.max_concurrent < 1 or self.max_upload < 1:
            raise ConfigError("max_concurrent and max_upload must be positive")
        self.slots = threading.BoundedSemaphore(self.max_concurrent)
        self.page = page_html()
        self.info = service.info()
        self.thumb = functools.lru_cache(maxsize=2048)(self._thumb)
        super().__init__((host, port), _Handler)

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host}:{port}"

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
            if isinstance(data, str):
                raise ApiError(400, "'image' must be an uploaded file, not a text field")
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
                cache, row = cr.get("cache"), cr.get("row")
            else:
                cache, _, row = str(cr).rpartition(":")
            if not cache:
                raise ApiError(400, f"cache_row must be 'CACHE:ROW' or {{'cache': ..., 'row': n}}, got {cr!r}")
            return s.by_cache_row(cache, _int_param(row, "row", -(2**62), 2**62), k, region, aggregate)
        raise ApiError(400, "nothing to search: send an image, or JSON {\"row\": n} / {\"cache_row\": \"CACHE:ROW\"}")


def make_server(index, encoder=None, host: str = "127.0.0.1", port: int = 8080, *, max_upload: int = MAX_UPLOAD,
                max_concurrent: int = 4, max_k: int = 100, device="cpu", verbose: bool = False) -> SearchServer:
    """A ready (not yet serving) server; ``port=0`` picks a free port (see ``server.url``).
    Run it with ``server.serve_forever()`` (e.g. in a thread) and stop it with ``server.shutdown()``."""
    service = index if isinstance(index, SearchService) else SearchService(index, encoder, device=device)
    return SearchServer(service, host, port, max_upload=max_upload, max_concurrent=max_concurrent, max_k=max_k,
                        verbose=verbose)


def serve_in_thread(server: SearchServer) -> threading.Thread:
    t = threading.Thread(target=server.serve_forever, name="svgfeat-serve", daemon=True)
    t.start()
    return t


__all__ = ["make_server", "serve_in_thread", "SearchServer", "MAX_UPLOAD", "HTTPStatus"]
