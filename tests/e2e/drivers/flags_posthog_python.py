"""posthog (PyPI) feature-flag driver: evaluates the platform flags for every case of
flag_cases.json twice, once remotely (a client without a personal API key: POST /flags)
and once locally (a client with personal_api_key=<secret>: GET /flags/definitions, then
only_evaluate_locally=True). Records what the SDK returned; check.py holds the
expectations (derived from examples/platform-flags.json)."""

import logging
import os
import sys
import time
import warnings

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common as c  # noqa: E402

from posthog import Posthog  # noqa: E402

# get_feature_flag_payload is deprecated in posthog 7 (still supported); keep the log readable.
warnings.filterwarnings("ignore", category=DeprecationWarning)
# "Can't compute group feature flag ... without group names" is expected for the no-group case.
logging.getLogger("posthog").setLevel(logging.ERROR)

SDK = "flags-posthog-python"


def evaluate(client, mode, flags, case, results, local):
    kwargs = {
        "groups": case["groups"],
        "person_properties": case["person_properties"],
        "group_properties": case["group_properties"],
        "only_evaluate_locally": local,
    }
    d = case["distinct_id"]

    def call(kind, method, flag, fn):
        entry = {"case": case["id"], "mode": mode, "call": kind, "method": method, "flag": flag}
        try:
            entry["value"] = c.json_copy(fn())
        except Exception as e:  # the SDK should not raise; record it for the checker
            entry["error"] = f"{type(e).__name__}: {e}"
        results.append(entry)

    for flag in flags:
        call("value", "get_feature_flag", flag, lambda: client.get_feature_flag(flag, d, **kwargs))
        call("enabled", "feature_enabled", flag, lambda: client.feature_enabled(flag, d, **kwargs))
        call("payload", "get_feature_flag_payload", flag, lambda: client.get_feature_flag_payload(flag, d, **kwargs))
    call("all", "get_all_flags", None, lambda: client.get_all_flags(d, **kwargs))


def main() -> int:
    cfg = c.config()
    run_tag = c.flag_run_tag()
    flags, cases = c.flag_cases(run_tag)
    record = {"sdk": SDK, "run_tag": run_tag, "started_at": c.now_iso(), "cases": cases, "errors": [],
              "local": {}, "results": []}

    def on_error(err, batch):
        msg = f"posthog-python on_error: {err!r}"
        print(msg, file=sys.stderr)
        record["errors"].append(msg)

    common = dict(host=cfg["capture_url"], on_error=on_error, flush_at=50, flush_interval=0.5, max_retries=2,
                  timeout=10, disable_geoip=True)
    remote = Posthog(cfg["token"], **common)
    local = Posthog(cfg["token"], personal_api_key=cfg["secret"], poll_interval=300, **common)

    t0 = time.monotonic()
    local.load_feature_flags()
    loaded = [f.get("key") for f in (local.feature_flags or [])]
    record["local"] = {"loaded_flags": loaded, "load_seconds": round(time.monotonic() - t0, 3),
                       "group_type_mapping": getattr(local, "group_type_mapping", None)}
    print(f"[{SDK}] local definitions: {loaded}")

    for case in cases:
        evaluate(remote, "remote", flags, case, record["results"], local=False)
        evaluate(local, "local", flags, case, record["results"], local=True)

    for client in (remote, local):
        client.flush(timeout_seconds=15)
        client.shutdown()
    record["finished_at"] = c.now_iso()
    c.write_flag_record(cfg, record)
    return 0


if __name__ == "__main__":
    sys.exit(main())
