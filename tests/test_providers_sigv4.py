"""AWS Signature Version 4, against the worked examples in AWS's own documentation."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime

from tollway.providers._sigv4 import canonical_query, canonical_request, canonical_uri, sign, signing_key

SECRET = "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY"
FORM = {"content-type": "application/x-www-form-urlencoded; charset=utf-8"}


def test_aws_documented_get_example() -> None:
    # "Create a signed AWS API request", GET iam ListUsers on 2015-08-30.
    added = sign(
        method="GET",
        host="iam.amazonaws.com",
        path="/",
        query="Action=ListUsers&Version=2010-05-08",
        headers=FORM,
        body=b"",
        access_key="AKIDEXAMPLE",
        secret_key=SECRET,
        region="us-east-1",
        service="iam",
        now=datetime(2015, 8, 30, 12, 36, tzinfo=UTC),
    )
    assert added == {
        "x-amz-date": "20150830T123600Z",
        "authorization": "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/iam/aws4_request, "
        "SignedHeaders=content-type;host;x-amz-date, "
        "Signature=5d672d79c15b13162d9279b0855cfba6789a8edb4c82c400e06b5924a6f2b5d7",
    }
    request, signed = canonical_request(
        "GET",
        "/",
        "Action=ListUsers&Version=2010-05-08",
        {**FORM, "host": "iam.amazonaws.com", "x-amz-date": "20150830T123600Z"},
        b"",
    )
    assert signed == "content-type;host;x-amz-date"
    # The documented hash of the canonical request.
    assert hashlib.sha256(request.encode()).hexdigest() == (
        "f536975d06c0309214f805bb90ccff089219ecd68b2577efef23edd43b7e1a59"
    )


def test_aws_documented_post_example() -> None:
    # "Signed Signature Version 4 Requests Examples", POST iam ListUsers on 2011-09-09.
    added = sign(
        method="POST",
        host="iam.amazonaws.com",
        path="/",
        query="",
        headers=FORM,
        body=b"Action=ListUsers&Version=2010-05-08",
        access_key="AKIDEXAMPLE",
        secret_key=SECRET,
        region="us-east-1",
        service="iam",
        now=datetime(2011, 9, 9, 23, 36, tzinfo=UTC),
    )
    assert added["authorization"].endswith("Signature=ced6826de92d2bdeed8f846f0bf508e8559e98e4b0199114b84c54174deb456c")


def test_signing_key_derivation_example() -> None:
    # AWS's "Examples of how to derive a signing key" (2012-02-15, us-east-1, iam).
    key = signing_key(SECRET, "20120215", "us-east-1", "iam")
    assert key.hex() == "f4780e2d9f65fa895f9c67b32ce1baf0b0d8a43505a000a1a9e090d414db404d"


def test_session_token_is_signed_and_sent() -> None:
    added = sign(
        method="POST",
        host="bedrock-runtime.us-east-1.amazonaws.com",
        path="/model/m/converse",
        query="",
        headers={"content-type": "application/json"},
        body=b"{}",
        access_key="AKID",
        secret_key="secret",
        region="us-east-1",
        service="bedrock",
        session_token="token-1",
        now=datetime(2024, 1, 1, tzinfo=UTC),
    )
    assert added["x-amz-security-token"] == "token-1"
    assert "SignedHeaders=content-type;host;x-amz-date;x-amz-security-token," in added["authorization"]


def test_canonical_uri_encodes_path_segments_once_more() -> None:
    # Every service but S3 signs the already-encoded path encoded again.
    assert canonical_uri("/model/anthropic.claude-v2%3A1/converse") == "/model/anthropic.claude-v2%253A1/converse"
    assert canonical_uri("") == "/" and canonical_uri("/a b/~x") == "/a%20b/~x"


def test_canonical_query_sorts_and_encodes() -> None:
    assert canonical_query("b=2&a=1&a=0&c") == "a=0&a=1&b=2&c="
    assert canonical_query("x=a%2Fb c") == "x=a%2Fb%20c"
    assert canonical_query("") == ""


def test_header_values_are_trimmed_and_spaces_folded() -> None:
    request, _ = canonical_request("GET", "/", "", {"My-Header": "  a   b  ", "host": "h"}, b"")
    assert "my-header:a b\n" in request
