"""images: where an image may be fetched from (Label Studio paths with lsal's key, cloud URIs through
the resolve endpoint, allowlisted hosts without the key), redirects, size and pixel limits, decoding.

Two real HTTP servers on 127.0.0.1 play Label Studio's file endpoints and an outside image host;
every request they receive is recorded, so a test can check what was (not) sent where.
"""

from __future__ import annotations

import base64
import io
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

import numpy as np
import pytest
import requests
from PIL import Image

from backend.images import ImagePolicy, ImageSkipped, decode_image, fetch_image, load_image

AUTH = {"Authorization": "Token secret-ls-key"}


def png(width: int = 8, height: int = 8, color: tuple[int, int, int] = (200, 10, 10)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (width, height), color).save(buf, "PNG")
    return buf.getvalue()


@dataclass
class Host:
    """A real HTTP server: path (with query) -> (status, headers, body); records every request."""

    routes: dict[str, tuple[int, dict[str, str], bytes]] = field(default_factory=dict)
    seen: list[tuple[str, dict[str, str]]] = field(default_factory=list)
    url: str = ""


@pytest.fixture
def hosts() -> Iterator[tuple[Host, Host]]:
    servers = []
    made = []
    for _ in range(2):
        host = Host()

        class Handler(BaseHTTPRequestHandler):
            h = host

            def do_GET(self) -> None:
                self.h.seen.append((self.path, dict(self.headers)))
                status, headers, body = self.h.routes.get(self.path, (404, {}, b"not found"))
                self.send_response(status)
                for k, v in headers.items():
                    self.send_header(k, v)
                if "Content-Length" not in headers and "X-Unsized" not in headers:
                    self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        host.url = f"http://127.0.0.1:{server.server_address[1]}"
        servers.append(server)
        made.append(host)
    try:
        yield made[0], made[1]
    finally:
        for server in servers:
            server.shutdown()
            server.server_close()


def policy(ls: Host, allowed: tuple[str, ...] = (), **kw: int) -> ImagePolicy:
    return ImagePolicy(label_studio_url=ls.url, allowed_hosts=frozenset(allowed), **kw)  # type: ignore[arg-type]


def fetch(ref: str, pol: ImagePolicy, task_id: int = 7) -> bytes:
    with requests.Session() as s:
        return fetch_image(ref, task_id, pol, s, AUTH)


def test_uploaded_file_is_fetched_from_label_studio_with_lsal_key(hosts: tuple[Host, Host]) -> None:
    ls, _ = hosts
    ls.routes["/data/upload/3/a.png"] = (200, {"Content-Type": "image/png"}, png())
    assert fetch("/data/upload/3/a.png", policy(ls)) == png()
    assert ls.seen[0][0] == "/data/upload/3/a.png"
    assert ls.seen[0][1]["Authorization"] == "Token secret-ls-key"
    # The same file named by its absolute URL on Label Studio is the same request.
    assert fetch(f"{ls.url}/data/upload/3/a.png", policy(ls)) == png()
    assert ls.seen[1][1]["Authorization"] == "Token secret-ls-key"


def test_local_files_storage_path_keeps_its_query(hosts: tuple[Host, Host]) -> None:
    ls, _ = hosts
    ls.routes["/data/local-files/?d=imgs/b.png"] = (200, {}, png())
    assert fetch("/data/local-files/?d=imgs/b.png", policy(ls)) == png()


@pytest.mark.parametrize(
    "ref",
    ["/api/projects/1", "/data/upload/../../api/projects/1", "/user/login", "/api/tasks?project=1", "relative.png"],
)
def test_other_label_studio_paths_are_refused_without_a_request(hosts: tuple[Host, Host], ref: str) -> None:
    ls, _ = hosts
    with pytest.raises(ImageSkipped) as info:
        fetch(ref, policy(ls))
    assert info.value.reason in ("not_a_file_path", "bad_reference")
    assert ls.seen == []


