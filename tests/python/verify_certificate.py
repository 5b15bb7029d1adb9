"""Independent verification of a weightmark certificate or report, written from
docs/formats.md alone: Python's standard library plus the `cryptography`
package's Ed25519, no weightmark code.

    python3 verify_certificate.py CERT.json KEY.pub

Prints "ok <predicateType>" and exits 0 when the signature verifies; prints the
reason and exits 1 otherwise.
"""
import base64
import hashlib
import json
import sys

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey


def read_public_key(path):
    lines = [l.strip() for l in open(path, encoding="utf-8").read().splitlines()]
    if not lines or lines[0] != "weightmark public key v1":
        raise ValueError("not a weightmark public key file")
    body = [l for l in lines[1:] if l and not l.startswith("#")]
    if len(body) != 1:
        raise ValueError("expected exactly one key line")
    raw = base64.b64decode(body[0], validate=True)
    if len(raw) != 32:
        raise ValueError("public key is not 32 bytes")
    return raw


def key_id(raw_public_key):
    return hashlib.sha256(b"weightmark/v1 key id\0" + raw_public_key).hexdigest()[:16]


def pae(payload_type, payload):
    t = payload_type.encode("utf-8")
    return b"DSSEv1 %d %s %d %s" % (len(t), t, len(payload), payload)


def main():
    envelope = json.load(open(sys.argv[1], encoding="utf-8"))
    raw = read_public_key(sys.argv[2])
    if envelope["payloadType"] != "application/vnd.in-toto+json":
        print("wrong payloadType")
        return 1
    payload = base64.b64decode(envelope["payload"], validate=True)
    wanted = key_id(raw)
    signatures = [s for s in envelope["signatures"] if s["keyid"] == wanted]
    if not signatures:
        print("no signature by key", wanted)
        return 1
    public = Ed25519PublicKey.from_public_bytes(raw)
    for s in signatures:
        try:
            public.verify(base64.b64decode(s["sig"], validate=True), pae(envelope["payloadType"], payload))
        except InvalidSignature:
            continue
        statement = json.loads(payload)
        assert statement["_type"] == "https://in-toto.io/Statement/v1"
        print("ok", statement["predicateType"])
        return 0
    print("bad signature")
    return 1


if __name__ == "__main__":
    sys.exit(main())
