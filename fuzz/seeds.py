#!/usr/bin/env python3
"""Writes the seed inputs of each fuzz target into fuzz/corpus/TARGET/.

The seeds are well-formed inputs (a pgoutput transaction, a binary COPY
stream, good CSV, JSONL and config files, protobuf responses) from which
AFL++ mutates; the corpus committed beside them is what a long run kept
(afl-cmin). Rerun after a target's input format changes:

    python3 fuzz/seeds.py
"""
import os
import struct

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "corpus")

# arbor_source::fuzz::COLUMNS with the PostgreSQL type each is read from.
COLUMNS = [("id", 20), ("name", 25), ("amount", 1700), ("meta", 3802),
           ("at", 1184), ("raw", 17), ("flag", 16), ("day", 1082),
           ("ratio", 701), ("uid", 2950), ("code", 23)]
ROW = ["7", "Ann  ", "12.50", '{"b": [1, 2.0], "a": null}',
       "2024-02-29 23:59:59.123456+00", "\\xdeadbeef", "t", "2024-02-29",
       "-0.5", "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11", "-42"]


def write(target, name, data):
    folder = os.path.join(ROOT, target)
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, "seed-" + name), "wb") as f:
        f.write(data)


def frame(message):
    return struct.pack(">H", len(message)) + message


def relation(relid=42, columns=COLUMNS, bpchar_name=False):
    m = b"R" + struct.pack(">I", relid) + b"public\0t\0d" + struct.pack(">H", len(columns))
    for name, oid in columns:
        if bpchar_name and name == "name":
            oid = 1042
        m += b"\0" + name.encode() + b"\0" + struct.pack(">Ii", oid, -1)
    return m


def tuple_(fields):
    m = struct.pack(">H", len(fields))
    for f in fields:
        if f is None:
            m += b"n"
        elif f == "\0u":
            m += b"u"
        else:
            b = f.encode()
            m += b"t" + struct.pack(">I", len(b)) + b
    return m


def begin():
    return b"B" + struct.pack(">QqI", 0x10, 1_000_000, 9)


def commit(lsn):
    return b"C" + b"\0" + struct.pack(">QQq", lsn - 8, lsn, 2_000_000)


def pgoutput():
    insert = b"I" + struct.pack(">I", 42) + b"N" + tuple_(ROW)
    other = ROW[:]
    other[0], other[1] = "8", "Bob"
    update = b"U" + struct.pack(">I", 42) + b"K" + tuple_(["7"] + [None] * 10) + b"N" + tuple_(other)
    toast = ROW[:]
    toast[3] = "\0u"
    unchanged = b"U" + struct.pack(">I", 42) + b"N" + tuple_(toast)
    delete = b"D" + struct.pack(">I", 42) + b"K" + tuple_(["8"] + [None] * 10)
    truncate = b"T" + struct.pack(">IB", 2, 0) + struct.pack(">II", 41, 42)
    nulls = b"I" + struct.pack(">I", 42) + b"N" + tuple_(["9"] + [None] * 10)
    write("pgoutput", "transaction", b"".join(frame(m) for m in [
        relation(bpchar_name=True), begin(), insert, update, unchanged, delete, nulls,
        commit(0x20)]))
    write("pgoutput", "truncate", b"".join(frame(m) for m in [
        relation(), begin(), truncate, b"Y" + struct.pack(">I", 20) + b"pg_catalog\0int8\0",
        commit(0x30)]))
    write("pgoutput", "other-table", b"".join(frame(m) for m in [
        relation(43, [("x", 25)]), begin(),
        b"I" + struct.pack(">I", 43) + b"N" + tuple_(["a"]), commit(0x40)]))


def binary_copy():
    header = b"PGCOPY\n\xff\r\n\0" + b"\0" * 8
    # One layout per field reading (fuzz::FIELDS), key first: int8 key.
    def field(b):
        return struct.pack(">i", len(b)) + b

    rows = [
        # n=6: int8 key, text, numeric, timestamp, bytea, bool
        (bytes([5, 2, 9, 5, 12, 10, 4]), [
            [struct.pack(">q", 7), b"Ann", struct.pack(">hhhh", 2, 0, 0, 2) + struct.pack(">hh", 12, 5000),
             struct.pack(">q", 762_000_000_000_000), b"\xde\xad", b"\x01"],
            [struct.pack(">q", -1), b"", struct.pack(">hhHh", 0, 0, 0xC000, 0),
             struct.pack(">q", 0), b"", b"\x00"],
        ]),
        # n=5: text key, date, uuid, jsonb, float8
        (bytes([4, 9, 11, 13, 15, 8]), [
            [b"k1", struct.pack(">i", 8000), bytes(range(16)), b"\x01{\"a\": 1}",
             struct.pack(">d", -0.5)],
        ]),
        # n=4: int4 key, int2, float4, json
        (bytes([3, 1, 0, 7, 14]), [
            [struct.pack(">i", 3), struct.pack(">h", -3), struct.pack(">f", 1.5), b"[1, 2]"],
        ]),
        # n=3: numeric-as-integer key, integer-as-decimal, text
        (bytes([2, 6, 3, 9]), [
            [struct.pack(">hhhh", 1, 0, 0, 0) + struct.pack(">h", 18), struct.pack(">q", 5), b"x"],
        ]),
    ]
    for i, (layout, rs) in enumerate(rows):
        body = header
        for r in rs:
            body += struct.pack(">h", len(r))
            for f in r:
                body += field(f)
        nulled = header + struct.pack(">h", len(rs[0])) + field(rs[0][0]) + struct.pack(">i", -1) * (len(rs[0]) - 1)
        write("binary_copy", f"layout{i}", layout + body + b"\xff\xff")
        write("binary_copy", f"layout{i}-nulls-cut", layout + nulled)