def test_cloud_uri_goes_through_the_resolve_endpoint_and_the_presigned_url_gets_no_key(
    hosts: tuple[Host, Host],
) -> None:
    ls, bucket = hosts
    uri = "s3://bucket/cats/1.png"
    b64 = base64.urlsafe_b64encode(uri.encode()).decode()
    ls.routes[f"/tasks/7/resolve/?fileuri={b64}"] = (303, {"Location": f"{bucket.url}/signed?sig=abc"}, b"")
    bucket.routes["/signed?sig=abc"] = (200, {}, png())
    assert fetch(uri, policy(ls)) == png()
    assert ls.seen[0][1]["Authorization"] == "Token secret-ls-key"
    assert bucket.seen[0][0] == "/signed?sig=abc"
    assert "Authorization" not in bucket.seen[0][1]
    assert parse_qs(urlsplit(ls.seen[0][0]).query)["fileuri"] == [b64]


def test_outside_host_only_when_allowlisted_and_never_with_the_key(hosts: tuple[Host, Host]) -> None:
    ls, cdn = hosts
    cdn.routes["/x.png"] = (200, {}, png())
    with pytest.raises(ImageSkipped) as info:
        fetch(f"{cdn.url}/x.png", policy(ls))
    assert info.value.reason == "host_not_allowed"
    assert "AL_IMAGE_HOSTS" in str(info.value)
    assert cdn.seen == []
    host_port = cdn.url.removeprefix("http://")
    assert fetch(f"{cdn.url}/x.png", policy(ls, (host_port,))) == png()
    assert "Authorization" not in cdn.seen[0][1]


def test_redirect_from_an_allowed_host_to_another_host_is_refused(hosts: tuple[Host, Host]) -> None:
    ls, cdn = hosts
    cdn.routes["/x.png"] = (302, {"Location": "http://169.254.169.254/latest/meta-data/"}, b"")
    with pytest.raises(ImageSkipped) as info:
        fetch(f"{cdn.url}/x.png", policy(ls, (cdn.url.removeprefix("http://"),)))
    assert info.value.reason == "host_not_allowed"


@pytest.mark.parametrize("ref", ["file:///etc/passwd", "ftp://x/y.png", "gopher://127.0.0.1:6379/_INFO"])
def test_other_schemes_are_refused(hosts: tuple[Host, Host], ref: str) -> None:
    with pytest.raises(ImageSkipped, match="cannot fetch"):
        fetch(ref, policy(hosts[0]))


def test_download_stops_at_max_bytes(hosts: tuple[Host, Host]) -> None:
    ls, _ = hosts
    big = png(300, 300) + b"\0" * 5000
    ls.routes["/data/upload/1/big.png"] = (200, {}, big)
    with pytest.raises(ImageSkipped, match=f"image is {len(big)} bytes > max 1000") as info:
        fetch("/data/upload/1/big.png", policy(ls, max_bytes=1000))
    assert info.value.reason == "too_large"
    # A server that announces no length (HTTP/1.0, body until close) is cut off while streaming.
    ls.routes["/data/upload/1/unsized.png"] = (200, {"X-Unsized": "1"}, big)
    with pytest.raises(ImageSkipped, match="larger than max 1000 bytes"):
        fetch("/data/upload/1/unsized.png", policy(ls, max_bytes=1000))


def test_http_errors_and_dead_hosts_are_skips(hosts: tuple[Host, Host]) -> None:
    ls, _ = hosts
    with pytest.raises(ImageSkipped, match="HTTP 404") as info:
        fetch("/data/upload/1/missing.png", policy(ls))
    assert info.value.reason == "fetch_failed"
    dead = ImagePolicy(label_studio_url="http://127.0.0.1:9", timeout=2)
    with pytest.raises(ImageSkipped) as info:
        fetch("/data/upload/1/a.png", dead)
    assert info.value.reason == "fetch_failed"


def test_data_uri() -> None:
    ref = "data:image/png;base64," + base64.b64encode(png(4, 4)).decode()
    pol = ImagePolicy(label_studio_url="http://ls.invalid")
    assert fetch(ref, pol) == png(4, 4)
    with pytest.raises(ImageSkipped, match="not valid base64"):
        fetch("data:image/png;base64,@@@", pol)


