"""An S3 endpoint for the tests: moto's standalone server on a free loopback port, one
per test session, and a fresh bucket per test. boto3 talks to it over HTTP exactly as
it would to MinIO or AWS: nothing is stubbed.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import boto3

from testsupport.server import free_port

if TYPE_CHECKING:
    from types_boto3_s3 import S3Client

HOST = "127.0.0.1"
START_TIMEOUT = 30.0
# Credentials and region as boto3's chain reads them; moto takes any. Shared config
# files are pointed away and instance metadata is off, so nothing is looked up elsewhere.
AWS_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_CONFIG_FILE": os.devnull,
    "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
    "AWS_EC2_METADATA_DISABLED": "true",
}


@dataclass
class S3Server:
    endpoint: str
    proc: subprocess.Popen[bytes]
    log_path: Path
    _names: Iterator[int] = field(default_factory=itertools.count)

    def client(self) -> S3Client:
        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            aws_access_key_id=AWS_ENV["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=AWS_ENV["AWS_SECRET_ACCESS_KEY"],
            region_name=AWS_ENV["AWS_DEFAULT_REGION"],
        )

    def new_bucket(self) -> str:
        name = f"test-{os.getpid()}-{next(self._names)}"
        client = self.client()
        try:
            client.create_bucket(Bucket=name)
        finally:
            client.close()
        return name

    def remove_bucket(self, bucket: str) -> None:
        """Abort its multipart uploads, delete its objects, then the bucket (bounded)."""
        client = self.client()
        try:
            for _ in range(1000):
                uploads = client.list_multipart_uploads(Bucket=bucket).get("Uploads", [])
                for upload in uploads:
                    client.abort_multipart_upload(
                        Bucket=bucket, Key=upload["Key"], UploadId=upload["UploadId"]
                    )
                objects = client.list_objects_v2(Bucket=bucket).get("Contents", [])
                if objects:
                    client.delete_objects(
                        Bucket=bucket,
                        Delete={"Objects": [{"Key": item["Key"]} for item in objects]},
                    )
                if not uploads and not objects:
                    break
            client.delete_bucket(Bucket=bucket)
        finally:
            client.close()


def start_s3(workdir: Path) -> S3Server:
    port = free_port()
    log_path = workdir / "moto.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", HOST, "-p", str(port)],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, **AWS_ENV},
        )
    server = S3Server(f"http://{HOST}:{port}", proc, log_path)
    deadline = time.monotonic() + START_TIMEOUT
    for _ in range(int(START_TIMEOUT / 0.1) + 1):
        if proc.poll() is not None:
            raise RuntimeError(f"moto server exited: {log_path.read_text()[-2000:]}")
        with (
            contextlib.suppress(OSError),
            urllib.request.urlopen(f"{server.endpoint}/moto-api/", timeout=2),
        ):
            return server
        if time.monotonic() > deadline:
            break
        time.sleep(0.1)
    stop_s3(server)
    raise RuntimeError(
        f"moto server not ready in {START_TIMEOUT} s: {log_path.read_text()[-2000:]}"
    )


def stop_s3(server: S3Server) -> None:
    server.proc.terminate()
    try:
        server.proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        server.proc.kill()
        server.proc.wait(timeout=10)
