#!/usr/bin/env python3
"""Runs apps/python/echo_{server,client}.py with Python 3.12's authkey handshake.

The machine's python3 may be 3.11, whose multiprocessing speaks only the legacy HMAC-MD5
form. This replaces multiprocessing.connection's deliver_challenge/answer_challenge with the
3.12 form written from its description (stdlib hmac only), so mpx's default form is checked
against an implementation that is not mpx's:

  challenge  b"#CHALLENGE#" + b"{digest}" + 40 random bytes
  response   b"{digest}" + HMAC-digest(authkey, message after #CHALLENGE#)
  legacy     a 16/20-byte message without prefix means HMAC-MD5, raw

Usage: modern_peer.py [--digest NAME] [--strict] SCRIPT [script args...]
  --digest  the digest our challenges name (default sha256)
  --strict  refuse the legacy form from the peer: its challenge and its response must
            carry a {digest} prefix (proves the peer speaks the 3.12 form)
"""
import hmac
import os
import runpy
import sys
import multiprocessing.connection as mpc

ALLOWED = {b"md5", b"sha256", b"sha384", b"sha512", b"sha3_256", b"sha3_384", b"sha3_512",
           b"blake2b", b"blake2s"}
CHALLENGE, WELCOME, FAILURE = b"#CHALLENGE#", b"#WELCOME#", b"#FAILURE#"
digest_name = "sha256"
strict = False


def split(message):
    if len(message) in (16, 20) and not strict:
        return None, message
    if message.startswith(b"{"):
        end = message.find(b"}", 1, 10)
        if end > 0 and message[1:end] in ALLOWED:
            return message[1:end].decode(), message[end + 1:]
    raise mpc.AuthenticationError(f"no usable digest prefix in {message!r}")


def deliver_challenge(connection, authkey):
    message = b"{%s}" % digest_name.encode() + os.urandom(40)
    connection.send_bytes(CHALLENGE + message)
    response = connection.recv_bytes(256)
    try:
        name, mac = split(response)
        expected = hmac.new(authkey, message, name or "md5").digest()
        if not hmac.compare_digest(expected, mac):
            raise mpc.AuthenticationError("digest received was wrong")
    except mpc.AuthenticationError:
        connection.send_bytes(FAILURE)
        raise
    connection.send_bytes(WELCOME)


def answer_challenge(connection, authkey):
    message = connection.recv_bytes(256)
    if not message.startswith(CHALLENGE):
        raise mpc.AuthenticationError(f"expected a challenge, got {message!r}")
    message = message[len(CHALLENGE):]
    if len(message) < 20:
        raise mpc.AuthenticationError("challenge too short")
    name, _ = split(message)
    if name is None:
        response = hmac.new(authkey, message, "md5").digest()
    else:
        response = b"{%s}" % name.encode() + hmac.new(authkey, message, name).digest()
    connection.send_bytes(response)
    if connection.recv_bytes(256) != WELCOME:
        raise mpc.AuthenticationError("digest sent was rejected")


def main():
    global digest_name, strict
    args = sys.argv[1:]
    while args and args[0].startswith("--"):
        flag = args.pop(0)
        if flag == "--digest":
            digest_name = args.pop(0)
        elif flag == "--strict":
            strict = True
        else:
            raise SystemExit(f"unknown option {flag}")
    if not args:
        raise SystemExit(__doc__)
    mpc.deliver_challenge = deliver_challenge
    mpc.answer_challenge = answer_challenge
    sys.argv = args
    runpy.run_path(args[0], run_name="__main__")


if __name__ == "__main__":
    main()