def test_decompression_bomb_is_refused_from_the_header_before_decoding() -> None:
    # 8,000 x 8,000 of one colour: 64 MP (192 MB as RGB), under 100 KB as PNG; under Pillow's own
    # limits (89 MP warns, 179 MP refuses), above lsal's 40 MP default.
    bomb = io.BytesIO()
    Image.new("L", (8_000, 8_000), 0).save(bomb, "PNG")
    raw = bomb.getvalue()
    assert len(raw) < 2_000_000
    with pytest.raises(ImageSkipped) as info:
        decode_image(raw, ImagePolicy(label_studio_url="http://ls.invalid", max_pixels=40_000_000))
    assert info.value.reason == "too_many_pixels"
    assert "8000x8000" in str(info.value)


@pytest.mark.parametrize("raw", [b"", b"GIF89a-truncated", b"<svg xmlns='http://www.w3.org/2000/svg'/>", png()[:40]])
def test_undecodable_bytes_are_skipped(raw: bytes) -> None:
    with pytest.raises(ImageSkipped) as info:
        decode_image(raw, ImagePolicy(label_studio_url="http://ls.invalid"))
    assert info.value.reason == "undecodable"


def test_decode_gives_rgb_of_the_right_size(hosts: tuple[Host, Host]) -> None:
    ls, _ = hosts
    ls.routes["/data/upload/1/g.png"] = (200, {}, png(5, 3, (1, 2, 3)))
    with requests.Session() as s:
        img = load_image("/data/upload/1/g.png", 1, policy(ls), s, AUTH)
    assert img.mode == "RGB" and img.size == (5, 3)
    assert np.asarray(img)[0, 0].tolist() == [1, 2, 3]


def test_feature_cache_fetches_each_image_once_and_skips_the_broken(hosts: tuple[Host, Host]) -> None:
    from backend.features.image import PixelFeaturizer
    from backend.images import ImageFeatureCache

    ls, _ = hosts
    for i, colour in enumerate([(255, 0, 0), (0, 255, 0), (0, 0, 255)]):
        ls.routes[f"/data/upload/1/{i}.png"] = (200, {}, png(8, 8, colour))
    ls.routes["/data/upload/1/broken.png"] = (200, {}, b"not an image")
    refs = ["/data/upload/1/0.png", "/data/upload/1/broken.png", "/data/upload/1/1.png", "/data/upload/1/missing.png"]
    arrays: dict = {}
    with requests.Session() as s:
        cache = ImageFeatureCache(PixelFeaturizer(), policy(ls), s, lambda: AUTH)
        ids, vectors = cache.vectors(arrays, [10, 11, 12, 13], refs)
        assert ids == [10, 12]
        assert dict(cache.skipped) == {"undecodable": 1, "fetch_failed": 1}
        assert np.array_equal(vectors[0], PixelFeaturizer().features(Image.new("RGB", (8, 8), (255, 0, 0))))
        assert sorted(arrays) == ["image.builtin-v1", "image.builtin-v1.ref"]
        assert arrays["image.builtin-v1"].ids.tolist() == [10, 12]
        seen = len(ls.seen)
        # Again, with one more task and task 12's image replaced: only those two are fetched.
        again = ImageFeatureCache(PixelFeaturizer(), policy(ls), s, lambda: AUTH)
        ids2, vectors2 = again.vectors(arrays, [10, 12, 14], ["/data/upload/1/0.png", "/data/upload/1/2.png", refs[2]])
        assert ids2 == [10, 12, 14]
        assert sorted(p for p, _ in ls.seen[seen:]) == ["/data/upload/1/1.png", "/data/upload/1/2.png"]
        assert np.array_equal(vectors2[0], vectors[0])
        assert np.array_equal(vectors2[2], vectors[1])  # task 14 has task 12's old image
        assert sorted(arrays["image.builtin-v1"].ids.tolist()) == [10, 12, 14]
