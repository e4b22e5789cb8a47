#!/usr/bin/env python3
"""Read and write a named dict on an mpx manager (mpxd) from Python, standard library only.

Speaks proto/manager.md directly: framing, the authkey handshake, hello, open, dict ops.
Keys and values are strings (the C++ side: mpx::DictProxy<std::string, std::string>).

  manager_dict.py --address unix:/tmp/mpxd.sock --authkey-file key --name config set colour blue
  manager_dict.py --address unix:/tmp/mpxd.sock --authkey-file key --name config get colour
  manager_dict.py --address unix:/tmp/mpxd.sock --authkey-file key --name config items
"""

import argparse
import hashlib
import hmac
import os
import socket
import struct
import sys

MAGIC = b"MPXM"
VERSION = 1
OP_HELLO, OP_OPEN = 0x01, 0x02
OP_SET, OP_GET, OP_CONTAINS, OP_ERASE, OP_SIZE, OP_ITEMS = 0x10, 0x11, 0x12, 0x13, 0x14, 0x17
OP_SETDEFAULT, OP_POPITEM = 0x1B, 0x1C
KIND_DICT = 1
ERROR_NAMES = {1: "Error", 2: "TimeoutError", 3: "Empty", 4: "Full", 5: "KeyError", 6: "ValueError",
               7: "StateError", 8: "IndexError", 9: "ConnectionError", 10: "ConnectionClosed",
               11: "AuthenticationError", 12: "ProtocolError", 13: "TypeMismatch",
               14: "BrokenBarrierError", 15: "RemoteError", 16: "WorkerLost"}


class ManagerError(Exception):
    def __init__(self, code, type_name, message):
        super().__init__(f"{ERROR_NAMES.get(code, code)}: {message}")
        self.code, self.type_name, self.message = code, type_name, message


# --- framing (Python multiprocessing.connection's) -------------------------------------------

def send_frame(sock, payload):
    n = len(payload)
    header = struct.pack("!i", n) if n <= 0x7FFFFFFF else struct.pack("!iQ", -1, n)
    sock.sendall(header + payload)


def recv_exact(sock, n):
    chunks = []
    while n:
        chunk = sock.recv(min(n, 1 << 20))
        if not chunk:
            raise EOFError("the manager closed the connection")
        chunks.append(chunk)
        n -= len(chunk)
    return b"".join(chunks)


def recv_frame(sock, maxlength=None):
    (n,) = struct.unpack("!i", recv_exact(sock, 4))
    if n == -1:
        (n,) = struct.unpack("!Q", recv_exact(sock, 8))
    elif n < 0:
        raise ValueError("bad frame length")
    if maxlength is not None and n > maxlength:
        raise ValueError("frame too long")
    return recv_exact(sock, n)


# --- the authkey handshake ({sha256} form) ---------------------------------------------------

CHALLENGE, WELCOME, FAILURE = b"#CHALLENGE#", b"#WELCOME#", b"#FAILURE#"


def answer_challenge(sock, key):
    message = recv_frame(sock, 256)
    if not message.startswith(CHALLENGE + b"{sha256}"):
        raise ConnectionError("unexpected challenge from the manager")
    body = message[len(CHALLENGE):]
    send_frame(sock, b"{sha256}" + hmac.new(key, body, hashlib.sha256).digest())
    if recv_frame(sock, 256) != WELCOME:
        raise ConnectionError("the manager rejected the authkey")


def deliver_challenge(sock, key):
    body = b"{sha256}" + os.urandom(40)
    send_frame(sock, CHALLENGE + body)
    response = recv_frame(sock, 256)
    expected = b"{sha256}" + hmac.new(key, body, hashlib.sha256).digest()
    if not hmac.compare_digest(response, expected):
        send_frame(sock, FAILURE)
        raise ConnectionError("the manager failed to prove it knows the authkey")
    send_frame(sock, WELCOME)


# --- the manager protocol --------------------------------------------------------------------

def blob(data):
    return struct.pack("<Q", len(data)) + data


def encode_str(s):
    """mpx::encode<std::string>: cereal's binary string (u64 length + bytes)."""
    return blob(s.encode())


class Reader:
    def __init__(self, data):
        self.data, self.pos = data, 0

    def take(self, n):
        if self.pos + n > len(self.data):
            raise ValueError("truncated response")
        out = self.data[self.pos:self.pos + n]
        self.pos += n
        return out

    def u8(self):
        return self.take(1)[0]

    def u32(self):
        return struct.unpack("<I", self.take(4))[0]

    def i32(self):
        return struct.unpack("<i", self.take(4))[0]

    def u64(self):
        return struct.unpack("<Q", self.take(8))[0]

    def blob(self):
        return self.take(self.u64())

    def str(self):
        return self.blob().decode()


