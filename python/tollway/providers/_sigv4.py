"""AWS Signature Version 4 for request headers (`Authorization: AWS4-HMAC-SHA256 ...`).

The algorithm, as AWS documents it:

1. Canonical request: `METHOD \\n CanonicalURI \\n CanonicalQuery \\n CanonicalHeaders \\n
   SignedHeaders \\n hex(sha256(body))`. Header names are lowercased and sorted, values trimmed
   with inner runs of spaces folded to one; every signed header is listed in `SignedHeaders`.
   Services other than S3 encode each path segment of the (already percent-encoded) path once
   more, so `v1%3A0` in the URL is `v1%253A0` in the canonical URI. Query parameters are
   percent-encoded with only `A-Z a-z 0-9 - _ . ~` left bare, and sorted.
2. String to sign: `AWS4-HMAC-SHA256 \\n <x-amz-date> \\n <date>/<region>/<service>/aws4_request \\n
   hex(sha256(canonical request))`.
3. Signing key: HMAC-SHA256 chained over `"AWS4" + secret`, date, region, service, `aws4_request`.
4. Signature: hex(HMAC-SHA256(signing key, string to sign)).

Tested against the examples in AWS's documentation (`tests/test_providers_sigv4.py`).
"""

from __future__ import annotations

import hashlib
import hmac
from datetime import UTC, datetime
from urllib.parse import quote, unquote

ALGORITHM = "AWS4-HMAC-SHA256"
_UNRESERVED = "-_.~"


def _hmac(key: bytes, message: str) -> bytes:
    return hmac.new(key, message.encode("utf-8"), hashlib.sha256).digest()


def signing_key(secret_key: str, date: str, region: str, service: str) -> bytes:
    key = _hmac(("AWS4" + secret_key).encode("utf-8"), date)
    key = _hmac(key, region)
    key = _hmac(key, service)
    return _hmac(key, "aws4_request")


def canonical_uri(path: str) -> str:
    """The path as signed by every service but S3: each segment of the wire path encoded again."""
    return "/".join(quote(segment, safe=_UNRESERVED) for segment in (path or "/").split("/"))


def canonical_query(query: str) -> str:
    pairs = []
    for item in query.split("&") if query else ():
        name, _, value = item.partition("=")
        pairs.append((quote(unquote(name), safe=_UNRESERVED), quote(unquote(value), safe=_UNRESERVED)))
    return "&".join(f"{name}={value}" for name, value in sorted(pairs))


def canonical_request(method: str, path: str, query: str, headers: dict[str, str], body: bytes) -> tuple[str, str]:
    """The canonical request and its `SignedHeaders` list. `headers` are exactly the signed ones."""
    normalized = {name.lower(): " ".join(value.strip().split()) for name, value in headers.items()}
    names = sorted(normalized)
    signed_headers = ";".join(names)
    lines = "".join(f"{name}:{normalized[name]}\n" for name in names)
    request = "\n".join(
        [method, canonical_uri(path), canonical_query(query), lines, signed_headers, hashlib.sha256(body).hexdigest()]
    )
    return request, signed_headers


def sign(
    *,
    method: str,
    host: str,
    path: str,
    query: str,
    headers: dict[str, str],
    body: bytes,
    access_key: str,
    secret_key: str,
    region: str,
    service: str,
    session_token: str | None = None,
    now: datetime | None = None,
) -> dict[str, str]:
    """The headers to add to a request so AWS accepts it: `authorization`, `x-amz-date` and,
    with temporary credentials, `x-amz-security-token`. `headers` (besides `host`, which is
    always signed) are the other headers to sign, such as `content-type`."""
    moment = (now or datetime.now(UTC)).astimezone(UTC)
    amz_date = moment.strftime("%Y%m%dT%H%M%SZ")
    date = amz_date[:8]
    added = {"x-amz-date": amz_date}
    if session_token:
        added["x-amz-security-token"] = session_token
    signed = {**{k.lower(): v for k, v in headers.items()}, "host": host, **added}
    request, signed_headers = canonical_request(method, path, query, signed, body)
    scope = f"{date}/{region}/{service}/aws4_request"
    string_to_sign = "\n".join([ALGORITHM, amz_date, scope, hashlib.sha256(request.encode("utf-8")).hexdigest()])
    signature = hmac.new(
        signing_key(secret_key, date, region, service), string_to_sign.encode("utf-8"), hashlib.sha256
    ).hexdigest()
    added["authorization"] = (
        f"{ALGORITHM} Credential={access_key}/{scope}, SignedHeaders={signed_headers}, Signature={signature}"
    )
    return added