def files():
    names = [c for c, _ in COLUMNS]
    csv_row = ['7', '"Ann, ""the"" first"', "12.50", '"{""a"": [1, 2.0]}"', "2024-02-29T23:59:59.123456Z",
               "3q2+7w==", "true", "2024-02-29", "-0.5", "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11", "-42"]
    empty = ["8"] + [""] * 10
    write("csv", "rows", (",".join(names) + "\n" + ",".join(csv_row) + "\r\n" + ",".join(empty) + "\n").encode())
    write("csv", "bom-reordered", ("\ufeff" + ",".join(reversed(names)) + "\n" + ",".join(reversed(csv_row)) + "\n").encode())
    jl = ('{"id": 7, "name": "Ann", "amount": 12.50, "meta": {"b": [1, 2.0], "a": null}, '
          '"at": "2024-02-29T23:59:59.123456Z", "raw": "3q2+7w==", "flag": true, "day": "2024-02-29", '
          '"ratio": -0.5, "uid": "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11", "code": -42}\n'
          '{"id": 18446744073709551615, "name": null, "amount": 1e-3, "meta": "x", "at": null, "raw": null, '
          '"flag": false, "day": null, "ratio": 1e308, "uid": null, "code": 0}\n')
    write("jsonl", "rows", jl.encode())


def config():
    write("config", "sqlite", b'''[agent]
data_dir = "data"
listen = "127.0.0.1:0"
[[dataset]]
name = "customers"
secret = "s3cret-value"
source = { kind = "sqlite", path = "crm.db", table = "customers" }
key = [{ source = "id", kind = "integer" }]
columns = [{ source = "mail", name = "email", kind = "text", transform = ["trim", "lowercase"] },
           { source = "amount", kind = "decimal" }]
capture = { mode = "rescan", interval_secs = 60 }
''')
    write("config", "postgres-sync", b'''[agent]
data_dir = "data"
[[dataset]]
name = "orders"
secret = "s3cret-value"
source = { kind = "postgres", url = "postgres://u:pw@db/crm", table = "sales.orders", chunk_rows = 10 }
key = [{ source = "id", kind = "integer" }, { source = "region", kind = "text" }]
columns = [{ source = "total", kind = "decimal" }, { source = "meta", kind = "json" }]
capture = { mode = "logical" }
allow_repairs = true
[[sync]]
name = "orders-to-mirror"
dataset = "orders"
peer = "https://mirror:7401"
direction = "two-way"
rule = "last-writer-wins"
schedule = "0 2 * * *"
''')


def wire():
    def varint(n):
        out = b""
        while True:
            b = n & 0x7F
            n >>= 7
            if n:
                out += bytes([b | 0x80])
            else:
                return out + bytes([b])

    def field(no, wt, payload):
        key = varint(no << 3 | wt)
        if wt == 2:
            return key + varint(len(payload)) + payload
        return key + payload

    node = field(1, 0, varint(5)) + field(2, 2, bytes(range(32))) + field(3, 0, varint(3))
    write("wire", "node-entry", bytes([3]) + node)
    write("wire", "describe", bytes([0]) + field(1, 0, varint(1)) + field(2, 2, b"\x01" * 8)
          + field(3, 2, b"\x02" * 32) + field(4, 0, varint(4)) + field(5, 2, node))
    gaps = varint(1) + varint(2)
    write("wire", "get-nodes", bytes([4]) + field(2, 2, gaps) + field(3, 2, varint(1) + varint(1))
          + field(4, 2, bytes(range(16))))
    write("wire", "typed-text", bytes([0]) + field(6, 2, b"Ann"))
    write("wire", "typed-decimal", bytes([0]) + field(4, 2, b"-12.50"))


def canonical():
    # tuple := varint(count) value*; see crates/arbor-record/src/encode.rs.
    values = (b"\x00" + b"\x01\x01" + b"\x02\x01\x07" + b"\x03\x04-1.5" + b"\x04" + struct.pack(">d", 0.25)
              + b"\x05\x03Ann" + b"\x06\x02\xde\xad" + b"\x07" + struct.pack(">i", 19782)
              + b"\x08" + struct.pack(">q", 1_709_251_199_123_456) + b"\x09" + bytes(range(16))
              + b"\x0a\x07{\"a\":1}")
    write("canonical", "every-kind", bytes([11]) + values)
    write("canonical", "empty", b"\x00")


if __name__ == "__main__":
    canonical()
    pgoutput()
    binary_copy()
    files()
    config()
    wire()
