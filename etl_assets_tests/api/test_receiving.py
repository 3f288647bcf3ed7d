"""Uploads through the real server: `PUT` and multipart `POST` land the exact bytes in the
company's inbox, limits and bad names leave nothing behind, duplicates are named."""

import dataclasses
import hashlib
import socket
from collections.abc import Iterator
from pathlib import Path

import dagster as dg
import httpx
import pytest

from etl_assets.api.app import create_app
from etl_assets.api.settings import ApiSettings
from etl_assets.samples import products_frame, write_csv
from etl_assets.services.access.tokens import create_token
from etl_assets.services.imports import journal
from etl_assets.services.imports.registration import upload_id_for
from etl_assets_tests.api.conftest import LIMIT, Api
from etl_assets_tests.api.importing import tick
from etl_assets_tests.api.serving import serving
from etl_assets_tests.polling import wait_for


@pytest.fixture
def sample(tmp_path: Path) -> bytes:
    """A small valid products CSV."""
    return write_csv(products_frame(5, seed=1), tmp_path / "sample.csv").read_bytes()


def _files(inbox: Path) -> list[str]:
    """Every file under the company's inbox directory, hidden ones included."""
    return sorted(str(p.relative_to(inbox)) for p in inbox.rglob("*") if p.is_file())


def test_put_lands_the_exact_bytes_in_the_company_s_inbox(
    api: Api, client: httpx.Client, company: str, inbox: Path, sample: bytes
) -> None:
    answer = client.put("/api/v1/uploads/products march.csv", content=sample)

    assert answer.status_code == 202
    sha256 = hashlib.sha256(sample).hexdigest()
    upload_id = upload_id_for(company, sha256)
    assert answer.json() == {
        "upload_id": upload_id,
        "status_url": f"{api.url}/api/v1/uploads/{upload_id}",
        "filename": "products march.csv",
        "size_bytes": len(sample),
        "sha256": sha256,
    }
    assert _files(inbox) == ["products march.csv"]
    assert (inbox / "products march.csv").read_bytes() == sample


def test_multipart_post_lands_the_exact_bytes_of_the_file_field(
    client: httpx.Client, company: str, inbox: Path, sample: bytes
) -> None:
    answer = client.post(
        "/api/v1/uploads",
        data={"note": "ignored", "other": "also ignored"},
        files={"file": ("catalogue.csv", sample, "text/csv")},
    )

    assert answer.status_code == 202
    assert answer.json()["upload_id"] == upload_id_for(company, hashlib.sha256(sample).hexdigest())
    assert answer.json()["filename"] == "catalogue.csv"
    assert _files(inbox) == ["catalogue.csv"]
    assert (inbox / "catalogue.csv").read_bytes() == sample


def test_a_name_already_waiting_is_kept_and_the_upload_gets_another(
    client: httpx.Client, inbox: Path, sample: bytes
) -> None:
    client.put("/api/v1/uploads/products.csv", content=sample)

    answer = client.put("/api/v1/uploads/products.csv", content=sample + b"x,y,z,1,2,3\n")

    renamed = answer.json()["filename"]
    assert renamed.startswith("products-")
    assert renamed.endswith(".csv")
    assert (inbox / "products.csv").read_bytes() == sample
    assert (inbox / renamed).read_bytes() == sample + b"x,y,z,1,2,3\n"


@pytest.mark.parametrize(
    ("path", "landed"),
    [
        ("/api/v1/uploads/..%2F..%2Fescape.csv", "escape.csv"),
        ("/api/v1/uploads/globex%2Fproducts.csv", "products.csv"),
        ("/api/v1/uploads/C:%5Cexports%5Cproducts.csv", "products.csv"),
    ],
)
def test_a_path_in_the_name_is_cut_to_its_last_part(
    client: httpx.Client, inbox: Path, sample: bytes, path: str, landed: str
) -> None:
    answer = client.put(path, content=sample)

    assert answer.json()["filename"] == landed
    assert _files(inbox) == [landed]


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        (".hidden.csv", "starts with a dot"),
        ("bad%00name.csv", "control characters"),
        ("bad%09name.csv", "control characters"),
        ("x" * 250 + ".csv", "at most 200 are accepted"),
    ],
)
def test_a_bad_name_is_400_and_leaves_nothing(
    client: httpx.Client, inbox: Path, sample: bytes, name: str, reason: str
) -> None:
    answer = client.put(f"/api/v1/uploads/{name}", content=sample)

    assert answer.status_code == 400
    assert reason in answer.json()["error"]
    assert not inbox.exists()


def test_an_unsupported_type_is_415_and_leaves_nothing(
    client: httpx.Client, inbox: Path, sample: bytes
) -> None:
    put = client.put("/api/v1/uploads/products.txt", content=sample)
    post = client.post("/api/v1/uploads", files={"file": ("products.json", sample)})
    raw = client.post("/api/v1/uploads", content=sample, headers={"Content-Type": "text/csv"})

    assert [put.status_code, post.status_code, raw.status_code] == [415, 415, 415]
    assert "unsupported file type" in put.json()["error"]
    assert "multipart/form-data" in raw.json()["error"]
    assert not inbox.exists()


