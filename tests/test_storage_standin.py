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


def uploaded(client: SyncStorageClient, storage_url: str, path: str) -> None:
    token = client.from_(BUCKET).create_signed_upload_url(path)["token"]
    put_signed(storage_url, path, token, images.png(), "image/png")


def test_remove_deletes_the_named_objects_answers_them_and_skips_missing_ones(
    client: SyncStorageClient, storage_url: str, storage: Storage
) -> None:
    folder = str(uuid.uuid4())
    kept, gone = f"{folder}/{uuid.uuid4().hex}.png", f"{folder}/{uuid.uuid4().hex}.png"
    uploaded(client, storage_url, kept)
    uploaded(client, storage_url, gone)
    missing = f"{folder}/{uuid.uuid4().hex}.png"

    rows = client.from_(BUCKET).remove([gone, missing])

    assert [row["name"] for row in rows] == [gone]  # the rows deleted; the missing one skipped
    assert storage.list(folder) == [kept.split("/")[1]]
    assert client.from_(BUCKET).remove([gone]) == []  # again: nothing, and no error
    assert storage.remove([gone, missing]) == []


def test_remove_takes_exact_names_never_a_folder(
    client: SyncStorageClient, storage_url: str, storage: Storage
) -> None:
    folder = str(uuid.uuid4())
    path = f"{folder}/{uuid.uuid4().hex}.png"
    uploaded(client, storage_url, path)

    assert client.from_(BUCKET).remove([folder, f"{folder}/"]) == []

    assert storage.list(folder) == [path.split("/")[1]]


def test_list_answers_a_folders_entries_by_name_with_limit_and_offset(
    client: SyncStorageClient, storage_url: str
) -> None:
    folder = str(uuid.uuid4())
    names = sorted(f"{uuid.uuid4().hex}.png" for _ in range(3))
    for name in names:
        uploaded(client, storage_url, f"{folder}/{name}")

    listed = client.from_(BUCKET).list(folder)
    page = client.from_(BUCKET).list(folder, {"limit": 1, "offset": 1})
    top = client.from_(BUCKET).list("", {"limit": 100_000})

    assert [e["name"] for e in listed] == names
    assert listed[0]["metadata"]["size"] == len(images.png())
    assert [e["name"] for e in page] == names[1:2]
    assert next(e for e in top if e["name"] == folder)["id"] is None  # a folder has no row


@pytest.mark.parametrize(
    ("method", "route", "body", "message"),
    [
        ("DELETE", "object", {}, "must have required property 'prefixes'"),
        ("DELETE", "object", {"prefixes": []}, "fewer than 1 items"),
        ("DELETE", "object", {"prefixes": "a/b.png"}, "must be array"),
        ("POST", "object/list", {}, "must have required property 'prefix'"),
        ("POST", "object/list", {"prefix": "", "limit": 0}, "limit must be >= 1"),
        ("POST", "object/list", {"prefix": "", "sortBy": {"column": "size"}}, "allowed values"),
    ],
)
def test_a_body_storages_schema_refuses_is_a_400(
    storage_url: str, method: str, route: str, body: dict[str, object], message: str
) -> None:
    response = httpx.request(
        method,
        f"{storage_url}/{route}/{BUCKET}",
        json=body,
        headers={"Authorization": f"Bearer {SERVICE_ROLE_KEY}"},
    )
    assert response.status_code == 400
    assert response.json()["statusCode"] == "400"
    assert message in response.json()["message"]


@pytest.mark.parametrize(
    "key",
    [
        "",
        "not-a-jwt",
        jwt.encode({"role": "authenticated", "sub": str(uuid.uuid4())}, DEV_JWT_SECRET, "HS256"),
    ],
    ids=["no key", "garbage", "a user's token"],
)
def test_list_and_remove_refuse_anything_but_the_service_key(
    client: SyncStorageClient, storage_url: str, storage: Storage, key: str
) -> None:
    path = new_path()
    uploaded(client, storage_url, path)
    headers = {"apikey": key, "Authorization": f"Bearer {key}"} if key else {}
    with SyncStorageClient(
        storage_url + "/", headers, http_client=httpx.Client(timeout=10)
    ) as other:
        with pytest.raises(StorageApiError) as caught:
            other.from_(BUCKET).remove([path])
        assert refusal(caught)[0] in ("400", "403")
        with pytest.raises(StorageApiError):
            other.from_(BUCKET).list(path.split("/")[0])
    wrong = Storage(storage_url, key or "x", BUCKET)
    with pytest.raises(UnavailableError):
        wrong.remove([path])
    wrong.close()
    assert storage.list(path.split("/")[0]) == [path.split("/")[1]]  # still there
