#!/usr/bin/env python3
"""Routing end to end: attaches a signed webhook destination (start: earliest) to the running
Switchyard, receives every stored event on a local HTTP server, and verifies each delivery's
Standard Webhooks signature with the `standardwebhooks` package (PyPI) -- the reference
verifier, not ours. Then checks the destination's status and that a refused event is
dead-lettered and replayed once the receiver accepts it.

usage: routing.py --api URL --secret KEY --token TOKEN --counts FILE
Prints one PASS/FAIL line per check and writes "passed failed" to --counts.
"""

import argparse
import base64
import json
import os
import threading
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from standardwebhooks.webhooks import Webhook

SECRET = "whsec_" + base64.b64encode(os.urandom(32)).decode()
passed = failed = 0


def check(ok, what, detail=""):
    global passed, failed
    if ok:
        passed += 1
        print(f"PASS routing: {what}")
    else:
        failed += 1
        print(f"FAIL routing: {what} {detail}")


class Receiver(BaseHTTPRequestHandler):
    events = {}
    bad_signatures = []
    refuse_poison = True
    lock = threading.Lock()

    def do_POST(self):
        body = self.rfile.read(int(self.headers["content-length"]))
        try:
            Webhook(SECRET).verify(body, {k.lower(): v for k, v in self.headers.items()})
        except Exception as e:  # any verification failure is a failed check
            with self.lock:
                self.bad_signatures.append(str(e))
            self.send_response(401)
            self.end_headers()
            return
        events = json.loads(body)
        if self.refuse_poison and any(e.get("properties", {}).get("poison") for e in events):
            self.send_response(400)
            self.end_headers()
            self.wfile.write(b'{"error":"poison"}')
            return
        with self.lock:
            for e in events:
                self.events[e["id"]] = e
        self.send_response(200)
        self.end_headers()

    def log_message(self, *args):
        pass


def api(base, secret, method, path, body=None):
    request = urllib.request.Request(base + path, method=method, data=None if body is None else json.dumps(body).encode())
    request.add_header("Authorization", f"Bearer {secret}")
    request.add_header("Content-Type", "application/json")
    with urllib.request.urlopen(request, timeout=10) as response:
        text = response.read()
        return response.status, json.loads(text) if text else None


def stored_ids(base, secret):
    ids, path = set(), "/api/projects/@current/events/?limit=10000"
    while path:
        _, page = api(base, secret, "GET", path)
        ids.update(e["id"] for e in page["results"])
        path = page.get("next")
    return ids


def wait(predicate, seconds=30):
    deadline = time.time() + seconds
    while time.time() < deadline:
        if predicate():
            return True
        time.sleep(0.2)
    return predicate()


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--api", required=True)
    p.add_argument("--secret", required=True)
    p.add_argument("--token", required=True)
    p.add_argument("--counts", required=True)
    a = p.parse_args()

    server = ThreadingHTTPServer(("127.0.0.1", 0), Receiver)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    hook = f"http://127.0.0.1:{server.server_address[1]}/hook"
    try:
        expected = stored_ids(a.api, a.secret)
        status, created = api(a.api, a.secret, "POST", "/api/projects/@current/destinations/",
                              {"name": "e2e webhook", "type": "webhook", "start": "earliest",
                               "config": {"url": hook, "secret": SECRET, "max_batch_events": 50}})
        check(status == 201 and created["config"]["secret"] == "********", "webhook destination created, secret masked", created)
        dest = created["id"]

        # A poisoned event among good ones: only it is refused.
        poison = {"api_key": a.token, "batch": [
            {"event": "tool_used", "distinct_id": "e2e_routing", "properties": {"tool_name": "search", "n": i, "poison": i == 2}}
            for i in range(5)]}
        urllib.request.urlopen(urllib.request.Request(a.api + "/batch/", data=json.dumps(poison).encode(),
                                                      headers={"Content-Type": "application/json"}), timeout=10).read()
        expected = stored_ids(a.api, a.secret)
        delivered = wait(lambda: len(expected - set(Receiver.events) ) == 1)
        missing = expected - set(Receiver.events)
        check(delivered, f"every stored event but the refused one was delivered ({len(expected)} events)", f"missing {len(missing)}")
        check(not Receiver.bad_signatures, "every delivery verifies with the standardwebhooks package", Receiver.bad_signatures[:3])

        def letters():
            return api(a.api, a.secret, "GET", f"/api/projects/@current/destinations/{dest}/dead_letters/")[1]["results"]
        wait(lambda: len(letters()) == 1)
        found = letters()
        check(len(found) == 1 and found[0]["event"]["properties"].get("poison") is True and found[0]["last_status"] == 400,
              "the refused event alone is dead-lettered, with its status", found)

        Receiver.refuse_poison = False
        api(a.api, a.secret, "POST", f"/api/projects/@current/destinations/{dest}/dead_letters/replay", {})
        check(wait(lambda: expected <= set(Receiver.events)), "the replayed dead letter is delivered once the receiver accepts it")
        check(wait(lambda: not letters()), "the replayed letter is gone")
        _, status = api(a.api, a.secret, "GET", f"/api/projects/@current/destinations/{dest}/status")
        check(status["delivered"] >= len(expected) and status["lag"]["events"] == 0, "status: all delivered, no lag", status)
    except Exception as e:
        check(False, "routing checks ran", repr(e))
    finally:
        server.shutdown()
        with open(a.counts, "w") as f:
            f.write(f"{passed} {failed}\n")


if __name__ == "__main__":
    main()
