#!/usr/bin/env python3
"""An echo server on Python's stock multiprocessing.connection.Listener.

mpx's echo_client (or any mpx::Client) talks to it:
    python3 echo_server.py --address unix:/tmp/echo.sock --authkey secret
    echo_client --address unix:/tmp/echo.sock --authkey secret hello

Addresses use mpx's spelling: unix:/path, unix:@abstract, tcp:host:port.
Prints "ready <address>" once listening; every message received is sent back.
"""
import argparse
import sys
from multiprocessing.connection import Listener, AuthenticationError


def to_python(text):
    if text.startswith("unix:@"):
        return "\0" + text[len("unix:@"):]
    if text.startswith("unix:"):
        return text[len("unix:"):]
    if text.startswith("tcp:"):
        host, _, port = text[len("tcp:"):].rpartition(":")
        return (host.strip("[]"), int(port))
    raise SystemExit(f"unsupported address: {text}")


def to_mpx(address):
    if isinstance(address, tuple):
        return f"tcp:{address[0]}:{address[1]}"
    if isinstance(address, bytes):
        address = address.decode()
    if address.startswith("\0"):
        return "unix:@" + address[1:]
    return "unix:" + address


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--address", required=True)
    parser.add_argument("--authkey", help="shared secret (omit for no handshake)")
    parser.add_argument("--connections", type=int, default=0,
                        help="exit after this many connections (0 = serve until killed)")
    args = parser.parse_args()
    authkey = args.authkey.encode() if args.authkey is not None else None

    with Listener(to_python(args.address), authkey=authkey) as listener:
        print("ready", to_mpx(listener.address), flush=True)
        served = 0
        while args.connections == 0 or served < args.connections:
            served += 1
            try:
                conn = listener.accept()
            except AuthenticationError as e:
                print("auth-failed", e, flush=True)
                continue
            except (EOFError, OSError) as e:
                print("accept-failed", type(e).__name__, e, flush=True)
                continue
            with conn:
                count = 0
                try:
                    while True:
                        conn.send_bytes(conn.recv_bytes())
                        count += 1
                except EOFError:
                    pass
                print("served", count, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
