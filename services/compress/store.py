"""Storage backends of the archive (SPEC §4): a local directory served over HTTP, or an S3-compatible bucket.

Every method but `url` blocks (file system or network): callers run them in an executor.
"""

from __future__ import annotations

import os
import shutil
import uuid
from pathlib import Path
from typing import Any, Protocol

import boto3
from boto3.s3.transfer import TransferConfig
from botocore.config import Config as BotoConfig
from botocore.exceptions import BotoCoreError, ClientError

from services.compress.config import S3Config
from services.compress.signing import UrlSigner


class StoreUnavailable(RuntimeError):
    """The backend did not take the object; the archive stays spooled and is retried."""


class Store(Protocol):
    name: str

    def ensure_ready(self) -> None: ...

    def put(self, path: Path, key: str, content_type: str) -> None: ...

    def url(self, key: str) -> str: ...


class LocalStore:
    """Files under `root/<key>`, written atomically (temp file in the target directory, then rename).
    With a signer, `url` answers signed, expiring URLs (the service always gives one)."""

    name = "local"

    def __init__(self, root: Path, public_base: str = "", signer: UrlSigner | None = None) -> None:
        self.root = root
        self.public_base = public_base.rstrip("/")
        self.signer = signer

    def ensure_ready(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)

    def path_of(self, key: str) -> Path:
        """The file of `key`, which must stay inside the store directory (ValueError otherwise)."""
        if "\\" in key or "\0" in key or key.startswith("/"):
            raise ValueError("not a store key")
        path = self.root / key
        if not path.resolve().is_relative_to(self.root.resolve()):
            raise ValueError("not a store key")
        return path

    def put(self, path: Path, key: str, content_type: str) -> None:
        target = self.path_of(key)
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{target.name}.{uuid.uuid4().hex}.tmp")
        try:
            shutil.copyfile(path, tmp)
            with tmp.open("rb+") as f:
                os.fsync(f.fileno())
            os.replace(tmp, target)
        except OSError as exc:
            tmp.unlink(missing_ok=True)
            raise StoreUnavailable(f"local store: {exc}") from exc

    def url(self, key: str) -> str:
        if self.signer is None:
            return f"{self.public_base}/{key}"
        return f"{self.public_base}/{key}?{self.signer.query('/' + key)}"


class S3Store:
    """An S3-compatible bucket through boto3; creates the bucket when it is missing."""

    name = "s3"

    def __init__(self, cfg: S3Config, public_base: str = "", client_cert: tuple[str, str] | None = None) -> None:
        """`client_cert` (certificate, key files): presented to an HTTPS endpoint that asks for one (mTLS);
        the endpoint's certificate is checked against boto3's CA bundle (`AWS_CA_BUNDLE`)."""
        self.cfg = cfg
        self.public_base = public_base.rstrip("/")
        self._bucket_ready = False
        self._client: Any = boto3.session.Session().client(
            "s3",
            endpoint_url=cfg.endpoint_url or None,
            region_name=cfg.region,
            aws_access_key_id=cfg.access_key_id or None,
            aws_secret_access_key=cfg.secret_access_key or None,
            config=BotoConfig(
                signature_version="s3v4",
                s3={"addressing_style": cfg.addressing_style},
                connect_timeout=cfg.connect_timeout_s,
                read_timeout=cfg.read_timeout_s,
                retries={"max_attempts": cfg.max_attempts, "mode": "standard"},
                client_cert=client_cert,
            ),
        )
        self._transfer = TransferConfig(multipart_threshold=cfg.multipart_threshold_bytes, max_concurrency=2)

    def ensure_ready(self) -> None:
        """Create the bucket if missing (idempotent)."""
        if self._bucket_ready:
            return
        try:
            self._client.head_bucket(Bucket=self.cfg.bucket)
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") not in ("404", "NoSuchBucket", "NotFound"):
                raise StoreUnavailable(f"s3 head_bucket: {exc}") from exc
            self._create_bucket()
        except BotoCoreError as exc:
            raise StoreUnavailable(f"s3 unreachable: {exc}") from exc
        self._bucket_ready = True

    def _create_bucket(self) -> None:
        kwargs: dict[str, Any] = {"Bucket": self.cfg.bucket}
        if self.cfg.region and self.cfg.region != "us-east-1":
            kwargs["CreateBucketConfiguration"] = {"LocationConstraint": self.cfg.region}
        try:
            self._client.create_bucket(**kwargs)
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") not in (
                "BucketAlreadyOwnedByYou",
                "BucketAlreadyExists",
            ):
                raise StoreUnavailable(f"s3 create_bucket: {exc}") from exc
        except BotoCoreError as exc:
            raise StoreUnavailable(f"s3 unreachable: {exc}") from exc

    def put(self, path: Path, key: str, content_type: str) -> None:
        """Upload (multipart above the threshold); a PUT to an existing key replaces it."""
        self.ensure_ready()
        try:
            self._client.upload_file(
                str(path),
                self.cfg.bucket,
                key,
                ExtraArgs={"ContentType": content_type},
                Config=self._transfer,
            )
        except (BotoCoreError, ClientError, boto3.exceptions.S3UploadFailedError) as exc:
            self._bucket_ready = False  # the bucket may be gone too after an outage
            raise StoreUnavailable(f"s3 upload of {key}: {exc}") from exc

    def url(self, key: str) -> str:
        """Computed offline: a SigV4 presigned GET, or PUBLIC_BASE/key (endpoint/bucket/key without it)."""
        if self.cfg.url_mode == "presigned":
            return str(
                self._client.generate_presigned_url(
                    "get_object",
                    Params={"Bucket": self.cfg.bucket, "Key": key},
                    ExpiresIn=self.cfg.presign_expiry_s,
                )
            )
        base = self.public_base or f"{self.cfg.endpoint_url or 'https://s3.amazonaws.com'}/{self.cfg.bucket}"
        return f"{base}/{key}"

    def head(self, key: str) -> dict[str, Any] | None:
        """Object metadata, or None when absent."""
        try:
            return dict(self._client.head_object(Bucket=self.cfg.bucket, Key=key))
        except ClientError:
            return None
