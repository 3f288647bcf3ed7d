"""The `file` field of a multipart/form-data body, streamed: parsed chunk by chunk as it
arrives (python-multipart's push parser), never spooled to memory or to a temporary file."""

from collections.abc import AsyncIterator

from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser, parse_options_header

from etl_assets.services.imports.placing import UploadTooLarge

FIELD = "file"


class MultipartError(ValueError):
    """The body is not a form with one `file` part."""


class NotMultipart(MultipartError):
    """The body is not multipart/form-data at all."""


class FilePart:
    """The one `file` part of a form: `filename()` reads up to its headers, then `data()`
    yields its bytes and reads the rest of the body (other fields are skipped unread).

    At most `max_body_bytes` of body are read, else `UploadTooLarge`. A body that breaks off
    before the form's closing boundary raises `MultipartError`: its file would be cut short.
    """

    def __init__(self, content_type: str, body: AsyncIterator[bytes], max_body_bytes: int) -> None:
        media_type, options = parse_options_header(content_type)
        if media_type != b"multipart/form-data":
            raise NotMultipart(f"the body must be multipart/form-data with a `{FIELD}` field")
        boundary = options.get(b"boundary")
        if not boundary:
            raise MultipartError("the multipart/form-data content type has no boundary")
        self._body = body
        self._max_body_bytes = max_body_bytes
        self._body_bytes = 0
        self._parser = MultipartParser(
            boundary,
            callbacks={
                "on_part_begin": self._part_begin,
                "on_header_field": self._header_field,
                "on_header_value": self._header_value,
                "on_header_end": self._header_end,
                "on_headers_finished": self._headers_finished,
                "on_part_data": self._part_data,
                "on_part_end": self._part_end,
                "on_end": self._end,
            },
        )
        self._headers: dict[bytes, bytes] = {}
        self._header_name = b""
        self._header_value = b""
        self._in_file = False
        self._filename: str | None = None
        self._pieces: list[bytes] = []
        self._ended = False
        self._problem: str | None = None

    async def filename(self) -> str:
        """The file name the client gave the `file` part (unchecked)."""
        while self._filename is None:
            if self._ended:
                raise MultipartError(f"the form has no `{FIELD}` part")
            await self._feed()
        return self._filename

    async def data(self) -> AsyncIterator[bytes]:
        """The `file` part's bytes, as they arrive."""
        while True:
            pieces, self._pieces = self._pieces, []
            for piece in pieces:
                yield piece
            if self._ended:
                return
            await self._feed()

    async def _feed(self) -> None:
        chunk = await anext(self._body, None)
        if chunk is None:
            raise MultipartError("the body ended before the form's closing boundary")
        self._body_bytes += len(chunk)
        if self._body_bytes > self._max_body_bytes:
            raise UploadTooLarge(f"body over the upload limit of {self._max_body_bytes} bytes")
        try:
            self._parser.write(chunk)
        except MultipartParseError as exc:
            raise MultipartError(f"malformed multipart body: {exc}") from exc
        if self._problem:
            raise MultipartError(self._problem)

    def _part_begin(self) -> None:
        self._headers = {}

    def _header_field(self, data: bytes, start: int, end: int) -> None:
        self._header_name += data[start:end]

    def _header_value(self, data: bytes, start: int, end: int) -> None:
        self._header_value += data[start:end]

    def _header_end(self) -> None:
        self._headers[self._header_name.lower()] = self._header_value
        self._header_name, self._header_value = b"", b""

    def _headers_finished(self) -> None:
        _disposition, options = parse_options_header(self._headers.get(b"content-disposition"))
        if options.get(b"name") != FIELD.encode():
            return
        if self._filename is not None:
            self._problem = f"the form has more than one `{FIELD}` part"
            return
        raw = options.get(b"filename")
        if raw is None:
            self._problem = f"the `{FIELD}` part has no filename"
            return
        try:
            # Browsers send the name's UTF-8 bytes; the parser gave them back as latin-1.
            self._filename = raw.decode("utf-8")
        except UnicodeDecodeError:
            self._problem = f"the `{FIELD}` part's filename is not UTF-8"
            return
        self._in_file = True

    def _part_data(self, data: bytes, start: int, end: int) -> None:
        if self._in_file:
            self._pieces.append(data[start:end])

    def _part_end(self) -> None:
        self._in_file = False

    def _end(self) -> None:
        self._ended = True
