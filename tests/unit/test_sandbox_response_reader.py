"""The sandbox sender's response reader (httptools) over byte streams: framing, keep-alive,
answers in pieces, bytes after an answer, and the malformed answers it refuses."""

from __future__ import annotations

import pytest

from sandbox.dispatch import MAX_HEAD_BYTES, _ResponseReader

CONTENT_LENGTH = (
    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 31\r\n\r\n"
    b'{"code":0,"message":"success"}\n'
)
CHUNKED = (
    b"HTTP/1.1 202 Accepted\r\nTransfer-Encoding: chunked\r\n\r\n"
    b"4;x=1\r\nok!!\r\n3\r\n!!!\r\n0\r\nTrailer: t\r\n\r\n"
)
OK = b"HTTP/1.1 200 OK\r\n"


def _read(data: bytes, eof: bool = False) -> tuple[int, bool] | int | None:
    """(status, reusable) once complete; at `eof` the status the close settled, or None."""
    reader = _ResponseReader()
    got = reader.feed(data)
    return reader.eof() if got is None and eof else got


@pytest.mark.parametrize(
    "data,eof,expected",
    [
        (OK + b"Content-Length: 3\r\n\r\nabc", False, (200, True)),
        (OK + b"Content-Length: 3\r\n\r\nab", False, None),
        (OK + b"Content-Length: 3\r\n\r\nab", True, None),  # cut short: no answer
        (
            b"HTTP/1.1 500 Oops\r\nConnection: close\r\nContent-Length: 0\r\n\r\n",
            False,
            (500, False),
        ),
        (
            b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 0\r\n\r\n",
            False,
            (200, True),
        ),
        (b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok", False, (200, False)),
        (b"HTTP/1.0 200 OK\r\n\r\nbody", False, None),
        (b"HTTP/1.0 200 OK\r\n\r\nbody", True, 200),  # close-delimited: the close ends it
        (OK + b"Transfer-Encoding: gzip\r\n\r\nbody", True, 200),
        (b"HTTP/1.1 204 No Content\r\n\r\n", False, (204, True)),
        (b"HTTP/1.1 304 Not Modified\r\nContent-Length: 2\r\n\r\n", False, (304, True)),
        (OK + b"Transfer-Encoding: chunked\r\n\r\n2\r\nok\r\n", False, None),
        (OK + b"Transfer-Encoding: chunked\r\n\r\n2\r\nok\r\n", True, None),
        (OK + b"Transfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n", False, (200, True)),
        (
            b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 202 Accepted\r\nContent-Length: 2\r\n\r\nok",
            False,
            (202, True),
        ),
        (b"HTTP/1.1 100 Continue\r\n\r\n", True, None),
        (
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: x\r\nConnection: upgrade\r\n\r\n",
            False,
            (101, False),
        ),
        (b"HTTP/1.1 200\r\nContent-Length: 2\r\n\r\nok", False, (200, True)),
        (OK + b"X-Note: content-length: 9\r\nContent-Length: 2\r\n\r\nok", False, (200, True)),
        (OK + b"Content-Length: 2", True, None),  # not all of the head
        # bytes after the answer: counted, but the connection is not trusted with another request
        (OK + b"Content-Length: 2\r\n\r\nokEXTRA", False, (200, False)),
        (
            OK + b"Content-Length: 2\r\n\r\nokHTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n",
            False,
            (200, False),
        ),
        (OK + b"Connection: close\r\nContent-Length: 2\r\n\r\nokEXTRA", False, (200, False)),
    ],
)
def test_framing(data, eof, expected):
    assert _read(data, eof) == expected


@pytest.mark.parametrize(
    "data",
    [
        b"SSH-2.0-OpenSSH_9.6\r\n\r\n",
        b"HTTP/1.1 2x0 OK\r\nContent-Length: 2\r\n\r\nok",
        b"HTTP/1.12 200 OK\r\nContent-Length: 2\r\n\r\nok",
        OK + b"Content-Length: two\r\n\r\nok",
        OK + b"Content-Length: -1\r\n\r\nok",
        # ambiguous framings a strict parser refuses rather than guesses
        OK + b"Content-Length: 5\r\nContent-Length: 2\r\n\r\nok",
        OK + b"Transfer-Encoding: chunked\r\nContent-Length: 9\r\n\r\n2\r\nok\r\n0\r\n\r\n",
        OK + b"Content-Length : 2\r\n\r\nok",
        OK + b"Transfer-Encoding: chunked\r\n\r\nzz\r\nok\r\n0\r\n\r\n",
    ],
)
def test_malformed_answers_raise_value_error(data):
    with pytest.raises(ValueError):
        _read(data)


@pytest.mark.parametrize("answer", [CONTENT_LENGTH, CHUNKED], ids=["content-length", "chunked"])
def test_an_answer_fed_byte_by_byte_completes_on_its_last_byte(answer):
    reader = _ResponseReader()
    for i in range(len(answer) - 1):
        assert reader.feed(answer[i : i + 1]) is None, i
    assert reader.feed(answer[-1:]) == (int(answer[9:12]), True)


def test_one_reader_reads_each_answer_of_a_kept_alive_connection():
    # A connection carries one request at a time: expect() before each, then its answer
    reader = _ResponseReader()
    busy = b"HTTP/1.1 503 Busy\r\nContent-Length: 0\r\n\r\n"
    for answer in (CONTENT_LENGTH, CHUNKED, busy, CONTENT_LENGTH):
        reader.expect()
        head, body = answer[:20], answer[20:]
        assert reader.feed(head) is None
        assert reader.feed(body) == (int(answer[9:12]), True)


def test_a_head_that_never_ends_is_refused():
    reader = _ResponseReader()
    reader.feed(b"HTTP/1.1 200 OK\r\n")
    with pytest.raises(ValueError):
        for _ in range(MAX_HEAD_BYTES // 1024 + 2):
            reader.feed(b"X-Pad: " + b"p" * 1015 + b"\r\n")
