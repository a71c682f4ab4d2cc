"""The Supabase Storage stand-in (scripts/fakes/storage_standin.py) against supabase-py's own
storage client: what it serves, and each thing it refuses as Storage refuses it (HTTP 400 with the
real status in the body's `statusCode`, supabase/storage src/http/error-handler.ts)."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator

import httpx
import jwt
import pytest
from helpers import images
from helpers.net import SERVICE_ROLE_KEY, free_port
from helpers.storage import BUCKET, put_signed
from storage3 import SyncStorageClient
from storage3.exceptions import StorageApiError

from lib.config import DEV_JWT_SECRET
from lib.errors import NotFoundError, UnavailableError
from lib.storage import Storage


@pytest.fixture
def client(storage_url: str) -> Iterator[SyncStorageClient]:
    headers = {"apikey": SERVICE_ROLE_KEY, "Authorization": f"Bearer {SERVICE_ROLE_KEY}"}
    with SyncStorageClient(
        storage_url + "/", headers, http_client=httpx.Client(timeout=10)
    ) as built:
        yield built


@pytest.fixture
def storage(storage_url: str) -> Iterator[Storage]:
    built = Storage(storage_url, SERVICE_ROLE_KEY, BUCKET)
    yield built
    built.close()


def new_path(ext: str = "png") -> str:
    return f"{uuid.uuid4()}/{uuid.uuid4().hex}.{ext}"


def refusal(caught: pytest.ExceptionInfo[StorageApiError]) -> tuple[str, str]:
    return str(caught.value.status), caught.value.code


def test_a_signed_upload_stores_the_file_and_the_service_key_reads_it_back(
    client: SyncStorageClient, storage_url: str
) -> None:
    path, data = new_path(), images.png(text="hello")
    signed = client.from_(BUCKET).create_signed_upload_url(path)
    assert signed["signed_url"].startswith(f"{storage_url}/object/upload/sign/{BUCKET}/{path}?")

    uploaded = put_signed(storage_url, path, signed["token"], data, "image/png")

    assert uploaded.full_path == f"{BUCKET}/{path}"
    assert client.from_(BUCKET).download(path) == data
    info = client.from_(BUCKET).info(path)
    assert (info["size"], info["content_type"], info["name"]) == (len(data), "image/png", path)


def test_the_upload_token_is_storages_claims_signed_with_the_jwt_secret_for_two_hours(
    client: SyncStorageClient,
) -> None:
    path = new_path()
    token = client.from_(BUCKET).create_signed_upload_url(path)["token"]

    claims = jwt.decode(token, DEV_JWT_SECRET, algorithms=["HS256"])

    assert (claims["url"], claims["scope"], claims["upsert"]) == (
        f"{BUCKET}/{path}",
        "upload",
        False,
    )
    assert claims["exp"] - claims["iat"] == 7200


def test_a_ranged_read_answers_206_with_the_total_size(
    storage: Storage, client: SyncStorageClient
) -> None:
    path, data = new_path(), images.png(pad=1000)
    put_signed(
        storage.url,
        path,
        client.from_(BUCKET).create_signed_upload_url(path)["token"],
        data,
        "image/png",
    )

    head, size = storage.head(path, 16)

    assert (head, size) == (data[:16], len(data))


def test_a_missing_object_is_storages_not_found(
    client: SyncStorageClient, storage: Storage
) -> None:
    with pytest.raises(StorageApiError) as caught:
        client.from_(BUCKET).download(new_path())
    assert refusal(caught) == ("404", "not_found")
    with pytest.raises(NotFoundError):
        storage.head(new_path(), 16)


def test_a_token_signed_with_another_secret_is_refused(storage_url: str) -> None:
    path = new_path()
    forged = jwt.encode(
        {"url": f"{BUCKET}/{path}", "scope": "upload", "upsert": False, "exp": time.time() + 60},
        "another-secret-that-is-at-least-32-characters-long",
        algorithm="HS256",
    )
    with pytest.raises(StorageApiError) as caught:
        put_signed(storage_url, path, forged, images.png(), "image/png")
    assert refusal(caught) == ("400", "InvalidJWT")


def test_an_expired_upload_token_is_refused(storage_url: str) -> None:
    path = new_path()
    expired = jwt.encode(
        {"url": f"{BUCKET}/{path}", "scope": "upload", "upsert": False, "exp": time.time() - 1},
        DEV_JWT_SECRET,
        algorithm="HS256",
    )
    with pytest.raises(StorageApiError) as caught:
        put_signed(storage_url, path, expired, images.png(), "image/png")
    assert refusal(caught) == ("400", "ExpiredToken")


def test_a_token_for_another_object_is_refused(client: SyncStorageClient, storage_url: str) -> None:
    token = client.from_(BUCKET).create_signed_upload_url(new_path())["token"]
    with pytest.raises(StorageApiError) as caught:
        put_signed(storage_url, new_path(), token, images.png(), "image/png")
    assert refusal(caught) == ("400", "InvalidSignature")


def test_a_second_upload_to_the_same_path_is_refused_without_upsert(
    client: SyncStorageClient, storage_url: str
) -> None:
    path = new_path()
    token = client.from_(BUCKET).create_signed_upload_url(path)["token"]
    put_signed(storage_url, path, token, images.png(), "image/png")

    with pytest.raises(StorageApiError) as caught:
        put_signed(storage_url, path, token, images.png(text="swapped"), "image/png")

    assert refusal(caught) == ("409", "Duplicate")
    assert client.from_(BUCKET).download(path) == images.png()


def test_a_file_over_the_buckets_size_limit_is_refused(
    client: SyncStorageClient, storage_url: str
) -> None:
    path = new_path()
    token = client.from_(BUCKET).create_signed_upload_url(path)["token"]
    with pytest.raises(StorageApiError) as caught:
        put_signed(storage_url, path, token, images.png(pad=300 * 1024), "image/png")
    assert refusal(caught) == ("413", "Payload too large")
    with pytest.raises(StorageApiError):
        client.from_(BUCKET).download(path)


def test_a_declared_type_the_bucket_does_not_allow_is_refused_whatever_the_bytes(
    client: SyncStorageClient, storage_url: str
) -> None:
    path = new_path()
    token = client.from_(BUCKET).create_signed_upload_url(path)["token"]
    with pytest.raises(StorageApiError) as caught:
        put_signed(storage_url, path, token, images.png(), "image/gif")
    assert refusal(caught) == ("415", "invalid_mime_type")


def test_the_bucket_checks_the_declared_type_only_so_a_gif_declared_png_is_stored(
    client: SyncStorageClient, storage_url: str
) -> None:
    path = new_path()
    token = client.from_(BUCKET).create_signed_upload_url(path)["token"]
    put_signed(storage_url, path, token, images.gif(), "image/png")
    assert client.from_(BUCKET).download(path) == images.gif()  # the producer must check bytes


@pytest.mark.parametrize(
    "key",
    [
        "not-a-jwt",
        jwt.encode({"role": "service_role"}, "another-secret-that-is-at-least-32-chars", "HS256"),
        jwt.encode({"role": "authenticated", "sub": str(uuid.uuid4())}, DEV_JWT_SECRET, "HS256"),
    ],
    ids=["garbage", "another secret", "a user's token"],
)
def test_anything_but_the_service_key_is_refused_for_signing_and_reading(
    storage_url: str, key: str
) -> None:
    headers = {"apikey": key, "Authorization": f"Bearer {key}"}
    with SyncStorageClient(
        storage_url + "/", headers, http_client=httpx.Client(timeout=10)
    ) as other:
        with pytest.raises(StorageApiError) as caught:
            other.from_(BUCKET).create_signed_upload_url(new_path())
        assert refusal(caught)[0] in ("400", "403")
        with pytest.raises(StorageApiError):
            other.from_(BUCKET).download(new_path())
    wrong = Storage(storage_url, key, BUCKET)
    with pytest.raises(UnavailableError):
        wrong.head(new_path(), 16)
    wrong.close()


@pytest.mark.parametrize("method", ["POST", "GET"])
def test_a_path_that_climbs_out_of_the_bucket_is_refused(storage_url: str, method: str) -> None:
    # The SDK refuses dot segments itself; a hostile client may send them encoded.
    route = "object/upload/sign" if method == "POST" else "object"
    response = httpx.request(
        method,
        f"{storage_url}/{route}/{BUCKET}/a/%2e%2e/%2e%2e/outside",
        headers={"Authorization": f"Bearer {SERVICE_ROLE_KEY}"},
    )
    assert response.status_code == 400
    assert response.json()["code"] == "InvalidKey"


def test_ping_answers_for_the_bucket_and_fails_for_a_missing_one_a_wrong_key_or_no_server(
    storage: Storage, storage_url: str
) -> None:
    storage.ping()
    cases = [
        (Storage(storage_url, SERVICE_ROLE_KEY, "no-such-bucket"), NotFoundError),
        (Storage(storage_url, "not-a-jwt", BUCKET), UnavailableError),
        (
            Storage(f"http://127.0.0.1:{free_port()}/storage/v1", SERVICE_ROLE_KEY, BUCKET),
            UnavailableError,
        ),
    ]
    for other, error in cases:
        with pytest.raises(error):
            other.ping()
        other.close()
