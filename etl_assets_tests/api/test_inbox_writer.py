"""Receiving an upload in pieces into the inbox (`placing.InboxWriter`, `upload_name`)."""

import hashlib
from pathlib import Path

import pytest

from etl_assets.services.imports.placing import (
    BadFileName,
    InboxWriter,
    UnsupportedFileType,
    UploadTooLarge,
    upload_name,
)


def _files(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


def test_pieces_are_published_whole_with_their_size_and_hash(tmp_path: Path) -> None:
    with InboxWriter(tmp_path, "acme", "sales.csv") as writer:
        for piece in (b"transaction_id,", b"sku\n", b"T1,A\n"):
            writer.write(piece)
        placed = writer.finish()

    assert placed.path == tmp_path / "acme" / "sales.csv"
    assert placed.path.read_bytes() == b"transaction_id,sku\nT1,A\n"
    assert (placed.size_bytes, placed.sha256) == (
        24,
        hashlib.sha256(b"transaction_id,sku\nT1,A\n").hexdigest(),
    )
    assert _files(tmp_path / "acme") == ["sales.csv"]


def _abandon(writer: InboxWriter, parts: list[str]) -> None:
    with writer:
        writer.write(b"transaction_id,sku\n")
        parts.extend(_files(writer.directory))
        raise ConnectionError("the client went away")


def test_leaving_before_finish_removes_the_part_file(tmp_path: Path) -> None:
    parts: list[str] = []

    with pytest.raises(ConnectionError):
        _abandon(InboxWriter(tmp_path, "acme", "sales.csv"), parts)

    assert len(parts) == 1
    assert parts[0].endswith(".part")
    assert _files(tmp_path / "acme") == []


def test_a_piece_past_the_limit_raises_and_removes_the_part_file(tmp_path: Path) -> None:
    writer = InboxWriter(tmp_path, "acme", "sales.csv", max_bytes=10)
    writer.open()
    writer.write(b"0123456789")

    with pytest.raises(UploadTooLarge, match="over the upload limit of 10 bytes"):
        writer.write(b"x")

    assert _files(tmp_path / "acme") == []


@pytest.mark.parametrize(
    ("received", "name"),
    [
        ("products.csv", "products.csv"),
        ("../../products.csv", "products.csv"),
        ("C:\\exports\\sales.csv.gz", "sales.csv.gz"),
        ("Ventas año 2025.XLSX", "Ventas año 2025.XLSX"),
    ],
)
def test_a_received_name_keeps_its_last_part(received: str, name: str) -> None:
    assert upload_name(received) == name


@pytest.mark.parametrize(
    ("received", "error", "reason"),
    [
        ("", BadFileName, "empty"),
        ("exports/", BadFileName, "empty"),
        (".products.csv", BadFileName, "starts with a dot"),
        ("..", BadFileName, "starts with a dot"),
        ("pro\x00ducts.csv", BadFileName, "control characters"),
        ("pro\x1bducts.csv", BadFileName, "control characters"),
        ("é" * 100 + ".csv", BadFileName, "file name of 204 bytes"),
        ("products.csv.part", UnsupportedFileType, "unsupported file type"),
        ("report.pdf", UnsupportedFileType, "unsupported file type"),
    ],
)
def test_a_bad_received_name_is_refused_with_the_reason(
    received: str, error: type[Exception], reason: str
) -> None:
    with pytest.raises(error, match=reason):
        upload_name(received)
