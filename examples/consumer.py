#!/usr/bin/env python3
"""A processing stage for beacon-collector in plain Python (standard library only).

It implements docs/PROTOCOL.md: listen on a unix socket, read HELLO and BATCH frames, decode the
records, append them as NDJSON to a file, and ACK each batch once it is written (and fsync'd with
--fsync). It drops replays it has already written (per collector instance, by sequence number).

    python3 examples/consumer.py --socket run/processor.sock --out beacons.ndjson

and run the collector with forward.mode = "external" and forward.socket_path pointing at it.
"""
import argparse
import base64
import json
import os
import signal
import socket
import struct
import sys
import threading

HELLO, BATCH, ACK = 0x01, 0x02, 0x03
VERSION = 1
MAX_FRAME = 16 * 1024 * 1024
KINDS = {0: "query", 1: "form", 2: "json", 3: "text", 4: "multipart"}
ABSENT = 0xFFFFFFFF


class ProtocolError(Exception):
    pass


def read_exact(sock, n):
    buf = bytearray()
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            return None if not buf else b""  # None: clean EOF; b"": torn frame
        buf += chunk
    return bytes(buf)


def read_frame(sock):
    head = read_exact(sock, 4)
    if head is None:
        return None
    if len(head) < 4:
        raise ProtocolError("connection closed mid-frame")
    (length,) = struct.unpack(">I", head)
    if length == 0 or length > MAX_FRAME:
        raise ProtocolError(f"frame length {length} out of range")
    body = read_exact(sock, length)
    if not body or len(body) < length:
        raise ProtocolError("connection closed mid-frame")
    return body[0], body[1:]


class Reader:
    def __init__(self, data):
        self.data, self.pos = data, 0

    def take(self, n):
        if self.pos + n > len(self.data):
            raise ProtocolError("truncated")
        out = self.data[self.pos : self.pos + n]
        self.pos += n
        return out

    def u32(self):
        return struct.unpack(">I", self.take(4))[0]

    def bytes(self):
        n = self.u32()
        if n == ABSENT:
            raise ProtocolError("absent marker in a required field")
        return self.take(n)

    def opt(self):
        n = self.u32()
        return None if n == ABSENT else self.take(n)


def text(b):
    """A byte string as JSON: a string if UTF-8, else {"b64": ...} (no byte lost)."""
    try:
        return b.decode("utf-8")
    except UnicodeDecodeError:
        return {"b64": base64.b64encode(b).decode("ascii")}


def fmt_uuid(b):
    h = b.hex()
    return f"{h[0:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:32]}"


def fmt_time(us):
    import datetime

    t = datetime.datetime.fromtimestamp(us // 1_000_000, tz=datetime.timezone.utc)
    return t.strftime("%Y-%m-%dT%H:%M:%S") + f".{us % 1_000_000:06d}Z"


CLIENT_IP_SOURCES = {0: "peer", 1: "proxy_v1", 2: "proxy_v2", 3: "x_forwarded_for"}


def peer_ip(peer):
    """The IP part of an `ip:port` peer (`[v6]:port` included)."""
    host = peer.rsplit(b":", 1)[0] if b":" in peer else peer
    if host.startswith(b"[") and host.endswith(b"]"):
        host = host[1:-1]
    return host


def decode_record(data):
    r = Reader(data)
    rid = r.take(16)
    (received_us,) = struct.unpack(">Q", r.take(8))
    kind = r.take(1)[0]
    if kind not in KINDS:
        raise ProtocolError(f"unknown kind {kind}")
    peer, method, path = r.bytes(), r.bytes(), r.bytes()
    ua, referer, origin = r.opt(), r.opt(), r.opt()
    params = [[text(r.bytes()), text(r.bytes())] for _ in range(r.u32())]
    body = r.bytes()
    # Appended fields: absent in records written before they were added.
    if r.pos == len(data):
        client_ip, source = peer_ip(peer), 0
    else:
        client_ip = r.bytes()
        source = r.take(1)[0]
        if source not in CLIENT_IP_SOURCES:
            raise ProtocolError(f"unknown client_ip_source {source}")
    # The tracker's own event id: absent in records written before it was added.
    event_id = None if r.pos == len(data) else r.opt()
    if r.pos != len(data):
        raise ProtocolError("trailing bytes")
    rec = {
        "id": fmt_uuid(rid),
        "received_at": fmt_time(received_us),
        "peer": text(peer),
        "client_ip": text(client_ip),
        "client_ip_source": CLIENT_IP_SOURCES[source],
        "method": text(method),
        "path": text(path),
    }
    if event_id is not None:
        rec["event_id"] = text(event_id)
    rec |= {
        "kind": KINDS[kind],
        "params": params,
        "user_agent": None if ua is None else text(ua),
        "referer": None if referer is None else text(referer),
        "origin": None if origin is None else text(origin),
    }
    if kind == 2:
        rec["json"] = json.loads(body)
    elif kind == 3:
        rec["body"] = text(body)
    return rec


class Sink:
    def __init__(self, path, fsync):
        self.f = open(path, "ab")
        self.fsync = fsync
        self.lock = threading.Lock()
        self.written = {}  # instance -> highest sequence number written

    def write(self, instance, first_seq, records):
        with self.lock:
            done = self.written.get(instance, 0)
            lines = []
            for i, raw in enumerate(records):
                if first_seq + i <= done:
                    continue  # a replay of something already written
                try:
                    rec = decode_record(raw)
                except (ProtocolError, ValueError) as e:
                    print(f"skipping corrupt record {first_seq + i}: {e}", file=sys.stderr)
                    continue
                lines.append(json.dumps(rec, ensure_ascii=False, separators=(",", ":")) + "\n")
            self.f.write("".join(lines).encode("utf-8"))
            self.f.flush()
            if self.fsync:
                os.fsync(self.f.fileno())
            last = first_seq + len(records) - 1
            self.written[instance] = max(done, last)
            return last


def serve_connection(conn, sink):
    with conn:
        frame = read_frame(conn)
        if frame is None or frame[0] != HELLO or len(frame[1]) != 10:
            raise ProtocolError("expected HELLO")
        version, instance = struct.unpack(">HQ", frame[1])
        if version != VERSION:
            raise ProtocolError(f"unsupported version {version}")
        while True:
            frame = read_frame(conn)
            if frame is None:
                return
            kind, body = frame
            if kind != BATCH or len(body) < 12:
                raise ProtocolError(f"unexpected frame type {kind}")
            first_seq, count = struct.unpack(">QI", body[:12])
            r = Reader(body[12:])
            records = [r.bytes() for _ in range(count)]
            if r.pos != len(r.data):
                raise ProtocolError("malformed BATCH")
            if count == 0:
                continue
            last = sink.write(instance, first_seq, records)
            conn.sendall(struct.pack(">IBQ", 9, ACK, last))


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--socket", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--fsync", action="store_true")
    args = ap.parse_args()
    if os.path.exists(args.socket):
        os.unlink(args.socket)
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    srv.bind(args.socket)
    os.chmod(args.socket, 0o660)
    srv.listen(16)
    sink = Sink(args.out, args.fsync)
    signal.signal(signal.SIGTERM, lambda *_: (srv.close(), os._exit(0)))

    def handle(conn):
        try:
            serve_connection(conn, sink)
        except (ProtocolError, OSError) as e:
            print(f"connection closed: {e}", file=sys.stderr)

    while True:
        conn, _ = srv.accept()
        threading.Thread(target=handle, args=(conn,), daemon=True).start()


if __name__ == "__main__":
    main()
