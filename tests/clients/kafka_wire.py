"""A minimal Kafka wire-protocol codec for raw-socket tests.

Real clients hide what the broker actually sent; these helpers speak the protocol directly so
a test can send malformed frames, pipeline requests, ask for unknown versions and inspect the
record batches the broker returns. Only the request/response versions the tests use are here,
all of them non-flexible (request header v1, response header v0), which every broker that
serves the version must accept.
"""

from __future__ import annotations

import socket
import struct
import time
from dataclasses import dataclass, field

# API keys (Kafka's numbering).
PRODUCE = 0
FETCH = 1
LIST_OFFSETS = 2
METADATA = 3
API_VERSIONS = 18
CREATE_TOPICS = 19
DELETE_TOPICS = 20
DESCRIBE_CONFIGS = 32
CREATE_PARTITIONS = 37
INCREMENTAL_ALTER_CONFIGS = 44
DESCRIBE_CLUSTER = 60

# Error codes the tests look for.
NONE = 0
OFFSET_OUT_OF_RANGE = 1
CORRUPT_MESSAGE = 2
UNKNOWN_TOPIC_OR_PARTITION = 3
UNSUPPORTED_VERSION = 35
INVALID_REQUEST = 42

CLIENT_ID = "sluice-raw-tests"


class ConnectionClosed(Exception):
    """The broker closed the connection (EOF or reset) before a full response arrived."""


# ---------------------------------------------------------------- primitive encoders


def i8(v: int) -> bytes:
    return struct.pack(">b", v)


def i16(v: int) -> bytes:
    return struct.pack(">h", v)


def i32(v: int) -> bytes:
    return struct.pack(">i", v)


def i64(v: int) -> bytes:
    return struct.pack(">q", v)


def string(s: str | None) -> bytes:
    if s is None:
        return i16(-1)
    b = s.encode()
    return i16(len(b)) + b


def array(items: list[bytes] | None) -> bytes:
    if items is None:
        return i32(-1)
    return i32(len(items)) + b"".join(items)


def frame(payload: bytes) -> bytes:
    """Prefix a request (header + body) with its int32 size."""
    return i32(len(payload)) + payload


def request_header(api_key: int, api_version: int, correlation_id: int, client_id: str | None = CLIENT_ID) -> bytes:
    """Request header v1: api_key, api_version, correlation_id, client_id (nullable string)."""
    return i16(api_key) + i16(api_version) + i32(correlation_id) + string(client_id)


def request(api_key: int, api_version: int, correlation_id: int, body: bytes = b"") -> bytes:
    """A complete framed request with a v1 header."""
    return frame(request_header(api_key, api_version, correlation_id) + body)


# ---------------------------------------------------------------- primitive decoder


class Reader:
    """Big-endian cursor over a response body; raises ValueError on a short read."""

    def __init__(self, data: bytes):
        self.data = data
        self.pos = 0

    def take(self, n: int) -> bytes:
        if n < 0 or self.pos + n > len(self.data):
            raise ValueError(f"short read: need {n} bytes at {self.pos}, have {len(self.data) - self.pos}")
        out = self.data[self.pos : self.pos + n]
        self.pos += n
        return out

    def i8(self) -> int:
        return struct.unpack(">b", self.take(1))[0]

    def i16(self) -> int:
        return struct.unpack(">h", self.take(2))[0]

    def i32(self) -> int:
        return struct.unpack(">i", self.take(4))[0]

    def u32(self) -> int:
        return struct.unpack(">I", self.take(4))[0]

    def i64(self) -> int:
        return struct.unpack(">q", self.take(8))[0]

    def string(self) -> str | None:
        n = self.i16()
        if n == -1:
            return None
        return self.take(n).decode()

    def bytes_(self) -> bytes | None:
        n = self.i32()
        if n == -1:
            return None
        return self.take(n)

    def array(self, item):
        n = self.i32()
        if n == -1:
            return None
        if n > 1_000_000:
            raise ValueError(f"implausible array length {n}")
        return [item(self) for _ in range(n)]

    def remaining(self) -> int:
        return len(self.data) - self.pos


# ---------------------------------------------------------------- socket helpers


def connect(port: int, timeout: float = 10.0) -> socket.socket:
    s = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return s


