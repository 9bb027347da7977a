"""udagram/aws.py: "does this object exist" against a real S3 API (the moto server over HTTP)."""

from __future__ import annotations

import pytest
from botocore.exceptions import ClientError

from udagram.aws import client, is_not_found, object_exists
from udagram.settings import Settings


def _error(code: str) -> ClientError:
    return ClientError({"Error": {"Code": code, "Message": "..."}}, "HeadObject")


def test_not_found_is_told_from_other_errors() -> None:
    assert all(is_not_found(_error(code)) for code in ("404", "NoSuchKey", "NotFound"))
    assert not any(is_not_found(_error(code)) for code in ("403", "AccessDenied", "SlowDown", "500"))


def test_object_exists(aws_settings: Settings) -> None:
    s3 = client("s3", aws_settings)
    bucket = aws_settings.originals_bucket
    assert not object_exists(s3, bucket, "originals/missing.jpg")
    s3.put_object(Bucket=bucket, Key="originals/there.jpg", Body=b"x")
    assert object_exists(s3, bucket, "originals/there.jpg")


def test_other_errors_are_raised() -> None:
    class Refusing:
        def head_object(self, **_: str) -> None:
            raise _error("403")

    with pytest.raises(ClientError):
        object_exists(Refusing(), "bucket", "key")
