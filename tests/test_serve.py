"""`svgfeat serve`: the HTTP API with a real client (urllib) on 127.0.0.1 and the page in headless Chromium."""

import io
import json
import re
import threading
import urllib.error
import urllib.request
import uuid

import pytest
from _retrieval_helpers import chromium, photo_folder, run_chromium, tiny_cache

import svgfeat
from conftest import require_extra
from svgfeat.errors import CacheError

faiss = require_extra("faiss")  # the [faiss] extra: skipped without it locally, a failure under CI=true


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    from svgfeat.heads.retrieval import FaissIndex
    from svgfeat.serve.server import make_server, serve_in_thread

    cache = tiny_cache("test_tiny")
    path = FaissIndex().fit(cache).save(tmp_path_factory.mktemp("srv") / "g.faiss")
    srv = make_server(str(path), svgfeat.create_model("test_tiny"), "127.0.0.1", 0, max_upload=2_000_000,
                      max_concurrent=2, caches={"other": tiny_cache("test_tiny_dino").root, "same": cache.root},
                      body_timeout=1.5)
    thread = serve_in_thread(srv)
    yield srv, cache
    srv.shutdown()
    srv.server_close()
    thread.join(5)


def call(srv, path, data=None, ctype=None, method=None):
    """(status, parsed JSON or raw bytes)."""
    req = urllib.request.Request(srv.url + path, data=data, method=method)
    if ctype:
        req.add_header("Content-Type", ctype)
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            body, status, rtype = r.read(), r.status, r.headers.get("Content-Type", "")
    except urllib.error.HTTPError as e:
        body, status, rtype = e.read(), e.code, e.headers.get("Content-Type", "")
    return status, (json.loads(body) if rtype.startswith("application/json") else body)


def image_bytes(cache, i):
    return (photo_folder() / "imgs" / cache.paths[i]).read_bytes()


def multipart(fields: dict, files: dict):
    b = uuid.uuid4().hex
    out = io.BytesIO()
    for k, v in fields.items():
        out.write(f'--{b}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n'.encode())
    for k, (name, data) in files.items():
        out.write(f'--{b}\r\nContent-Disposition: form-data; name="{k}"; filename="{name}"\r\n'
                  f"Content-Type: application/octet-stream\r\n\r\n".encode() + data + b"\r\n")
    out.write(f"--{b}--\r\n".encode())
    return out.getvalue(), f"multipart/form-data; boundary={b}"


def test_loopback_by_default_and_info(server):
    srv, cache = server
    assert srv.server_address[0] == "127.0.0.1" and srv.server_address[1] > 0
    status, info = call(srv, "/api/info")
    assert status == 200 and info["ntotal"] == len(cache) and info["factory"] == "Flat"
    assert info["provenance"]["encoder"]["model"] == "test_tiny" and info["encoder_loaded"] is True
    status, page = call(srv, "/")
    assert status == 200 and b"/api/search" in page


def test_search_by_upload_raw_and_multipart(server):
    srv, cache = server
    status, r = call(srv, "/api/search?k=3", image_bytes(cache, 2), "image/png")
    assert status == 200, r
    assert r["ids"][0] == 2 and r["scores"][0] > 0.999 and len(r["ids"]) == 3
    assert r["paths"][0] == cache.paths[2] and r["labels"] == [-1, -1, -1]
    body, ctype = multipart({"k": "2"}, {"image": ("x.jpg", image_bytes(cache, 5))})
    status, r = call(srv, "/api/search", body, ctype)
    assert status == 200 and r["ids"][0] == 5 and len(r["ids"]) == 2


