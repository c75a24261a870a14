#!/usr/bin/env bash
# End-to-end test: the official PostHog, RudderStack and Segment SDKs (Python,
# Node.js, and posthog-js in headless Chromium) send catalog events to a
# freshly started Switchyard; check.py then reads them back through the
# events API and asserts they arrived intact. The flags-* drivers evaluate the
# feature flags of examples/platform-flags.json (imported through the
# management API) with posthog-python, posthog-node (remote and local
# evaluation), posthog-js and OpenFeature's OFREP provider.
# routing.py then attaches a signed webhook destination and verifies every
# delivery with the standardwebhooks package.
#
# usage: bash tests/e2e/run.sh            (from any directory)
# env:   SWITCHYARD_BIN  server binary (default target/release/switchyard, relative to the repo root)
#        E2E_SDKS        space-separated subset of: posthog-python rudder-python posthog-node
#                        rudder-node segment-node posthog-js flags-posthog-python
#                        flags-posthog-node flags-posthog-js flags-openfeature   (default: all)
#        E2E_PROXY=0     SDKs talk to the server directly instead of through the recording proxy
#        E2E_KEEP=1      keep the temp dir (logs, records, data) even when everything passed
#        E2E_WAIT        seconds check.py polls for events (default 15)
#
# Prints one line per assertion and, last, "N passed, M failed"; exits non-zero
# if anything failed or the server died.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
PYTHON="${PYTHON:-python3}"

PROJECT_TOKEN="phc_e2e_token"
WRITE_KEY="e2e_write_key"
SECRET_KEY="phs_e2e_secret_0123456789abcdefghij"
FLAG_DEFINITIONS="$ROOT/examples/platform-flags.json"
ALL_SDKS="posthog-python rudder-python posthog-node rudder-node segment-node posthog-js"
ALL_SDKS+=" flags-posthog-python flags-posthog-node flags-posthog-js flags-openfeature"
SDKS="${E2E_SDKS:-$ALL_SDKS}"

PASSED=0
FAILED=0
SERVER_PID=""
PROXY_PID=""
WORK=""
SERVER_LOG=""

pass() { PASSED=$((PASSED + 1)); echo "PASS $*"; }
fail() { FAILED=$((FAILED + 1)); echo "FAIL $*"; }
log() { echo "--- $*"; }

stop_pid() { # pid name grace_seconds
  local pid="$1" name="$2" grace="${3:-5}" i
  [[ -n "$pid" ]] || return 0
  kill -0 "$pid" 2>/dev/null || return 0
  kill -TERM "$pid" 2>/dev/null || true
  for ((i = 0; i < grace * 10; i++)); do
    kill -0 "$pid" 2>/dev/null || return 0
    sleep 0.1
  done
  echo "--- $name (pid $pid) ignored SIGTERM for ${grace}s; sending SIGKILL"
  kill -KILL "$pid" 2>/dev/null || true
}

finish() {
  local rc=$?
  set +e
  stop_pid "$PROXY_PID" proxy 3
  stop_pid "$SERVER_PID" switchyard 10
  if [[ $rc -ne 0 && $FAILED -eq 0 ]]; then
    fail "run.sh aborted unexpectedly (exit code $rc)"
  fi
  if [[ -n "$WORK" ]]; then
    if [[ $FAILED -gt 0 || "${E2E_KEEP:-0}" == "1" ]]; then
      if [[ $FAILED -gt 0 && -n "$SERVER_LOG" && -s "$SERVER_LOG" ]]; then
        log "last 40 lines of the server log ($SERVER_LOG):"
        tail -n 40 "$SERVER_LOG" | sed 's/^/    /'
      fi
      log "artifacts kept in $WORK (server.log, proxy.jsonl = every HTTP exchange, out/*.json = what each SDK sent, driver-*.log)"
    else
      rm -rf "$WORK"
    fi
  fi
  echo "$PASSED passed, $FAILED failed"
  if [[ $FAILED -gt 0 ]]; then exit 1; fi
  exit 0
}
trap finish EXIT
trap 'exit 130' INT TERM

