"""The team workflow on an S3 remote: A runs the pipeline, commits dvc.lock and pushes to S3; B
clones that commit and pulls: B is up to date without retraining, and B's experiment reruns only
the stages its param reaches. The S3 API is moto's server on a loopback port (a real HTTP S3
endpoint that DVC's s3fs/aiobotocore client talks to, not a mock inside this process's DVC)."""
from __future__ import annotations

import boto3
import pytest
from moto.server import ThreadedMotoServer

from pipeline_utils import ran_stages, sh

pytestmark = pytest.mark.slow

CREDS = {"access_key_id": "testing", "secret_access_key": "testing"}


@pytest.fixture
def s3_endpoint():
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    url = f"http://{host}:{port}"
    boto3.client("s3", endpoint_url=url, region_name="us-east-1", aws_access_key_id="testing",
                 aws_secret_access_key="testing").create_bucket(Bucket="team")
    yield url
    server.stop()


def add_credentials(repo, name="team"):
    """What each team member does once: credentials in .dvc/config.local, never committed."""
    for key, value in CREDS.items():
        sh(repo, "dvc", "remote", "modify", "--local", name, key, value)


def test_push_to_s3_then_a_clone_pulls_is_up_to_date_and_reruns_only_what_changed(project, tmp_path, s3_endpoint):
    a, _ = project
    sh(a, "dvc", "remote", "add", "-f", "team", "s3://team/cache")
    sh(a, "dvc", "remote", "modify", "team", "endpointurl", s3_endpoint)
    sh(a, "dvc", "remote", "modify", "team", "region", "us-east-1")
    add_credentials(a)
    assert "secret_access_key" not in (a / ".dvc/config").read_text()
    sh(a, "git", "add", ".dvc/config", "dvc.lock")
    sh(a, "git", "commit", "-qm", "S3 remote", check=False)  # nothing to commit if already there
    sh(a, "dvc", "push", "-r", "team", "-q")
    objects = boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1", aws_access_key_id="testing",
                           aws_secret_access_key="testing").list_objects_v2(Bucket="team")
    assert objects["KeyCount"] > 10

    b = tmp_path / "b"
    sh(tmp_path, "git", "clone", "-q", str(a), str(b))
    add_credentials(b)
    sh(b, "dvc", "pull", "-r", "team", "-q")
    assert "up to date" in sh(b, "dvc", "status")  # no stage changed, nothing missing
    assert ran_stages(sh(b, "dvc", "repro")) == set()
    assert (b / "bundle/manifest.json").is_file() and (b / "models/neural/lstm/weights.pt").is_file()

    out = sh(b, "dvc", "exp", "run", "-n", "lb16", "-S", "train.lookback=16")
    # only the neural branch and what is downstream of it; nothing upstream was retrained
    assert ran_stages(out) == {"check_params", "train@neural", "blend", "bundle", "evaluate", "explain", "report"}
    assert "lb16" in sh(b, "dvc", "exp", "show", "--csv")