def test_search_by_row_and_cache_row(server):
    srv, cache = server
    status, r = call(srv, "/api/search", json.dumps({"row": 4, "k": 5}).encode(), "application/json")
    assert status == 200 and r["ids"][0] == 4 and len(r["ids"]) == 5
    status, r = call(srv, "/api/search?k=1", json.dumps({"cache_row": "same:6"}).encode(), "application/json")
    assert status == 200 and r["ids"] == [6]
    status, r = call(srv, "/api/search?k=1", json.dumps({"cache_row": {"cache": "index", "row": 5}}).encode(),
                     "application/json")
    assert status == 200 and r["ids"] == [5]
    status, r = call(srv, "/api/search", json.dumps({"cache_row": "other:0"}).encode(), "application/json")
    assert status == 409 and "model: index has 'test_tiny'" in r["error"]
    assert str(tiny_cache("test_tiny_dino").root) not in r["error"]


def test_cache_row_never_takes_a_server_path(server):
    """Only the caches the server was started with, by name; existing and missing paths answer alike."""
    srv, cache = server
    answers = set()
    for cr in ("/etc:0", "/no/such/dir:0", f"{cache.root}:0", "../cache:0", {"cache": "/etc", "row": 0},
               {"cache": str(cache.root), "row": 0}):
        status, r = call(srv, "/api/search", json.dumps({"cache_row": cr}).encode(), "application/json")
        assert status == 400 and "this server's caches ['index', 'other', 'same']" in r["error"], r
        answers.add(r["error"].rsplit("got cache", 1)[0])
    assert len(answers) == 1  # no file-system oracle


def test_api_info_shows_no_server_paths(server):
    srv, cache = server
    status, info = call(srv, "/api/info")
    assert status == 200 and info["caches"] == ["index", "other", "same"]
    text = json.dumps(info)
    assert str(cache.root) not in text and str(photo_folder()) not in text
    strings = []

    def walk(v):
        if isinstance(v, dict):
            [walk(x) for x in v.values()]
        elif isinstance(v, list):
            [walk(x) for x in v]
        elif isinstance(v, str):
            strings.append(v)

    walk(info)
    assert not [x for x in strings if x.startswith("/")], strings
    assert info["provenance"]["cache"] == "index"


@pytest.mark.parametrize("body", [b'{"row": 1e309}', b'{"row": Infinity}', b'{"row": NaN}', b'{"row": -Infinity}',
                                  b'{"row": true}', b'{"row": 1.0}', b'{"row": "\xc2\xb2"}', b'{"row": [1]}',
                                  b'{"row": null}', b"[" * 100000 + b"]" * 100000,
                                  b'{"a":' * 50000 + b"1" + b"}" * 50000, b'{"k": true, "row": 1}',
                                  b'{"k": 1e309, "row": 1}', b'{"row": 1, "region": 5}',
                                  b'{"row": 1, "aggregate": ["max"]}', b'{"image": [1e309]}',
                                  b'{"image": {"a": 1}}', b'{"cache_row": 12}', b'{"cache_row": ["a", 1]}',
                                  b'{"cache_row": "same:1e309"}', b'{"cache_row": "same:true"}', b'"row"', b"12"])
def test_malformed_json_is_4xx(server, body):
    srv, cache = server
    status, r = call(srv, "/api/search", body, "application/json")
    assert 400 <= status < 500 and isinstance(r, dict) and "error" in r, (status, r)
    assert "internal error" not in r["error"]


def raw_request(srv, data: bytes, timeout=20) -> tuple[int, bytes]:
    """Send raw bytes on a loopback socket; (status, whole answer). Bounded by ``timeout``."""
    import socket

    host, port = srv.server_address[:2]
    with socket.create_connection((host, port), timeout=timeout) as s:
        s.sendall(data)
        chunks = []
        while True:
            try:
                c = s.recv(65536)
            except TimeoutError:
                break
            if not c:
                break
            chunks.append(c)
            if b"\r\n\r\n" in b"".join(chunks) and len(chunks) > 50:
                break
    out = b"".join(chunks)
    m = re.match(rb"HTTP/1\.[01] (\d{3})", out)
    return (int(m.group(1)) if m else 0), out


