"""Workers KV's REST paths answered by KV's engine: the KV binding of tests/d1_worker under the
pinned `wrangler dev` (the same worker and process as the D1 routes; see worker.js).

These pin what sessionctl's `kv import --remote` / `kv export --remote` will rely on: the
bulk write with TTLs and metadata, the listing and its cursor, the bulk read (100 keys at
most, missing keys null), KV's refusal of a TTL under 60 s, keys with ':' '/' and any UTF-8
in the path, and the harness's own parts (token check, stats that never hold the token or a
value).

All tests share one `wrangler dev`; each starts on an empty namespace with zeroed stats (fresh_d1).
"""

from __future__ import annotations

import json
import time

import pytest

from d1_worker_server import D1Worker, d1_worker, fresh_d1  # noqa: F401  (fixtures)

pytestmark = pytest.mark.wrangler

KV_REFUSED = 10033  # the worker's code for KV's refusals (the messages are the binding's)
TTL_REFUSAL = "Invalid expiration_ttl of 30. Expiration TTL must be at least 60."


@pytest.fixture
def kv(fresh_d1: D1Worker) -> D1Worker:
    """Every test here starts on an empty KV namespace with zeroed stats."""
    return fresh_d1


def ok(status_and_payload: tuple[int, dict]) -> dict:
    """The payload of a success answer, after checking its envelope is Cloudflare's."""
    status, payload = status_and_payload
    assert status == 200, payload
    assert (payload["success"], payload["errors"], payload["messages"]) == (True, [], []), payload
    return payload


def error_of(status_and_payload: tuple[int, dict]) -> tuple[int, int, str]:
    """(status, code, message) of an error answer, after checking its envelope is Cloudflare's."""
    status, payload = status_and_payload
    assert payload["success"] is False and payload["result"] is None and payload["messages"] == [], payload
    (error,) = payload["errors"]
    return status, error["code"], error["message"]


def bulk_write(kv: D1Worker, items: list[dict]) -> dict:
    return ok(kv.kv_request("PUT", "/bulk", items))["result"]


def test_a_bulk_write_with_ttl_and_metadata_lists_under_its_prefix(kv):
    before = int(time.time())
    result = bulk_write(kv, [
        {"key": "tg:1", "value": '{"step": 1}', "expiration_ttl": 3600, "metadata": {"v": 1, "who": "서버"}},
        {"key": "tg:2", "value": "plain"},
        {"key": "other:1", "value": "x", "metadata": {"v": 2}},
        {"key": "tg", "value": "the prefix itself"},
    ])
    after = int(time.time())
    assert result == {"successful_key_count": 4, "unsuccessful_keys": []}

    payload = ok(kv.kv_request("GET", "/keys?prefix=tg%3A"))
    assert payload["result_info"] == {"count": 2, "cursor": ""}
    first, second = payload["result"]
    assert first["name"] == "tg:1" and first["metadata"] == {"v": 1, "who": "서버"}
    assert before + 3600 <= first["expiration"] <= after + 3600
    assert second == {"name": "tg:2"}  # no expiration, no metadata: both omitted
    # exact matches list under their prefix; other prefixes never do
    assert [k["name"] for k in kv.kv_list("tg")] == ["tg", "tg:1", "tg:2"]
    assert [k["name"] for k in kv.kv_list("")] == ["other:1", "tg", "tg:1", "tg:2"]
    assert kv.kv_list("nothing:") == []

    assert ok(kv.kv_request("GET", "/metadata/tg%3A1"))["result"] == {"v": 1, "who": "서버"}
    assert ok(kv.kv_request("GET", "/metadata/tg%3A2"))["result"] is None
    assert kv.kv_get("tg:1") == '{"step": 1}'