def recv_exact(sock: socket.socket, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        try:
            chunk = sock.recv(n - len(buf))
        except (ConnectionResetError, BrokenPipeError) as e:
            raise ConnectionClosed(str(e)) from e
        if not chunk:
            raise ConnectionClosed(f"EOF after {len(buf)} of {n} bytes")
        buf += chunk
    return bytes(buf)


def read_response(sock: socket.socket, max_size: int = 64 * 1024 * 1024) -> tuple[int, bytes]:
    """Read one response frame; return (correlation_id, body after the v0 response header)."""
    size = struct.unpack(">i", recv_exact(sock, 4))[0]
    if size < 4 or size > max_size:
        raise ValueError(f"broker sent a response frame of size {size}")
    payload = recv_exact(sock, size)
    return struct.unpack(">i", payload[:4])[0], payload[4:]


def roundtrip(sock: socket.socket, api_key: int, api_version: int, correlation_id: int, body: bytes = b"") -> bytes:
    sock.sendall(request(api_key, api_version, correlation_id, body))
    corr, resp = read_response(sock)
    if corr != correlation_id:
        raise AssertionError(f"correlation id {corr} in response, expected {correlation_id}")
    return resp


def outcome_after(sock: socket.socket, wait: float) -> str:
    """What the broker did with a connection we sent something bad on.

    Returns "closed" if the connection was closed (EOF/reset), "answered" if a response frame
    arrived, or "open" if neither happened within `wait` seconds. The caller has normally
    half-closed its side already, so a broker that keeps the socket open is hanging on to a
    dead connection.
    """
    sock.settimeout(0.2)
    deadline = time.monotonic() + wait
    got = b""
    while time.monotonic() < deadline:
        try:
            chunk = sock.recv(65536)
        except socket.timeout:
            continue
        except (ConnectionResetError, BrokenPipeError):
            return "closed" if not got else "answered"
        if not chunk:
            return "closed" if len(got) < 4 else "answered"
        got += chunk
        if len(got) >= 8:
            return "answered"
    return "open"


# ---------------------------------------------------------------- ApiVersions


@dataclass
class ApiVersionsResponse:
    error_code: int
    apis: dict[int, tuple[int, int]]
    throttle_time_ms: int | None = None


def api_versions_request(version: int, correlation_id: int) -> bytes:
    """ApiVersions v0-v2 have an empty body."""
    assert version <= 2
    return request(API_VERSIONS, version, correlation_id)


def parse_api_versions(body: bytes, version: int) -> ApiVersionsResponse:
    """Parse an ApiVersions response of version 0-2 (also the v0 fallback for unknown versions)."""
    r = Reader(body)
    err = r.i16()
    entries = r.array(lambda rr: (rr.i16(), rr.i16(), rr.i16())) or []
    throttle = r.i32() if version >= 1 else None
    apis = {k: (lo, hi) for k, lo, hi in entries}
    return ApiVersionsResponse(err, apis, throttle)


def api_versions(sock: socket.socket, correlation_id: int = 1, version: int = 2) -> ApiVersionsResponse:
    body = roundtrip(sock, API_VERSIONS, version, correlation_id)
    return parse_api_versions(body, version)


# ---------------------------------------------------------------- Metadata v1


@dataclass
class PartitionMeta:
    error_code: int
    partition: int
    leader: int
    replicas: list[int]
    isr: list[int]


@dataclass
class TopicMeta:
    error_code: int
    name: str
    is_internal: bool
    partitions: list[PartitionMeta] = field(default_factory=list)


@dataclass
class MetadataResponse:
    brokers: list[tuple[int, str, int, str | None]]
    controller_id: int
    topics: list[TopicMeta]


def metadata_body_v1(topics: list[str] | None) -> bytes:
    return array(None if topics is None else [string(t) for t in topics])


def parse_metadata_v1(body: bytes) -> MetadataResponse:
    r = Reader(body)
    brokers = r.array(lambda rr: (rr.i32(), rr.string(), rr.i32(), rr.string())) or []
    controller = r.i32()

    def partition(rr: Reader) -> PartitionMeta:
        return PartitionMeta(
            rr.i16(), rr.i32(), rr.i32(), rr.array(lambda x: x.i32()) or [], rr.array(lambda x: x.i32()) or []
        )

    def topic(rr: Reader) -> TopicMeta:
        err = rr.i16()
        name = rr.string()
        internal = rr.i8() != 0
        parts = rr.array(partition) or []
        return TopicMeta(err, name, internal, parts)

    topics = r.array(topic) or []
    if r.remaining():
        raise ValueError(f"{r.remaining()} trailing bytes after Metadata v1 response")
    return MetadataResponse(brokers, controller, topics)


def metadata(sock: socket.socket, topics: list[str] | None = None, correlation_id: int = 2) -> MetadataResponse:
    body = roundtrip(sock, METADATA, 1, correlation_id, metadata_body_v1(topics))
    return parse_metadata_v1(body)


# ---------------------------------------------------------------- Fetch v4 and record batches


@dataclass
class FetchPartition:
    partition: int
    error_code: int
    high_watermark: int
    last_stable_offset: int
    records: bytes | None
    # (producer_id, first_offset) pairs; None when the broker sent a null array.
    aborted_transactions: list | None = None


def fetch_body_v4(
    topic: str,
    partition: int,
    offset: int,
    max_wait_ms: int = 100,
    min_bytes: int = 1,
    max_bytes: int = 10 << 20,
    isolation_level: int = 0,
) -> bytes:
    part = i32(partition) + i64(offset) + i32(max_bytes)
    topics = array([string(topic) + array([part])])
    # replica_id=-1 (a consumer), max_wait, min_bytes, max_bytes, isolation_level (0: read_uncommitted)
    return i32(-1) + i32(max_wait_ms) + i32(min_bytes) + i32(max_bytes) + i8(isolation_level) + topics


def parse_fetch_v4(body: bytes) -> dict[tuple[str, int], FetchPartition]:
    r = Reader(body)
    r.i32()  # throttle_time_ms
    out: dict[tuple[str, int], FetchPartition] = {}

    def aborted(rr: Reader):
        return (rr.i64(), rr.i64())

    for _ in range(r.i32()):
        name = r.string()
        for _ in range(r.i32()):
            p = r.i32()
            err = r.i16()
            hw = r.i64()
            lso = r.i64()
            txns = r.array(aborted)
            recs = r.bytes_()
            out[(name, p)] = FetchPartition(p, err, hw, lso, recs, txns)
    return out


def fetch(sock: socket.socket, topic: str, partition: int, offset: int, correlation_id: int = 3, **kw):
    body = roundtrip(sock, FETCH, 4, correlation_id, fetch_body_v4(topic, partition, offset, **kw))
    return parse_fetch_v4(body)[(topic, partition)]


@dataclass
class BatchHeader:
    base_offset: int
    batch_length: int
    partition_leader_epoch: int
    magic: int
    crc: int
    attributes: int
    last_offset_delta: int
    base_timestamp: int
    max_timestamp: int
    producer_id: int
    producer_epoch: int
    base_sequence: int
    record_count: int
    crc_ok: bool

    @property
    def compression(self) -> int:
        """0 none, 1 gzip, 2 snappy, 3 lz4, 4 zstd."""
        return self.attributes & 0x07


def parse_batches(records: bytes) -> list[BatchHeader]:
    """Split a fetched records blob into v2 batch headers, checking each batch's CRC-32C.

    A fetch may end with a partial batch (the broker is allowed to cut at max_bytes); that tail
    is ignored as clients do.
    """
    out = []
    pos = 0
    while pos + 12 <= len(records):
        base_offset, batch_length = struct.unpack_from(">qi", records, pos)
        end = pos + 12 + batch_length
        if end > len(records):
            break
        r = Reader(records[pos + 12 : end])
        ple = r.i32()
        magic = r.i8()
        crc = r.u32()
        covered = records[pos + 21 : end]
        attrs = r.i16()
        last_delta = r.i32()
        base_ts = r.i64()
        max_ts = r.i64()
        pid = r.i64()
        pepoch = r.i16()
        bseq = r.i32()
        count = r.i32()
        out.append(
            BatchHeader(
                base_offset, batch_length, ple, magic, crc, attrs, last_delta, base_ts, max_ts, pid, pepoch, bseq,
                count, crc32c(covered) == crc,
            )
        )
        pos = end
    return out


# ---------------------------------------------------------------- CRC-32C (Castagnoli)


def _crc32c_table() -> list[int]:
    table = []
    for n in range(256):
        c = n
        for _ in range(8):
            c = (c >> 1) ^ 0x82F63B78 if c & 1 else c >> 1
        table.append(c)
    return table


_CRC32C = _crc32c_table()


def crc32c(data: bytes) -> int:
    crc = 0xFFFFFFFF
    table = _CRC32C
    for b in data:
        crc = table[(crc ^ b) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


# ---------------------------------------------------------------- record batches and Produce

UNSUPPORTED_COMPRESSION_TYPE = 76
INVALID_TIMESTAMP = 32
INVALID_RECORD = 87


def varint(n: int) -> bytes:
    """Kafka's zigzag varint / varlong."""
    z = (n << 1) ^ (n >> 63)
    out = bytearray()
    while True:
        b = z & 0x7F
        z >>= 7
        if z:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def _compress(codec: int, data: bytes) -> bytes:
    if codec == 0:
        return data
    if codec == 1:
        import gzip

        return gzip.compress(data)
    if codec == 4:
        import zstandard

        return zstandard.ZstdCompressor().compress(data)
    raise ValueError(f"codec {codec} not supported by this helper")


def record_batch(
    values: list[bytes],
    timestamps: list[int],
    *,
    codec: int = 0,
    header_max_timestamp: int | None = None,
    base_timestamp: int | None = None,
    attributes_extra: int = 0,
    producer_id: int = -1,
    producer_epoch: int = -1,
    base_sequence: int = -1,
) -> bytes:
    """One v2 record batch (base offset 0) whose records carry `timestamps`.

    The header's base timestamp is the first record's unless `base_timestamp` is given; its max
    timestamp is the records' largest unless `header_max_timestamp` is given (-1 is what some
    older clients leave there).
    """
    assert len(values) == len(timestamps) and values
    base_ts = timestamps[0] if base_timestamp is None else base_timestamp
    recs = bytearray()
    for i, (v, ts) in enumerate(zip(values, timestamps)):
        body = b"\x00" + varint(ts - base_ts) + varint(i) + varint(-1) + varint(len(v)) + v + varint(0)
        recs += varint(len(body)) + body
    max_ts = max(timestamps) if header_max_timestamp is None else header_max_timestamp
    attrs = (codec & 0x07) | attributes_extra
    after_crc = (
        i16(attrs)
        + i32(len(values) - 1)
        + i64(base_ts)
        + i64(max_ts)
        + i64(producer_id)
        + i16(producer_epoch)
        + i32(base_sequence)
        + i32(len(values))
        + _compress(codec, bytes(recs))
    )
    body = i32(-1) + i8(2) + struct.pack(">I", crc32c(after_crc)) + after_crc
    return i64(0) + i32(len(body)) + body


@dataclass
class ProducePartitionResult:
    index: int
    error_code: int
    base_offset: int
    log_append_time_ms: int
    log_start_offset: int
    error_message: str | None


def produce(
    sock: socket.socket, topic: str, partition: int, records: bytes, version: int = 7, acks: int = -1,
    correlation_id: int = 20,
) -> ProducePartitionResult:
    """One-partition Produce (v3..v8, non-flexible); returns that partition's result."""
    assert 3 <= version <= 8
    body = string(None) + i16(acks) + i32(10_000) + array(
        [string(topic) + array([i32(partition) + i32(len(records)) + records])]
    )
    resp = roundtrip(sock, PRODUCE, version, correlation_id, body)
    r = Reader(resp)

    def part(rr: Reader) -> ProducePartitionResult:
        index, err, base, lat = rr.i32(), rr.i16(), rr.i64(), rr.i64()
        lso = rr.i64() if version >= 5 else -1
        msg = None
        if version >= 8:
            rr.array(lambda x: (x.i32(), x.string()))  # record_errors
            msg = rr.string()
        return ProducePartitionResult(index, err, base, lat, lso, msg)

    [(name, [res])] = r.array(lambda rr: (rr.string(), rr.array(part)))
    assert name == topic
    return res


def list_offsets(sock: socket.socket, topic: str, partition: int, timestamp: int, correlation_id: int = 30):
    """ListOffsets v1 for one partition: (error_code, timestamp, offset)."""
    body = i32(-1) + array([string(topic) + array([i32(partition) + i64(timestamp)])])
    resp = roundtrip(sock, LIST_OFFSETS, 1, correlation_id, body)
    r = Reader(resp)
    [(name, [(p, err, ts, off)])] = r.array(
        lambda rr: (rr.string(), rr.array(lambda x: (x.i32(), x.i16(), x.i64(), x.i64())))
    )
    assert (name, p) == (topic, partition)
    return err, ts, off


def last_offset(sock: socket.socket, topic: str, partition: int, isolation_level: int = 0,
                correlation_id: int = 31) -> tuple[int, int]:
    """ListOffsets v2 latest for one partition: (error_code, offset): the high watermark with
    isolation_level 0 (read_uncommitted), the last stable offset with 1 (read_committed)."""
    body = i32(-1) + i8(isolation_level) + array([string(topic) + array([i32(partition) + i64(-1)])])
    resp = roundtrip(sock, LIST_OFFSETS, 2, correlation_id, body)
    r = Reader(resp)
    r.i32()  # throttle_time_ms
    [(name, [(p, err, _ts, off)])] = r.array(
        lambda rr: (rr.string(), rr.array(lambda x: (x.i32(), x.i16(), x.i64(), x.i64())))
    )
    assert (name, p) == (topic, partition)
    return err, off


def record_timestamps(records: bytes) -> list[tuple[int, int]]:
    """(offset, timestamp) of every record in a fetched records blob (codecs: none, gzip, zstd).

    LogAppendTime batches give every record the batch's max timestamp, as clients read them.
    """
    out = []
    pos = 0
    while pos + 12 <= len(records):
        base_offset, batch_length = struct.unpack_from(">qi", records, pos)
        end = pos + 12 + batch_length
        if end > len(records):
            break
        attrs, _, base_ts, max_ts = struct.unpack_from(">hiqq", records, pos + 21)
        (count,) = struct.unpack_from(">i", records, pos + 57)
        data = records[pos + 61 : end]
        codec = attrs & 0x07
        if codec == 1:
            import gzip

            data = gzip.decompress(data)
        elif codec == 4:
            import zstandard

            data = zstandard.ZstdDecompressor().decompressobj().decompress(data)
        elif codec != 0:
            raise ValueError(f"codec {codec}")
        p = 0

        def rv() -> int:
            nonlocal p
            shift = raw = 0
            while True:
                b = data[p]
                p += 1
                raw |= (b & 0x7F) << shift
                if not b & 0x80:
                    return (raw >> 1) ^ -(raw & 1)
                shift += 7

        for _ in range(count):
            length = rv()
            rec_end = p + length
            p += 1
            ts_delta = rv()
            off_delta = rv()
            ts = max_ts if attrs & 0x08 else base_ts + ts_delta
            out.append((base_offset + off_delta, ts))
            p = rec_end
        pos = end
    return out


# ---------------------------------------------------------------- Fetch v7 (fetch sessions, KIP-227)

FETCH_SESSION_ID_NOT_FOUND = 70
INVALID_FETCH_SESSION_EPOCH = 71


@dataclass
class SessionFetchResponse:
    error_code: int
    session_id: int
    partitions: dict[tuple[str, int], FetchPartition]


def fetch_body_v7(
    session_id: int,
    epoch: int,
    partitions: list[tuple[str, int, int]],
    forgotten: list[tuple[str, int]] = (),
    max_wait_ms: int = 100,
    min_bytes: int = 1,
    max_bytes: int = 10 << 20,
    partition_max_bytes: int = 1 << 20,
) -> bytes:
    """A consumer's Fetch v7: `partitions` are (topic, partition, fetch offset) in order,
    grouped by topic as listed; `forgotten` are (topic, partition) to drop from the session."""

    def grouped(items, encode):
        topics: dict[str, list[bytes]] = {}
        for t, *rest in items:
            topics.setdefault(t, []).append(encode(*rest))
        return array([string(t) + array(ps) for t, ps in topics.items()])

    topics = grouped(partitions, lambda p, off: i32(p) + i64(off) + i64(-1) + i32(partition_max_bytes))
    forget = grouped(forgotten, lambda p: i32(p))
    return (
        i32(-1) + i32(max_wait_ms) + i32(min_bytes) + i32(max_bytes) + i8(0)
        + i32(session_id) + i32(epoch) + topics + forget
    )


def parse_fetch_v7(body: bytes) -> SessionFetchResponse:
    r = Reader(body)
    r.i32()  # throttle_time_ms
    err = r.i16()
    session_id = r.i32()
    out: dict[tuple[str, int], FetchPartition] = {}
    for _ in range(r.i32()):
        name = r.string()
        for _ in range(r.i32()):
            p = r.i32()
            perr = r.i16()
            hw = r.i64()
            lso = r.i64()
            r.i64()  # log_start_offset
            r.array(lambda rr: (rr.i64(), rr.i64()))  # aborted transactions
            recs = r.bytes_()
            assert (name, p) not in out, f"partition {name}-{p} twice in one response"
            out[(name, p)] = FetchPartition(p, perr, hw, lso, recs)
    assert r.remaining() == 0
    return SessionFetchResponse(err, session_id, out)


def session_fetch(sock: socket.socket, session_id: int, epoch: int, partitions, forgotten=(),
                  correlation_id: int = 40, **kw) -> SessionFetchResponse:
    body = fetch_body_v7(session_id, epoch, partitions, forgotten, **kw)
    return parse_fetch_v7(roundtrip(sock, FETCH, 7, correlation_id, body))
