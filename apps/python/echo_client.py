#!/usr/bin/env python3
"""A client on Python's stock multiprocessing.connection.Client for mpx's echo_server.

    echo_server --address unix:/tmp/echo.sock --authkey secret
    python3 echo_client.py --address unix:/tmp/echo.sock --authkey secret hello world
    python3 echo_client.py --address tcp:127.0.0.1:6000 --sizes 0,1,5000000

Sends each message (or a patterned message of each size), checks the echo and prints it.
Exit status: 0 all echoed, 3 authentication failed, 1 anything else.
"""
import argparse
import sys
from multiprocessing.connection import Client, AuthenticationError


def to_python(text):
    if text.startswith("unix:@"):
        return "\0" + text[len("unix:@"):]
    if text.startswith("unix:"):
        return text[len("unix:"):]
    if text.startswith("tcp:"):
        host, _, port = text[len("tcp:"):].rpartition(":")
        return (host.strip("[]"), int(port))
    raise SystemExit(f"unsupported address: {text}")


def pattern(n):
    return bytes((i * 131 + 7) & 0xFF for i in range(min(n, 65536))) * (n // 65536) + \
        bytes((i * 131 + 7) & 0xFF for i in range(n % 65536))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--address", required=True)
    parser.add_argument("--authkey", help="shared secret (omit for no handshake)")
    parser.add_argument("--sizes", default="", help="comma-separated message sizes to send")
    parser.add_argument("messages", nargs="*", help="text messages to send")
    args = parser.parse_args()
    authkey = args.authkey.encode() if args.authkey is not None else None

    payloads = [m.encode() for m in args.messages]
    payloads += [pattern(int(s)) for s in args.sizes.split(",") if s]
    try:
        conn = Client(to_python(args.address), authkey=authkey)
    except AuthenticationError as e:
        print("auth-failed", e, flush=True)
        return 3
    with conn:
        for p in payloads:
            conn.send_bytes(p)
            echo = conn.recv_bytes()
            if echo != p:
                print(f"mismatch: sent {len(p)} bytes, got {len(echo)}", flush=True)
                return 1
            print("echo:", echo.decode() if len(p) < 80 and p.isascii() else f"<{len(p)} bytes>", flush=True)
    print("ok", len(payloads), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