def test_listing_pages_with_limit_10_give_every_key_once(kv):
    names = [f"page:{i:02d}" for i in range(25)]
    bulk_write(kv, [{"key": name, "value": str(i)} for i, name in enumerate(names)])
    bulk_write(kv, [{"key": "zz-outside", "value": "-"}])

    seen, sizes, cursor = [], [], ""
    while True:
        payload = ok(kv.kv_request("GET", "/keys?prefix=page%3A&limit=10" + (f"&cursor={cursor}" if cursor else "")))
        sizes.append(payload["result_info"]["count"])
        assert payload["result_info"]["count"] == len(payload["result"])
        seen += [k["name"] for k in payload["result"]]
        cursor = payload["result_info"]["cursor"]
        if not cursor:
            break
    assert seen == names and sizes == [10, 10, 5]

    for limit in ("9", "1001", "ten"):  # the documented range is 10..1000
        status, code, _ = error_of(kv.kv_request("GET", f"/keys?limit={limit}"))
        assert (status, code) == (400, KV_REFUSED)
    assert len(ok(kv.kv_request("GET", "/keys"))["result"]) == 26  # default limit 1000


def test_bulk_get_reads_up_to_100_keys_with_or_without_metadata(kv):
    present = [f"bg:{i:03d}" for i in range(99)]
    bulk_write(kv, [{"key": k, "value": f"value {k}", "metadata": {"n": i}} for i, k in enumerate(present)])
    bulk_write(kv, [{"key": "bg:empty", "value": "", "metadata": {"empty": True}},
                    {"key": "bg:json", "value": '{"a": [1, 2]}'}])
    keys = present[:98] + ["bg:empty", "bg:missing"]
    assert len(keys) == 100

    values = ok(kv.kv_request("POST", "/bulk/get", {"keys": keys}))["result"]["values"]
    assert list(values) == keys
    assert values["bg:000"] == "value bg:000" and values["bg:empty"] == "" and values["bg:missing"] is None

    values = ok(kv.kv_request("POST", "/bulk/get", {"keys": keys, "withMetadata": True}))["result"]["values"]
    assert values["bg:007"] == {"value": "value bg:007", "metadata": {"n": 7}}
    assert values["bg:empty"] == {"value": "", "metadata": {"empty": True}}
    assert values["bg:missing"] is None

    parsed = ok(kv.kv_request("POST", "/bulk/get", {"keys": ["bg:json", "bg:missing"], "type": "json"}))
    assert parsed["result"]["values"] == {"bg:json": {"a": [1, 2]}, "bg:missing": None}

    assert error_of(kv.kv_request("POST", "/bulk/get", {"keys": keys + ["bg:one-too-many"]})) == (
        400, KV_REFUSED, "You can request a maximum of 100 keys")
    assert error_of(kv.kv_request("POST", "/bulk/get", {"kees": keys}))[:2] == (400, 7400)


def test_kv_refuses_a_ttl_under_60_seconds_and_the_bulk_write_writes_nothing(kv):
    # the whole bulk write is refused, its valid first item too
    answer = kv.kv_request("PUT", "/bulk", [{"key": "ttl:ok", "value": "a", "expiration_ttl": 60},
                                            {"key": "ttl:short", "value": "b", "expiration_ttl": 30}])
    assert error_of(answer) == (400, KV_REFUSED, TTL_REFUSAL)
    assert kv.kv_list() == []
    # a single write reaches the binding, which refuses it in the same words
    assert error_of(kv.kv_request("PUT", "/values/ttl%3Ashort?expiration_ttl=30", raw_body=b"b")) == (
        400, KV_REFUSED, TTL_REFUSAL)
    soon = int(time.time()) + 10
    too_soon = f"Invalid expiration of {soon}. Expiration times must be at least 60 seconds in the future."
    for answer in (kv.kv_request("PUT", f"/values/ttl%3Asoon?expiration={soon}", raw_body=b"c"),
                   kv.kv_request("PUT", "/bulk", [{"key": "ttl:soon", "value": "c", "expiration": soon}])):
        assert error_of(answer) == (400, KV_REFUSED, too_soon)
    assert kv.kv_list() == []

    kv.kv_put("ttl:ok", "a", expiration_ttl=60)  # 60 itself is allowed
    later = int(time.time()) + 7200
    kv.kv_put("ttl:at", "b", expiration=later)
    assert {k["name"]: k["expiration"] for k in kv.kv_list("ttl:")}["ttl:at"] == later


