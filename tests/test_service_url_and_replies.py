"""What the engine accepts as a service URL and what it believes of a reply (core, no network)."""
from __future__ import annotations

import pytest

from export_map_server_cache.core.errors import CacheError
from export_map_server_cache.core.sources.http_client import (
    HttpResponse,
    ServiceAuthError,
    _check_tile,
    _Retry,
    _retry_after,
    image_problem,
)
from export_map_server_cache.core.sources.service_url import parse_service_url

BASE = "https://host.example/arcgis/rest/services/Folder/World_Topo/MapServer"
PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 20 + b"\x00\x00\x00\x00IEND\xaeB`\x82"
JPEG = b"\xff\xd8\xff\xe0" + b"\x01" * 20 + b"\xff\xd9"


@pytest.mark.parametrize("text", [
    BASE, BASE + "/", BASE + "?f=json", BASE + "/?f=pjson&token=abc", BASE + "/tile/{z}/{y}/{x}",
    BASE + "/tile/%7Bz%7D/%7By%7D/%7Bx%7D", "  " + BASE + "  ", BASE.replace("MapServer",
                                                                            "mapserver"),
])
def test_service_url_forms(text):
    url = parse_service_url(text)
    assert url.base.lower() == BASE.lower()
    assert url.name == "World_Topo"
    assert "token" not in url.url("/tile/1/2/3")


def test_token_and_other_query_parameters():
    url = parse_service_url(BASE + "?token=s3cr3t&f=json&referer=x&blankTile=true")
    assert url.token == "s3cr3t"
    assert url.url("/tile/1/2/3", {"blankTile": "false"}) == (
        BASE + "/tile/1/2/3?referer=x&blankTile=false")
    assert "s3cr3t" not in str(url) and "s3cr3t" not in repr(url.base)


def test_image_server_and_hosted_tiles():
    assert parse_service_url(BASE.replace("MapServer", "ImageServer")).kind == "ImageServer"
    hosted = parse_service_url(
        "https://tiles.arcgis.com/tiles/Org123/arcgis/rest/services/Parcels/MapServer")
    assert hosted.name == "Parcels" and hosted.kind == "MapServer"


@pytest.mark.parametrize("text", [
    "ftp://host/arcgis/rest/services/x/MapServer",
    "https://host/arcgis/rest/services/x/FeatureServer",
    "https://host/arcgis/rest/services/x/VectorTileServer",
    "https://host/arcgis/rest/services?token=SECRET-9",
])
def test_not_a_tile_service(text):
    with pytest.raises(CacheError) as info:
        parse_service_url(text)
    assert "SECRET-9" not in str(info.value)


def test_complete_images_only():
    assert image_problem(PNG) == "" and image_problem(JPEG) == ""
    assert image_problem(JPEG + b"\x00\x00") == ""  # padded after EOI
    assert image_problem(PNG[:-5]) == "truncated PNG"
    assert image_problem(JPEG[:-2]) == "truncated JPEG"
    assert image_problem(b"") == "empty body"
    assert "HTML or JSON" in image_problem(b"<html>error</html>")


def reply(status, body=PNG, **headers):
    headers = {k.replace("_", "-"): v for k, v in headers.items()}
    return HttpResponse(status, {"content-type": "image/png", **headers}, body)


def test_tile_replies():
    assert _check_tile(reply(200)) == PNG
    assert _check_tile(reply(404, b"")) is None
    assert _check_tile(reply(200, blank_tile="true")) is None
    with pytest.raises(_Retry, match="truncated"):
        _check_tile(reply(200, PNG, content_length=str(len(PNG) + 10)))
    assert _check_tile(reply(200, PNG, content_length="5", content_encoding="gzip")) == PNG
    with pytest.raises(_Retry, match="not an image"):
        _check_tile(reply(200, PNG, content_type="text/plain"))
    with pytest.raises(_Retry, match="Error exporting"):
        _check_tile(reply(200, b'{"error":{"code":500,"message":"Error exporting tile"}}'))
    with pytest.raises(ServiceAuthError, match="498"):
        _check_tile(reply(200, b'{"error":{"code":498,"message":"Invalid token"}}'))
    with pytest.raises(_Retry, match="timeout"):
        _check_tile(HttpResponse(None, {}, b"", "", timed_out=True))
    with pytest.raises(_Retry) as info:
        _check_tile(reply(400, b"bad"))
    assert not info.value.retryable
    with pytest.raises(_Retry) as info:
        _check_tile(reply(503, b"", retry_after="7"))
    assert info.value.retryable and info.value.retry_after == 7


def test_retry_after_forms():
    assert _retry_after({"retry-after": "2.5"}) == 2.5
    assert _retry_after({}) is None
    assert _retry_after({"retry-after": "Wed, 21 Oct 2015 07:28:00 GMT"}) == 0.0  # past
    assert _retry_after({"retry-after": "soon"}) is None