free_port() {
  "$PYTHON" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()'
}

# ---------------------------------------------------------------- dependencies

if [[ " $SDKS " == *" posthog-js "* || " $SDKS " == *" flags-posthog-js "* ]] && [[ ! -x /usr/bin/chromium ]]; then
  log "installing Debian chromium"
  if timeout 600 apt-get update -qq && DEBIAN_FRONTEND=noninteractive timeout 900 apt-get install -y -qq chromium >/dev/null; then
    pass "chromium installed"
  else
    fail "could not install chromium (apt-get); the posthog-js driver will fail"
  fi
fi

cd "$HERE"
LOCK_SUM="$(sha256sum package-lock.json | cut -d' ' -f1)"
if [[ -f node_modules/.e2e-lock.sha256 && "$(cat node_modules/.e2e-lock.sha256)" == "$LOCK_SUM" ]]; then
  log "node_modules up to date with package-lock.json"
else
  log "npm ci"
  if ! timeout 600 npm ci --no-audit --no-fund --loglevel=error; then
    fail "npm ci in tests/e2e"
    exit 1
  fi
  echo "$LOCK_SUM" > node_modules/.e2e-lock.sha256
fi

log "pip install -r requirements.txt"
if ! timeout 600 "$PYTHON" -m pip install -q --disable-pip-version-check --root-user-action=ignore -r requirements.txt; then
  fail "pip install -r tests/e2e/requirements.txt"
  exit 1
fi

# ---------------------------------------------------------------- server

