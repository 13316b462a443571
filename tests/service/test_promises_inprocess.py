"""``/readyz`` answering not ready (a real redis-server, no worker; then no Redis at all), and
``BREGKD_MAX_FIELD_BYTES`` refusing an oversized form field."""
from __future__ import annotations

from service.stack import EmbeddedStack, stop_process
from tests.service._app import key_for, make_client


def test_readyz_not_ready_without_a_worker_or_without_redis(tmp_path):
    st = EmbeddedStack(tmp_path / "redis-only")
    st.data_dir.mkdir(parents=True)
    st.log_dir.mkdir(parents=True)
    st.start_redis()
    try:
        client, _ = make_client(tmp_path / "api", redis_url=st.redis_url)
        r = client.get("/readyz")
        assert r.status_code == 503, r.text
        body = r.json()
        assert body["ready"] is False and body["redis"] is True and body["database"] is True
        assert body["workers"] == [] and "no worker" in body["detail"]
        import redis

        redis.Redis.from_url(st.redis_url).set("bregkd:worker:w1@host", "1", ex=30)  # a worker reports in
        r = client.get("/readyz")
        assert r.status_code == 200 and r.json()["workers"] == ["w1@host"], r.text
        stop_process(st.redis_proc)
        r = client.get("/readyz")
        assert r.status_code == 503 and r.json()["redis"] is False and "redis unreachable" in r.json()["detail"]
    finally:
        st.stop()


def test_max_field_bytes_refuses_an_oversized_manifest(tmp_path):
    client, settings = make_client(tmp_path, max_field_bytes=2048)
    h = key_for(settings, "acme")
    big = '{"arch": "mlp", "args": {"in_features": 64, "hidden": [' + ", ".join(["8"] * 1000) + '], "num_classes": 10}}'
    r = client.post("/v1/teachers", headers=h, files={"file": ("w.safetensors", b"x" * 100)}, data={"manifest": big})
    assert r.status_code == 413, r.text
    assert "manifest" in r.json()["detail"] and "2048" in r.json()["detail"]
    assert not any((tmp_path / "blobs" / "tmp").iterdir())  # the partial upload is gone
    small = client.post("/v1/teachers", headers=h, files={"file": ("w.safetensors", b"x" * 100)},
                        data={"manifest": '{"arch": "mlp"}'})
    assert small.status_code != 413  # under the limit the field is read (and judged on its content)
