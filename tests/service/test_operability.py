"""What a fleet needs to tell requests and replicas apart: request ids, X-Served-By, the
access log (text or JSON), and settings that refuse nonsense."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from service.http import logs
from service.settings import Settings
from tests.service.service_helpers import metric, run_vae_serve


def test_a_request_id_is_kept_or_made_and_echoed(client: TestClient) -> None:
    given = client.get("/healthz", headers={"X-Request-ID": "trace-42.a:b/c"})
    assert given.headers["x-request-id"] == "trace-42.a:b/c"
    made = [client.get("/v1/sample?n=1").headers["x-request-id"] for _ in range(2)]
    assert all(len(r) == 32 and int(r, 16) >= 0 for r in made) and made[0] != made[1]
    for hostile in ("a b", "x" * 129, "<script>", '"quoted"'):
        replaced = client.get("/healthz", headers={"X-Request-ID": hostile}).headers
        assert replaced["x-request-id"] != hostile and len(replaced["x-request-id"]) == 32


def test_every_response_says_which_replica_answered(client: TestClient) -> None:
    served_by = f"{os.uname().nodename}/{os.getpid()}"  # the test client's app: this process
    for path in ("/healthz", "/v1/models", "/v2/health/live", "/nowhere"):
        assert client.get(path).headers["x-served-by"] == served_by, path
    assert client.get("/v1/models").json()["served_by"] == served_by
    assert metric(client, "vae_instance_info", served_by=served_by) == 1


def test_the_access_log_has_one_line_per_request(
    client: TestClient, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger="vae.access"):
        client.get("/v1/sample?n=1", headers={"X-Request-ID": "r-1"})
    (record,) = [r for r in caplog.records if r.name == "vae.access"]
    assert record.getMessage().startswith('r-1 "GET /v1/sample" 200 ')
    fields = ("request_id", "method", "path", "status", "model_version", "served_by")
    assert [getattr(record, f) for f in fields][:5] == ["r-1", "GET", "/v1/sample", 200, "1"]
    line = json.loads(logs.JsonFormatter().format(record))
    assert {"time", "level", "logger", "message", *fields, "duration_ms"} <= set(line)
    assert line["level"] == "info" and line["duration_ms"] > 0


def test_json_lines_of_other_records_carry_the_request_id() -> None:
    record = logging.LogRecord("service.x", logging.ERROR, __file__, 1, "boom %d", (1,), None)
    token = logs.REQUEST_ID.set("r-9")
    try:
        line = json.loads(logs.JsonFormatter().format(record))
    finally:
        logs.REQUEST_ID.reset(token)
    assert line["message"] == "boom 1" and line["request_id"] == "r-9"
    assert line["time"].endswith("Z") and "method" not in line


@pytest.mark.parametrize(
    ("overrides", "says"),
    [
        ({"workers": 0}, "greater than or equal to 1"),
        ({"workers": 64, "ort_intra_op_threads": 8}, "would queue for"),
        ({"log_format": "yaml"}, "text"),
    ],
)
def test_nonsense_settings_are_refused(overrides: dict[str, object], says: str) -> None:
    with pytest.raises(ValueError, match=says):
        Settings(**overrides)  # type: ignore[arg-type]


def test_a_misspelt_setting_is_named_with_what_it_may_mean(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("VAE_")}
    env |= {"VAE_PORT": "-1", "VAE_WORKRS": "2"}  # the bad port stops it after the warning
    result = run_vae_serve(env)
    assert result.returncode == 1
    assert "VAE_WORKRS is not a setting, ignored; did you mean VAE_WORKERS?" in result.stderr