def test_values_round_trip_keys_with_colons_slashes_and_unicode(kv):
    keys = ["tg:123456789", "a/b/c", "/leading-slash", "ключ:ü/한국어 %2F?#&+=", "sp ace:tab\tkey"]
    for i, key in enumerate(keys):
        value = key.encode() + b"\x00\xff" + bytes([i])  # any bytes, not only UTF-8
        assert ok(kv.kv_request("PUT", "/values/" + kv.kv_key_path(key), raw_body=value))["result"] is None
        assert kv.kv_request("GET", "/values/" + kv.kv_key_path(key)) == (200, value)
    assert sorted(k["name"] for k in kv.kv_list()) == sorted(keys)
    assert [k["name"] for k in kv.kv_list("ключ:")] == ["ключ:ü/한국어 %2F?#&+="]

    missing = "/values/" + kv.kv_key_path("tg:nobody")
    assert error_of(kv.kv_request("GET", missing)) == (404, 10009, "get: 'key not found'")
    assert error_of(kv.kv_request("GET", "/metadata/" + kv.kv_key_path("tg:nobody"))) == (
        404, 10009, "metadata: 'key not found'")
    assert kv.kv_get("tg:nobody") is None

    assert ok(kv.kv_request("DELETE", "/values/" + kv.kv_key_path("a/b/c")))["result"] is None
    assert kv.kv_get("a/b/c") is None
    result = ok(kv.kv_request("POST", "/bulk/delete", ["tg:123456789", "/leading-slash", "never-there"]))["result"]
    assert result == {"successful_key_count": 3, "unsuccessful_keys": []}
    assert sorted(k["name"] for k in kv.kv_list()) == sorted(["ключ:ü/한국어 %2F?#&+=", "sp ace:tab\tkey"])
    assert kv.kv_wipe() == 2 and kv.kv_list() == []


def test_credentials_are_checked_and_stats_hold_key_names_but_no_token_or_value(kv):
    secret_value = "value-that-must-not-be-logged-7f3a"
    kv.kv_put("tg:secret", secret_value, metadata={"kind": "session"})
    for token in ("wrong-token", ""):  # "": no Authorization header at all
        for method, path, body in (("GET", "/keys", None), ("POST", "/bulk/get", {"keys": ["tg:secret"]}),
                                   ("PUT", "/bulk", [{"key": "tg:x", "value": "x"}]),
                                   ("GET", "/values/tg%3Asecret", None)):
            assert error_of(kv.kv_request(method, path, body, token=token)) == (401, 10000, "Authentication error")
    other_namespace = kv.kv_url.replace(kv.kv_namespace_id, "f" * 32)
    assert error_of(kv.kv_request("GET", other_namespace + "/keys")) == (
        404, 10013, "get namespace: 'namespace not found'")
    assert error_of(kv.kv_request("GET", "/nothing"))[:2] == (404, 7000)
    assert error_of(kv.kv_request("POST", "/keys"))[:2] == (405, 7001)
    assert [k["name"] for k in kv.kv_list()] == ["tg:secret"]  # nothing written without the token

    kv.reset_stats()
    assert kv.kv_get("tg:secret") == secret_value
    ok(kv.kv_request("POST", "/bulk/get", {"keys": ["tg:secret", "tg:none"], "withMetadata": True}))
    kv.kv_list("tg:")
    kv.kv_request("GET", "/keys", token="wrong")
    stats = kv.stats()
    assert stats["by_endpoint"] == {"kv/values": 1, "kv/bulk/get": 1, "kv/keys": 2}
    assert stats["by_status"] == {"200": 3, "401": 1} and stats["connections"] == 4
    assert [r["keys"] for r in stats["log"]] == [["tg:secret"], ["tg:secret", "tg:none"], ["tg:secret"], []]
    assert stats["kv_keys"] == 4 and stats["log"][0]["response_bytes"] == len(secret_value)
    logged = json.dumps(stats)
    assert kv.token not in logged and secret_value not in logged