def test_a_content_length_over_the_limit_is_413_before_the_body_is_read(
    client: httpx.Client, inbox: Path
) -> None:
    answer = client.put("/api/v1/uploads/big.csv", content=b"x" * (LIMIT + 1))

    assert answer.status_code == 413
    assert "over the upload limit" in answer.json()["error"]
    # The company's directory is made when a body starts being written: it never was.
    assert not inbox.exists()


def _chunks(total: int, size: int = 16 * 1024) -> Iterator[bytes]:
    for start in range(0, total, size):
        yield b"x" * min(size, total - start)


def test_a_chunked_body_growing_past_the_limit_is_413_and_leaves_nothing(
    client: httpx.Client, inbox: Path
) -> None:
    answer = client.put("/api/v1/uploads/big.csv", content=_chunks(2 * LIMIT))

    assert answer.status_code == 413
    assert inbox.is_dir()
    assert _files(inbox) == []


def test_a_multipart_file_growing_past_the_limit_is_413_and_leaves_nothing(
    client: httpx.Client, inbox: Path
) -> None:
    answer = client.post("/api/v1/uploads", files={"file": ("big.csv", b"x" * (LIMIT + 1))})

    assert answer.status_code == 413
    assert inbox.is_dir()
    assert _files(inbox) == []


NO_FILE_PART = b'--B\r\nContent-Disposition: form-data; name="note"\r\n\r\nhello\r\n--B--\r\n'
CUT_SHORT = b'--B\r\nContent-Disposition: form-data; name="file"; filename="a.csv"\r\n\r\nsku,na'
TWO_FILES = (
    b'--B\r\nContent-Disposition: form-data; name="file"; filename="a.csv"\r\n\r\nsku\r\n'
    b'--B\r\nContent-Disposition: form-data; name="file"; filename="b.csv"\r\n\r\nsku\r\n--B--\r\n'
)


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (NO_FILE_PART, "the form has no `file` part"),
        (CUT_SHORT, "the body ended before the form's closing boundary"),
        (TWO_FILES, "the form has more than one `file` part"),
    ],
)
def test_a_form_without_exactly_one_complete_file_part_is_400_and_leaves_nothing(
    client: httpx.Client, inbox: Path, body: bytes, reason: str
) -> None:
    answer = client.post(
        "/api/v1/uploads",
        content=body,
        headers={"Content-Type": "multipart/form-data; boundary=B"},
    )

    assert answer.status_code == 400
    assert answer.json() == {"error": reason}
    assert _files(inbox) == []


def test_an_empty_body_is_400_and_leaves_nothing(client: httpx.Client, inbox: Path) -> None:
    answer = client.put("/api/v1/uploads/empty.csv", content=b"")

    assert answer.status_code == 400
    assert answer.json() == {"error": "the upload is empty"}
    assert _files(inbox) == []


def test_a_client_that_disconnects_mid_body_leaves_nothing(settings: ApiSettings) -> None:
    app = create_app(dataclasses.replace(settings, max_upload_bytes=64 * 1024**2))
    inbox = settings.inbox_dir / "acme"
    with serving(app) as url:
        token = create_token(app.state.engine, "acme").token
        address = httpx.URL(url)
        with socket.create_connection((address.host, address.port)) as sock:
            sock.sendall(
                b"PUT /api/v1/uploads/dropped.csv HTTP/1.1\r\n"
                + f"Host: {address.host}\r\nAuthorization: Bearer {token}\r\n".encode()
                + f"Content-Length: {10 * 1024**2}\r\n\r\n".encode()
            )
            sock.sendall(b"x" * 1024**2)
            wait_for(lambda: inbox.is_dir() and _files(inbox) != [], 10, "a part file")
        wait_for(lambda: _files(inbox) == [], 10, "the part file to be removed")


def test_the_same_bytes_twice_name_the_first_and_are_journalled_duplicate(
    api: Api, client: httpx.Client, sample: bytes
) -> None:
    first = client.put("/api/v1/uploads/products.csv", content=sample).json()
    second = client.put("/api/v1/uploads/products-again.csv", content=sample).json()
    with dg.DagsterInstance.ephemeral() as instance:
        tick(instance, api.settings)

    assert "duplicate_of" not in first
    assert second["duplicate_of"] == first["upload_id"] == second["upload_id"]
    with api.app.state.engine.connect() as conn:
        duplicate = journal.get(conn, f"{first['upload_id']}.dup-1")
    assert duplicate is not None
    assert duplicate.status == "duplicate"


def test_bytes_already_journalled_are_answered_as_a_duplicate(
    api: Api, client: httpx.Client, sample: bytes
) -> None:
    first = client.put("/api/v1/uploads/products.csv", content=sample).json()
    with dg.DagsterInstance.ephemeral() as instance:
        tick(instance, api.settings)

    again = client.post("/api/v1/uploads", files={"file": ("again.csv", sample)}).json()

    assert again["duplicate_of"] == first["upload_id"]
