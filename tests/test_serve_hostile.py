"""`svgfeat serve` under hostile requests (loopback only, bounded loops): huge numbers anywhere are 4xx,
never 500, and ``--body-timeout`` bounds the whole body, not each recv."""

import json
import socket
import time

import pytest
from _retrieval_helpers import tiny_cache

import svgfeat
from svgfeat.errors import DataError

HUGE = "9" * 5000  # beyond Python's int max str digits (4300)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    from svgfeat.heads.retrieval import FaissIndex
    from svgfeat.serve.server import make_server, serve_in_thread

    cache = tiny_cache("test_tiny")
    path = FaissIndex().fit(cache).save(tmp_path_factory.mktemp("srv") / "g.faiss")
    srv = make_server(str(path), svgfeat.create_model("test_tiny"), "127.0.0.1", 0, max_upload=100_000,
                      max_concurrent=2, caches={"same": cache.root}, body_timeout=2)
    thread = serve_in_thread(srv)
    yield srv
    srv.shutdown()
    srv.server_close()
    thread.join(5)


def raw(srv, request: bytes, trickle: float = 0.0, budget: float = 30.0) -> tuple[int, bytes]:
    """Send ``request`` over a fresh loopback socket (its body one byte per ``trickle`` s when > 0, for at
    most ``budget`` s); returns (status, body)."""
    host, port = srv.server_address[:2]
    with socket.create_connection((host, port), timeout=budget) as s:
        head, _, body = request.partition(b"\r\n\r\n")
        s.sendall(head + b"\r\n\r\n")
        t0 = time.monotonic()
        if trickle:
            for b in body:
                if time.monotonic() - t0 > budget:
                    break
                try:
                    s.sendall(bytes([b]))
                except OSError:  # the server answered and closed
                    break
                time.sleep(trickle)
        else:
            s.sendall(body)
        data = b""
        while b"\r\n\r\n" not in data or len(data) < 12:
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
        head, _, rest = data.partition(b"\r\n\r\n")
        length = int(dict(ln.split(b": ", 1) for ln in head.split(b"\r\n")[1:] if b": " in ln).get(
            b"Content-Length", b"0"))
        while len(rest) < length:
            chunk = s.recv(65536)
            if not chunk:
                break
            rest += chunk
    return int(head.split()[1]), rest


def post(srv, path: str, body: bytes, ctype="application/json", **kw):
    req = (f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: {ctype}\r\nContent-Length: {len(body)}\r\n"
           "Connection: close\r\n\r\n").encode() + body
    return raw(srv, req, **kw)


@pytest.mark.parametrize("body", [
    '{"row": %s}' % HUGE, '{"row": -%s}' % HUGE, '{"k": %s, "row": 0}' % HUGE, '{"row": 0, "k": 1e%s}' % HUGE,
    '{"cache_row": "same:%s"}' % HUGE, '{"cache_row": {"cache": "same", "row": %s}}' % HUGE,
    '{"row": 0, "region": "%s:1,0:1"}' % HUGE, '{"row": 0.%s}' % HUGE], ids=lambda b: b[:14])
def test_huge_numbers_in_json_are_400(server, body):
    status, out = post(server, "/api/search", body.encode())
    assert status == 400, out[:300]
    assert json.loads(out)["status"] == 400


@pytest.mark.parametrize("query", [f"k={HUGE}", f"region={HUGE}:1,0:1", f"region=0:1,0:{HUGE}"], ids=["k", "r0", "c1"])
def test_huge_numbers_in_the_query_string_are_400(server, query):
    status, out = post(server, f"/api/search?{query}", b'{"row": 0}')
    assert status == 400, out[:300]


def test_huge_numbers_in_paths_and_headers_are_4xx(server):
    status, _ = raw(server, f"GET /thumb/{HUGE} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
    assert 400 <= status < 500
    status, _ = raw(server, (f"POST /api/search HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                             f"Content-Length: {HUGE[:4000]}\r\nConnection: close\r\n\r\n").encode())
    assert 400 <= status < 500
    status, _ = raw(server, "GET /api/info HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
    assert status == 200  # still serving


def test_body_timeout_bounds_the_whole_body(server):
    """One byte every 0.5 s never stalls a single recv for 2 s, but the whole body takes far longer."""
    body = b'{"row": 0, "k": 3, "pad": "' + b"x" * 40 + b'"}'
    t0 = time.monotonic()
    status, out = post(server, "/api/search", body, trickle=0.5, budget=40)
    waited = time.monotonic() - t0
    assert status == 408, out[:300]
    assert waited < 0.5 * len(body)  # answered before the trickle ended
    status, _ = post(server, "/api/search", b'{"row": 0, "k": 3}')
    assert status == 200


def test_cli_query_with_a_huge_row_is_one_line():
    from svgfeat.serve.engine import parse_query

    cache = tiny_cache("test_tiny")
    with pytest.raises(DataError):
        parse_query(f"{cache.root}:{HUGE}")