@pytest.mark.parametrize("tail", [b"\xb2", b"\xc2\xb2", b"%C2%B2", b"\xd9\xa3", b"1\xb9", b"99999999999999999999999",
                                  b"-1", b"+1", b" 1", b"0x1"])
def test_thumb_ids_are_ascii_digits(server, tail):
    srv, _ = server
    status, out = raw_request(srv, b"GET /thumb/" + tail + b" HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert 400 <= status < 500, out[:300]


def test_stalled_body_gets_408_and_oversized_413(server):
    import time

    srv, _ = server
    t0 = time.monotonic()
    status, out = raw_request(srv, b"POST /api/search HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                                   b"Content-Length: 100\r\n\r\n{\"row\":", timeout=20)
    assert status == 408 and time.monotonic() - t0 < 15, out[:300]
    status, out = raw_request(srv, b"POST /api/search HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\n"
                                   b"Content-Length: 99999999999999\r\n\r\n")
    assert status == 413, out[:300]
    status, out = raw_request(srv, b"POST /api/search HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\n"
                                   b"Content-Length: \xb2\r\n\r\n")
    assert status == 400, out[:300]
    status, r = call(srv, "/api/info")
    assert status == 200  # still serving


def test_ipv6_loopback(tmp_path):
    import socket

    from svgfeat.heads.retrieval import FaissIndex
    from svgfeat.serve.server import make_server, serve_in_thread

    try:
        socket.socket(socket.AF_INET6).close()
    except OSError:
        pytest.skip("no IPv6 on this machine")
    path = FaissIndex().fit(tiny_cache("test_tiny")).save(tmp_path / "g.faiss")
    srv = make_server(str(path), None, "::1", 0)
    serve_in_thread(srv)
    try:
        assert srv.url.startswith("http://[::1]:") and srv.is_loopback
        status, r = call(srv, "/api/search", json.dumps({"row": 2}).encode(), "application/json")
        assert status == 200 and r["ids"][0] == 2
    finally:
        srv.shutdown()
        srv.server_close()


def test_bad_requests_get_4xx_json_and_the_server_survives(server):
    srv, cache = server
    status, r = call(srv, "/api/search", b"definitely not an image", "image/jpeg")
    assert status == 400 and "not a decodable image" in r["error"]
    status, r = call(srv, "/api/search", b"\x89PNG\r\n\x1a\n" + b"\0" * 100, "image/png")
    assert status == 400 and "not a decodable image" in r["error"]
    status, r = call(srv, "/api/search", b"\xff" * 2_500_000, "image/jpeg")
    assert status == 413 and "exceeds the limit of 2000000 bytes" in r["error"]
    status, r = call(srv, "/api/search?k=0", image_bytes(cache, 0), "image/png")
    assert status == 400 and "k must be in [1, 100]" in r["error"]
    status, r = call(srv, "/api/search?k=abc", image_bytes(cache, 0), "image/png")
    assert status == 400 and "integer" in r["error"]
    status, r = call(srv, "/api/search", b"{not json", "application/json")
    assert status == 400 and "invalid JSON" in r["error"]
    status, r = call(srv, "/api/search", json.dumps({"row": 999}).encode(), "application/json")
    assert status == 400 and "row must be in" in r["error"]
    status, r = call(srv, "/api/search", b"x", "text/plain")
    assert status == 415
    status, r = call(srv, "/api/search", b"", "image/png")
    assert status == 400 and "empty" in r["error"]
    status, r = call(srv, "/nope")
    assert status == 404 and "no such endpoint" in r["error"]
    status, r = call(srv, "/thumb/999")
    assert status == 404 and "no image with id 999" in r["error"]
    status, r = call(srv, "/api/info")
    assert status == 200  # still serving


def test_thumbnails(server):
    srv, cache = server
    status, jpeg = call(srv, "/thumb/3")
    assert status == 200 and jpeg[:3] == b"\xff\xd8\xff"
    from PIL import Image

    assert max(Image.open(io.BytesIO(jpeg)).size) <= 160


def test_bounded_concurrency_answers_503_when_saturated(server):
    srv, cache = server
    for _ in range(srv.max_concurrent):  # occupy every slot as running searches would
        assert srv.slots.acquire(blocking=False)
    try:
        status, r = call(srv, "/api/search", json.dumps({"row": 0}).encode(), "application/json")
        assert status == 503 and "busy" in r["error"]
        status, _ = call(srv, "/api/info")  # cheap endpoints keep working
        assert status == 200
    finally:
        for _ in range(srv.max_concurrent):
            srv.slots.release()
    # concurrent clients within the limit all succeed
    results = []

    def worker(i):
        results.append(call(srv, "/api/search?k=1", json.dumps({"row": i}).encode(), "application/json"))

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(2)]
    [t.start() for t in threads]
    [t.join(60) for t in threads]
    assert sorted(r[1]["ids"][0] for r in results if r[0] == 200) == [0, 1]


def test_encoder_must_match_and_uploads_need_one(tmp_path):
    from svgfeat.heads.retrieval import FaissIndex
    from svgfeat.serve.server import make_server, serve_in_thread

    path = FaissIndex().fit(tiny_cache("test_tiny")).save(tmp_path / "g.faiss")
    with pytest.raises(CacheError, match="test_tiny_dino"):
        make_server(str(path), svgfeat.create_model("test_tiny_dino"), port=0)
    srv = make_server(str(path), None, port=0)
    serve_in_thread(srv)
    try:
        status, r = call(srv, "/api/search", image_bytes(tiny_cache("test_tiny"), 0), "image/png")
        assert status == 400 and "--model/--dinov3/--svg" in r["error"]
        status, r = call(srv, "/api/search", json.dumps({"row": 1}).encode(), "application/json")
        assert status == 200 and r["ids"][0] == 1
    finally:
        srv.shutdown()
        srv.server_close()


def test_page_renders_neighbours_in_headless_chromium(server):
    if chromium() is None:
        pytest.skip("chromium is not installed (apt-get install -y chromium): page not checked in a browser")
    srv, cache = server
    dom = run_chromium(f"{srv.url}/?row=3&k=4", "--dump-dom").stdout
    info = re.search(r'<div id="info">(.*?)</div>', dom)
    assert info and f"{len(cache)} vectors x 64" in info.group(1), dom[-3000:]  # the page's JS fetched /api/info
    ids = re.findall(r'<figure class="result" data-id="(\d+)">', dom)
    assert len(ids) == 4 and ids[0] == "3"  # ... and ran a search, rendering neighbours as thumbnails
    assert re.search(r'<img src="/thumb/3"', dom) and "4 results" in dom


def test_serve_command_runs_and_stops_on_ctrl_c(tmp_path):
    import os
    import signal
    import subprocess
    import sys

    from svgfeat.heads.retrieval import FaissIndex

    cache = tiny_cache("test_tiny")
    path = FaissIndex().fit(cache).save(tmp_path / "g.faiss")
    proc = subprocess.Popen([sys.executable, "-c", "from svgfeat.cli import main; main()", "serve", str(path),
                             "--port", "0", "--model", "test_tiny", "--max-upload", "1MB"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        line = proc.stdout.readline()
        m = re.search(r"on (http://127\.0\.0\.1:\d+)", line)
        assert m, line + proc.stderr.read() if proc.poll() is not None else line

        class Srv:
            url = m.group(1)

        status, info = call(Srv, "/api/info")
        assert status == 200 and info["ntotal"] == len(cache)
        status, r = call(Srv, "/api/search?k=2", image_bytes(cache, 3), "image/jpeg")
        assert status == 200 and r["ids"][0] == 3
        status, r = call(Srv, "/api/search", b"\0" * 1_200_000, "image/jpeg")
        assert status == 413
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            out, _ = proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, _ = proc.communicate()
    assert proc.returncode == 0 and "stopped" in out
