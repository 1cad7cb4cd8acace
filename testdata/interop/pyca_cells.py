#!/usr/bin/python3
"""Third-party AES-GCM cell writer/reader backed by pyca/cryptography's AESGCM.

Debian package python3-cryptography; run with /usr/bin/python3 (not a pyenv
python). JSON lines on stdin -> JSON lines on stdout, one reply per request,
in order:

  {"op":"encrypt","key":"<hex>","aad":"<utf8>"|null,"pt":"<base64>"} -> {"cell":"<hex>"}
  {"op":"decrypt","key":"<hex>","aad":"<utf8>"|null,"cell":"<hex>"}
       -> {"pt":"<base64>"} or {"error":"<message>"} (authentication failure)

Cell layout (raw bytes, hex on the wire): ciphertext || tag(16) || nonce(12),
i.e. the nonce is stored AFTER AESGCM.encrypt()'s ciphertext||tag output.
AES-128-GCM for 16-byte keys, AES-256-GCM for 32-byte keys.

Anything outside the contract (bad JSON, unknown op, missing/mistyped field,
non-hex key or cell, key not 16/32 bytes, non-strict-base64 pt) is fatal:
message on stderr, exit status 2.
"""

import base64
import binascii
import json
import os
import sys

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

NONCE_LEN = 12
TAG_LEN = 16


class Malformed(Exception):
    pass


def get_str(req, name):
    if name not in req:
        raise Malformed("missing field %r" % name)
    v = req[name]
    if not isinstance(v, str):
        raise Malformed("field %r must be a string" % name)
    return v


def unhex(s, what):
    # bytes.fromhex tolerates whitespace; the contract does not.
    if len(s) % 2 or any(c not in "0123456789abcdefABCDEF" for c in s):
        raise Malformed("%s is not hex" % what)
    return bytes.fromhex(s)


def handle(req):
    if not isinstance(req, dict):
        raise Malformed("request must be a JSON object")
    op = get_str(req, "op")
    if op not in ("encrypt", "decrypt"):
        raise Malformed("unknown op %r" % op)
    key = unhex(get_str(req, "key"), "key")
    if len(key) not in (16, 32):
        raise Malformed("key must be 16 or 32 bytes, got %d" % len(key))
    if "aad" not in req:
        raise Malformed('missing field "aad" (use null for none)')
    aad = req["aad"]
    if aad is not None and not isinstance(aad, str):
        raise Malformed('field "aad" must be a string or null')
    try:
        aad_bytes = None if aad is None else aad.encode("utf-8")
    except UnicodeEncodeError:
        raise Malformed("aad is not valid UTF-8")
    aead = AESGCM(key)

    if op == "encrypt":
        try:
            pt = base64.b64decode(get_str(req, "pt"), validate=True)
        except binascii.Error:
            raise Malformed("pt is not strict base64")
        nonce = os.urandom(NONCE_LEN)
        ct_and_tag = aead.encrypt(nonce, pt, aad_bytes)  # returns ciphertext || tag
        return {"cell": (ct_and_tag + nonce).hex()}

    cell = unhex(get_str(req, "cell"), "cell")
    if len(cell) < TAG_LEN + NONCE_LEN:
        return {"error": "cell too short: %d bytes" % len(cell)}
    ct_and_tag, nonce = cell[:-NONCE_LEN], cell[-NONCE_LEN:]
    try:
        pt = aead.decrypt(nonce, ct_and_tag, aad_bytes)
    except InvalidTag:
        return {"error": "InvalidTag: authentication failed"}
    return {"pt": base64.b64encode(pt).decode("ascii")}


def main():
    out = sys.stdout
    for lineno, line in enumerate(sys.stdin, 1):
        if not line.strip():
            continue
        try:
            try:
                req = json.loads(line)
            except ValueError as e:
                raise Malformed("invalid JSON: %s" % e)
            reply = handle(req)
        except Malformed as e:
            sys.stderr.write("pyca_cells.py: line %d: malformed input: %s\n" % (lineno, e))
            sys.exit(2)
        out.write(json.dumps(reply, separators=(",", ":")) + "\n")
        out.flush()


if __name__ == "__main__":
    main()