def decode_str(data):
    r = Reader(data)
    s = r.str()
    if r.pos != len(data):
        raise ValueError("trailing bytes after a string")
    return s


class Manager:
    def __init__(self, address, authkey):
        if address.startswith("unix:"):
            path = address[5:]
            self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            self.sock.connect("\0" + path[1:] if path.startswith("@") else path)
        elif address.startswith("tcp:"):
            host, _, port = address[4:].rpartition(":")
            self.sock = socket.create_connection((host.strip("[]"), int(port)))
            self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        else:
            raise ValueError(f"unsupported address {address!r}")
        answer_challenge(self.sock, authkey)
        deliver_challenge(self.sock, authkey)
        r = self.request(OP_HELLO, 0, MAGIC + struct.pack("<I", VERSION) + os.urandom(16))
        if r.take(4) != MAGIC or r.u32() != VERSION:
            raise ConnectionError("the server does not speak manager protocol version 1")
        self.description = r.str()

    def request(self, op, oid, body=b""):
        send_frame(self.sock, struct.pack("<BQ", op, oid) + body)
        r = Reader(recv_frame(self.sock))
        if r.u8() != 0:
            code = r.u8()
            type_name = r.str()
            message = r.str()
            raise ManagerError(code, type_name, message)
        return r

    def dict(self, name):
        body = bytes([KIND_DICT]) + blob(name.encode()) + blob(b"str|str")
        return Dict(self, self.request(OP_OPEN, 0, body).u64())

    def close(self):
        self.sock.close()


class Dict:
    """A managed dict of str -> str (mpx::DictProxy<std::string, std::string>)."""

    def __init__(self, manager, oid):
        self.m, self.oid = manager, oid

    def __setitem__(self, key, value):
        self.m.request(OP_SET, self.oid, blob(encode_str(key)) + blob(encode_str(value)))

    def __getitem__(self, key):
        r = self.m.request(OP_GET, self.oid, blob(encode_str(key)))
        if not r.u8():
            raise KeyError(key)
        return decode_str(r.blob())

    def __contains__(self, key):
        return bool(self.m.request(OP_CONTAINS, self.oid, blob(encode_str(key))).u8())

    def __delitem__(self, key):
        if not self.m.request(OP_ERASE, self.oid, blob(encode_str(key))).u8():
            raise KeyError(key)

    def __len__(self):
        return self.m.request(OP_SIZE, self.oid).u64()

    def items(self):
        r = self.m.request(OP_ITEMS, self.oid)
        return [(decode_str(r.blob()), decode_str(r.blob())) for _ in range(r.u64())]

    def setdefault(self, key, default=""):
        r = self.m.request(OP_SETDEFAULT, self.oid, blob(encode_str(key)) + blob(encode_str(default)))
        return decode_str(r.blob())

    def popitem(self):
        r = self.m.request(OP_POPITEM, self.oid)  # ManagerError (KeyError) when empty
        key = decode_str(r.blob())
        return key, decode_str(r.blob())


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--address", required=True, help="unix:/path, unix:@name or tcp:host:port")
    p.add_argument("--authkey-file", required=True)
    p.add_argument("--name", default="python", help="the dict's name on the manager")
    p.add_argument("command", choices=["set", "get", "delete", "items", "size", "setdefault", "popitem"])
    p.add_argument("args", nargs="*")
    a = p.parse_args()
    with open(a.authkey_file, "rb") as f:
        key = f.read()
    if key.endswith(b"\n"):
        key = key[:-1]
    try:
        m = Manager(a.address, key)
    except (OSError, EOFError) as e:
        print(f"cannot reach the manager at {a.address}: {e}", file=sys.stderr)
        return 3
    try:
        d = m.dict(a.name)
        if a.command == "set":
            if len(a.args) != 2:
                p.error("set KEY VALUE")
            d[a.args[0]] = a.args[1]
        elif a.command == "get":
            print(d[a.args[0]])
        elif a.command == "delete":
            del d[a.args[0]]
        elif a.command == "items":
            for k, v in d.items():
                print(f"{k}={v}")
        elif a.command == "size":
            print(len(d))
        elif a.command == "setdefault":
            if len(a.args) != 2:
                p.error("setdefault KEY DEFAULT")
            print(d.setdefault(a.args[0], a.args[1]))
        elif a.command == "popitem":
            k, v = d.popitem()
            print(f"{k}={v}")
    except KeyError as e:
        print(f"KeyError: {e}", file=sys.stderr)
        return 1
    except ManagerError as e:
        print(e, file=sys.stderr)
        return 2
    finally:
        m.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