BIN="${SWITCHYARD_BIN:-target/release/switchyard}"
[[ "$BIN" == /* ]] || BIN="$ROOT/$BIN"
if [[ ! -x "$BIN" ]]; then
  fail "server binary $BIN not found (build it with cargo build --release, or set SWITCHYARD_BIN)"
  exit 1
fi

WORK="$(mktemp -d "${TMPDIR:-/tmp}/switchyard-e2e.XXXXXX")"
mkdir -p "$WORK/data" "$WORK/out"
SERVER_LOG="$WORK/server.log"
PORT="$(free_port)"
PROXY_PORT="$(free_port)"
while [[ "$PROXY_PORT" == "$PORT" ]]; do PROXY_PORT="$(free_port)"; done
SERVER_URL="http://127.0.0.1:$PORT"

# Only these SWITCHYARD_* variables reach the server (it rejects unknown ones,
# and SWITCHYARD_BIN may be set in our environment). Routing may deliver to
# loopback: routing.py's webhook receiver listens there.
SERVER_ENV=(env)
while IFS= read -r var; do
  [[ "$var" == SWITCHYARD_* ]] && SERVER_ENV+=(-u "$var")
done < <(compgen -e)
SERVER_ENV+=(
  "SWITCHYARD_DATA_DIR=$WORK/data"
  "SWITCHYARD_LISTEN=127.0.0.1:$PORT"
  "SWITCHYARD_PROJECT_TOKEN=$PROJECT_TOKEN"
  "SWITCHYARD_WRITE_KEY=$WRITE_KEY"
  "SWITCHYARD_SECRET_KEY=$SECRET_KEY"
  "SWITCHYARD_ROUTING__ALLOW_PRIVATE_ADDRESSES=true"
)
log "starting $BIN serve on $SERVER_URL (data dir $WORK/data)"
"${SERVER_ENV[@]}" "$BIN" serve >"$SERVER_LOG" 2>&1 &
SERVER_PID=$!

ready=0
for ((i = 0; i < 300; i++)); do # 30 s
  if ! kill -0 "$SERVER_PID" 2>/dev/null; then break; fi
  if [[ "$(curl -s -o /dev/null -w '%{http_code}' -m 2 "$SERVER_URL/_readiness" || true)" == "200" ]]; then
    ready=1
    break
  fi
  sleep 0.1
done
if [[ $ready -eq 1 ]]; then
  pass "server ready: GET /_readiness -> 200 within $((i / 10)).$((i % 10)) s"
else
  if kill -0 "$SERVER_PID" 2>/dev/null; then
    fail "server not ready within 30 s (GET $SERVER_URL/_readiness never answered 200)"
  else
    wait "$SERVER_PID" && code=0 || code=$?
    fail "server exited during startup with code $code"
    SERVER_PID=""
  fi
  exit 1
fi

# ---------------------------------------------------------------- recording proxy

CAPTURE_URL="$SERVER_URL"
if [[ "${E2E_PROXY:-1}" != "0" ]]; then
  node "$HERE/proxy.js" "$PROXY_PORT" "$SERVER_URL" "$WORK/proxy.jsonl" >"$WORK/proxy.log" 2>&1 &
  PROXY_PID=$!
  proxy_ok=0
  for ((i = 0; i < 100; i++)); do # 10 s
    if [[ "$(curl -s -o /dev/null -w '%{http_code}' -m 2 "http://127.0.0.1:$PROXY_PORT/_readiness" || true)" == "200" ]]; then
      proxy_ok=1
      break
    fi
    kill -0 "$PROXY_PID" 2>/dev/null || break
    sleep 0.1
  done
  if [[ $proxy_ok -eq 1 ]]; then
    CAPTURE_URL="http://127.0.0.1:$PROXY_PORT"
    : >"$WORK/proxy.jsonl" # drop the readiness probe
    log "SDKs send through the recording proxy $CAPTURE_URL (log: $WORK/proxy.jsonl)"
  else
    log "recording proxy did not start ($(tail -n 3 "$WORK/proxy.log" 2>/dev/null | tr '\n' ' ')); SDKs talk to the server directly"
    stop_pid "$PROXY_PID" proxy 2
    PROXY_PID=""
  fi
fi

# ---------------------------------------------------------------- feature flag definitions

# Import the platform flags (PostHog local-evaluation format) through the
# management API; the flags-* drivers evaluate them, check.py derives the
# expected values from the same file.
import_url="$SERVER_URL/api/projects/@current/feature_flags/import/"
import_code="$(curl -s -m 15 -o "$WORK/flags-import.json" -w '%{http_code}' -X POST \
  -H "Authorization: Bearer $SECRET_KEY" -H 'Content-Type: application/json' \
  --data-binary @"$FLAG_DEFINITIONS" "$import_url" || true)"
if [[ "$import_code" == 2?? ]]; then
  pass "flag definitions imported: POST /api/projects/@current/feature_flags/import/ -> $import_code $(head -c 200 "$WORK/flags-import.json")"
else
  fail "POST $import_url with examples/platform-flags.json -> ${import_code:-no answer} $(head -c 500 "$WORK/flags-import.json" 2>/dev/null)"
fi

# ---------------------------------------------------------------- SDK drivers

export E2E_CAPTURE_URL="$CAPTURE_URL" E2E_API_URL="$SERVER_URL" E2E_PROJECT_TOKEN="$PROJECT_TOKEN" \
  E2E_WRITE_KEY="$WRITE_KEY" E2E_SECRET_KEY="$SECRET_KEY" E2E_OUT="$WORK/out" \
  E2E_FLAG_RUN="$(od -An -N4 -tx1 /dev/urandom | tr -d ' \n')"

driver_cmd() { # sdk -> CMD array
  case "$1" in
    posthog-python) CMD=("$PYTHON" "$HERE/drivers/posthog_python.py") ;;
    rudder-python) CMD=("$PYTHON" "$HERE/drivers/rudder_python.py") ;;
    posthog-node) CMD=(node "$HERE/drivers/posthog_node.js") ;;
    rudder-node) CMD=(node "$HERE/drivers/rudder_node.js") ;;
    segment-node) CMD=(node "$HERE/drivers/segment_node.js") ;;
    posthog-js) CMD=(node "$HERE/drivers/browser.js") ;;
    flags-posthog-python) CMD=("$PYTHON" "$HERE/drivers/flags_posthog_python.py") ;;
    flags-posthog-node) CMD=(node "$HERE/drivers/flags_posthog_node.js") ;;
    flags-posthog-js) CMD=(node "$HERE/drivers/flags_browser.js") ;;
    flags-openfeature) CMD=(node "$HERE/drivers/flags_openfeature.js") ;;
    *) return 1 ;;
  esac
}

for sdk in $SDKS; do
  if ! driver_cmd "$sdk"; then
    fail "unknown SDK '$sdk' in E2E_SDKS (known: $ALL_SDKS)"
    continue
  fi
  dlog="$WORK/driver-$sdk.log"
  start=$SECONDS
  if timeout -k 5 120 "${CMD[@]}" >"$dlog" 2>&1; then
    if [[ "$sdk" == flags-* ]]; then
      pass "driver $sdk evaluated its flags and shut down cleanly ($((SECONDS - start)) s)"
    else
      pass "driver $sdk sent its events and shut down cleanly ($((SECONDS - start)) s)"
    fi
    grep -E '^\[(flags-)?posthog-js\]' "$dlog" | sed 's/^/     /' || true
  else
    code=$?
    if [[ $code -eq 124 || $code -eq 137 ]]; then
      fail "driver $sdk timed out after 120 s"
    else
      fail "driver $sdk exited with code $code"
    fi
    tail -n 30 "$dlog" | sed 's/^/     /'
  fi
  if ! kill -0 "$SERVER_PID" 2>/dev/null; then
    fail "server died while the $sdk driver ran"
    break
  fi
done

# ---------------------------------------------------------------- checks through the events API

log "checking events through $SERVER_URL/api/projects/@current/events/ and the flag answers against $FLAG_DEFINITIONS"
PROXY_ARGS=()
[[ -n "$PROXY_PID" ]] && PROXY_ARGS=(--proxy-log "$WORK/proxy.jsonl")
# shellcheck disable=SC2086 # SDKS is a word list
timeout -k 5 300 "$PYTHON" "$HERE/check.py" --api "$SERVER_URL" --secret "$SECRET_KEY" --out "$WORK/out" \
  --counts "$WORK/check-counts" --wait "${E2E_WAIT:-15}" --token "$PROJECT_TOKEN" \
  --flag-definitions "$FLAG_DEFINITIONS" "${PROXY_ARGS[@]}" $SDKS || true
if [[ -s "$WORK/check-counts" ]]; then
  read -r cp cf <"$WORK/check-counts"
  PASSED=$((PASSED + cp))
  FAILED=$((FAILED + cf))
else
  fail "check.py did not finish (crashed or timed out)"
fi

log "routing: a signed webhook destination, verified with the standardwebhooks package"
timeout -k 5 120 "$PYTHON" "$HERE/routing.py" --api "$SERVER_URL" --secret "$SECRET_KEY" --token "$PROJECT_TOKEN" \
  --counts "$WORK/routing-counts" || true
if [[ -s "$WORK/routing-counts" ]]; then
  read -r rp rf <"$WORK/routing-counts"
  PASSED=$((PASSED + rp))
  FAILED=$((FAILED + rf))
else
  fail "routing.py did not finish (crashed or timed out)"
fi

# ---------------------------------------------------------------- server health and shutdown

if kill -0 "$SERVER_PID" 2>/dev/null; then
  pass "server stayed up for the whole run"
  kill -TERM "$SERVER_PID" 2>/dev/null || true
  stopped=0
  for ((i = 0; i < 100; i++)); do # 10 s
    if ! kill -0 "$SERVER_PID" 2>/dev/null; then stopped=1; break; fi
    sleep 0.1
  done
  if [[ $stopped -eq 1 ]]; then
    wait "$SERVER_PID" && code=0 || code=$?
    log "server exited with code $code within $((i / 10)).$((i % 10)) s of SIGTERM"
  else
    log "server still running 10 s after SIGTERM; killing it"
    kill -KILL "$SERVER_PID" 2>/dev/null || true
  fi
  SERVER_PID=""
else
  wait "$SERVER_PID" && code=0 || code=$?
  fail "server died during the run (exit code $code)"
  SERVER_PID=""
fi
