"""Independent parse of a report with Python's email package (stdin -> JSON).

Prints the top-level header fields, and per MIME part of the multipart/report:
its type, transfer encoding, decoded text (text parts), the delivery status
blocks as [name, value] lists (message/delivery-status parsed by Python
itself; the RFC 6533 global type, which Python does not know, split into
blocks and parsed with HeaderParser), and the returned message or headers.
"""
import json
import sys
from email import message_from_bytes, policy
from email.parser import HeaderParser

raw = sys.stdin.buffer.read()
msg = message_from_bytes(raw, policy=policy.default)


def fields(m):
    return [[k, str(v)] for k, v in m.items()]


def blocks_from_text(text):
    out = []
    for chunk in text.replace("\r\n", "\n").split("\n\n"):
        if chunk.strip():
            out.append(fields(HeaderParser(policy=policy.default).parsestr(chunk.strip("\n") + "\n")))
    return out


result = {
    "headers": fields(msg),
    "content_type": msg.get_content_type(),
    "params": dict(msg.get_params() or []),
    "defects": [str(d) for d in msg.defects],
    "parts": [],
}
for part in msg.iter_parts():
    ctype = part.get_content_type()
    entry = {
        "type": ctype,
        "cte": part.get("Content-Transfer-Encoding"),
        "description": part.get("Content-Description"),
        "defects": [str(d) for d in part.defects],
    }
    if ctype == "text/plain":
        entry["text"] = part.get_content()
        entry["charset"] = part.get_content_charset()
    elif ctype == "message/delivery-status":
        entry["blocks"] = [fields(b) for b in part.get_payload()]
    elif ctype == "message/global-delivery-status":
        # Python parses an unknown message/* type as one message and loses the
        # raw UTF-8 of its fields: take the part's octets between the boundaries.
        delimiter = b"\r\n--" + msg.get_boundary().encode("ascii")
        for segment in raw.split(delimiter)[1:]:
            head, _, body = segment.partition(b"\r\n\r\n")
            if b"message/global-delivery-status" in head.lower():
                entry["blocks"] = blocks_from_text(body.decode("utf-8"))
                break
    elif ctype in ("message/rfc822", "message/global"):
        inner = part.get_payload()[0] if isinstance(part.get_payload(), list) else None
        if inner is not None:
            entry["inner_headers"] = fields(inner)
            body = inner.get_payload(decode=True)
            entry["inner_body"] = body.decode("utf-8", "replace") if body is not None else None
    elif ctype in ("text/rfc822-headers", "message/global-headers"):
        payload = part.get_payload()
        if isinstance(payload, list):
            entry["inner_headers"] = fields(payload[0])
        else:
            entry["raw"] = payload
            entry["inner_headers"] = fields(HeaderParser(policy=policy.default).parsestr(payload))
    result["parts"].append(entry)

json.dump(result, sys.stdout)
