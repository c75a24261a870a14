#!/usr/bin/env bash
# End-to-end LLM-analytics test: the real clients from PyPI and npm (posthog-python's OpenAI,
# Anthropic, Gemini and LangChain wrappers and its OTel span processor, @posthog/ai, the OTel SDK
# with openai-v2 (protobuf and JSON exporters) and with OpenLLMetry, the Langfuse SDK) call the
# fake LLM server (fakes.py) on loopback and send their events and spans to a freshly started
# Switchyard. check.py then reads each run's trace view and asserts its spans, tokens, cost,
# flags and product events.
#
# usage: bash tests/e2e/llm/run.sh        (from any directory)
# env:   SWITCHYARD_BIN  server binary (default target/release/switchyard, relative to the repo root)
#        E2E_LLM_RUNS    space-separated subset of the runs (default: all; see RUNS below)
#        E2E_LLM_CACHE   where the venvs are kept (default ${XDG_CACHE_HOME:-$HOME/.cache}/switchyard-e2e-llm),
#                        one per requirements file, keyed by the file's hash
#        E2E_KEEP=1      keep the temp dir (logs, driver records, data) even when everything passed
#        E2E_WAIT        seconds check.py polls for a run's trace to be complete (default 15)
#
# Prints one line per assertion and, last, "N passed, M failed"; exits non-zero on any failure.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/../../.." && pwd)"
PYTHON="${PYTHON:-python3}"
CACHE="${E2E_LLM_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/switchyard-e2e-llm}"

PROJECT_TOKEN="phc_e2e_llm_token"
WRITE_KEY="e2e_llm_write_key"
SECRET_KEY="phs_e2e_llm_secret_0123456789abcdefgh"
LANGFUSE_PUBLIC_KEY="pk-lf-e2e-$(od -An -N6 -tx1 /dev/urandom | tr -d ' \n')"

# run name -> venv (requirements/<venv>.txt, or "node") and driver command line.
RUNS="posthog-python posthog-langchain posthog-gemini posthog-node posthog-otel"
RUNS+=" otel-v2-proto otel-openllmetry-proto otel-v2-json langfuse"
SELECTED="${E2E_LLM_RUNS:-$RUNS}"
run_spec() { # run -> VENV, ARGS
  case "$1" in
    posthog-python) VENV=posthog ARGS=(drivers/posthog_python.py) ;;
    posthog-langchain) VENV=posthog ARGS=(drivers/posthog_langchain.py) ;;
    posthog-gemini) VENV=posthog ARGS=(drivers/posthog_gemini.py) ;;
    posthog-node) VENV=node ARGS=(drivers/posthog_node.mjs) ;;
    posthog-otel) VENV=posthog ARGS=(drivers/posthog_otel.py) ;;
    otel-v2-proto) VENV=posthog ARGS=(drivers/otel.py v2 proto --product-event) ;;
    otel-openllmetry-proto) VENV=openllmetry ARGS=(drivers/otel.py openllmetry proto) ;;
    otel-v2-json) VENV=otel_json ARGS=(drivers/otel.py v2 json) ;;
    langfuse) VENV=langfuse ARGS=(drivers/langfuse_sdk.py) ;;
    *) return 1 ;;
  esac
}

PASSED=0
FAILED=0
SERVER_PID=""
FAKE_PID=""
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
  stop_pid "$FAKE_PID" "fake LLM server" 3
  stop_pid "$SERVER_PID" switchyard 10
  if [[ $rc -ne 0 && $FAILED -eq 0 ]]; then
    fail "run.sh aborted unexpectedly (exit code $rc)"
  fi
  if [[ -n "$WORK" ]]; then
    if [[ $FAILED -gt 0 || "${E2E_KEEP:-0}" == "1" ]]; then
      if [[ $FAILED -gt 0 && -n "$SERVER_LOG" && -s "$SERVER_LOG" ]]; then
        log "last 20 lines of the server log ($SERVER_LOG):"
        tail -n 20 "$SERVER_LOG" | sed 's/^/    /'
      fi
      log "artifacts kept in $WORK (server.log, llm-requests.jsonl = what reached the fake LLM, out/<run>.json, driver-<run>.log)"
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
hex() { od -An -N"$1" -tx1 /dev/urandom | tr -d ' \n'; }

# ---------------------------------------------------------------- dependencies

cd "$HERE"
declare -A PY
needs_node=0
for run in $SELECTED; do
  if ! run_spec "$run"; then
    fail "unknown run '$run' in E2E_LLM_RUNS (known: $RUNS)"
    continue
  fi
  if [[ "$VENV" == node ]]; then needs_node=1; else PY[$VENV]=""; fi
done

# One venv per requirements file (a full pip freeze), cached under its hash; ".ok" marks a
# finished install, so an interrupted one is redone.
for venv in "${!PY[@]}"; do
  req="$HERE/requirements/$venv.txt"
  dir="$CACHE/$venv-$(sha256sum "$req" | cut -c1-16)"
  if [[ ! -f "$dir/.ok" ]]; then
    log "creating venv $dir from requirements/$venv.txt"
    rm -rf "$dir"
    mkdir -p "$CACHE"
    if ! { timeout 120 "$PYTHON" -m venv "$dir" &&
      timeout 900 "$dir/bin/pip" install -q --disable-pip-version-check -r "$req"; }; then
      fail "could not create the '$venv' venv (pip install -r requirements/$venv.txt)"
      exit 1
    fi
    touch "$dir/.ok"
  fi
  PY[$venv]="$dir/bin/python"
done

if [[ $needs_node -eq 1 ]]; then
  LOCK_SUM="$(sha256sum package-lock.json | cut -d' ' -f1)"
  if [[ -f node_modules/.e2e-lock.sha256 && "$(cat node_modules/.e2e-lock.sha256)" == "$LOCK_SUM" ]]; then
    log "node_modules up to date with package-lock.json"
  else
    log "npm ci"
    if ! timeout 600 npm ci --no-audit --no-fund --loglevel=error; then
      fail "npm ci in tests/e2e/llm"
      exit 1
    fi
    echo "$LOCK_SUM" >node_modules/.e2e-lock.sha256
  fi
fi

# ---------------------------------------------------------------- fake LLM server and Switchyard

BIN="${SWITCHYARD_BIN:-target/release/switchyard}"
[[ "$BIN" == /* ]] || BIN="$ROOT/$BIN"
if [[ ! -x "$BIN" ]]; then
  fail "server binary $BIN not found (build it with cargo build --release, or set SWITCHYARD_BIN)"
  exit 1
fi

WORK="$(mktemp -d "${TMPDIR:-/tmp}/switchyard-e2e-llm.XXXXXX")"
mkdir -p "$WORK/data" "$WORK/out"
SERVER_LOG="$WORK/server.log"
PORT="$(free_port)"
LLM_PORT="$(free_port)"
while [[ "$LLM_PORT" == "$PORT" ]]; do LLM_PORT="$(free_port)"; done
SERVER_URL="http://127.0.0.1:$PORT"
LLM_URL="http://127.0.0.1:$LLM_PORT"

"$PYTHON" "$HERE/fakes.py" "$LLM_PORT" 0 "$WORK/llm-requests.jsonl" >"$WORK/fakes.log" 2>&1 &
FAKE_PID=$!

# Only these SWITCHYARD_* variables reach the server (it rejects unknown ones, and
# SWITCHYARD_BIN may be set in our environment).
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
)
log "starting $BIN serve on $SERVER_URL (data dir $WORK/data); fake LLM server on $LLM_URL"
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

fake_ok=0
for ((i = 0; i < 100; i++)); do # 10 s; the fake answers GET with 501
  if [[ "$(curl -s -o /dev/null -w '%{http_code}' -m 2 "$LLM_URL/" || true)" != "000" ]]; then fake_ok=1; break; fi
  kill -0 "$FAKE_PID" 2>/dev/null || break
  sleep 0.1
done
if [[ $fake_ok -eq 1 ]]; then
  pass "fake LLM server listening on $LLM_URL"
else
  fail "fake LLM server did not start: $(tail -n 5 "$WORK/fakes.log" 2>/dev/null | tr '\n' ' ')"
  exit 1
fi

# Langfuse authenticates with Basic base64(public key:secret key): its public key is made one
# of the project's tokens.
key_code="$(curl -s -m 15 -o "$WORK/langfuse-key.json" -w '%{http_code}' -X POST \
  -H "Authorization: Bearer $SECRET_KEY" -H 'Content-Type: application/json' \
  --data "{\"kind\":\"project_token\",\"key\":\"$LANGFUSE_PUBLIC_KEY\"}" \
  "$SERVER_URL/api/projects/@current/keys/" || true)"
if [[ "$key_code" == 201 ]]; then
  pass "Langfuse public key registered as a project token: POST /api/projects/@current/keys/ -> 201"
else
  fail "POST /api/projects/@current/keys/ {kind: project_token, key: $LANGFUSE_PUBLIC_KEY} -> ${key_code:-no answer} $(head -c 300 "$WORK/langfuse-key.json" 2>/dev/null)"
fi

# ---------------------------------------------------------------- drivers

export E2E_LLM_URL="$LLM_URL" E2E_CAPTURE_URL="$SERVER_URL" E2E_PROJECT_TOKEN="$PROJECT_TOKEN" \
  E2E_OUT="$WORK/out" E2E_LANGFUSE_PUBLIC_KEY="$LANGFUSE_PUBLIC_KEY" \
  TRACELOOP_TELEMETRY=false NO_PROXY="127.0.0.1,localhost" no_proxy="127.0.0.1,localhost"
unset OTEL_EXPORTER_OTLP_ENDPOINT OTEL_EXPORTER_OTLP_TRACES_ENDPOINT OTEL_EXPORTER_OTLP_HEADERS \
  OTEL_EXPORTER_OTLP_TRACES_HEADERS OTEL_EXPORTER_OTLP_COMPRESSION OTEL_EXPORTER_OTLP_TRACES_COMPRESSION \
  LANGFUSE_HOST LANGFUSE_BASE_URL LANGFUSE_PUBLIC_KEY LANGFUSE_SECRET_KEY OPENAI_BASE_URL ANTHROPIC_BASE_URL 2>/dev/null || true
# The plain OTel runs find Switchyard through the exporter's standard variables (the others are
# given it explicitly: the Langfuse SDK and PostHogSpanProcessor take a host).
OTLP_ENV=("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT=$SERVER_URL/v1/traces"
  "OTEL_EXPORTER_OTLP_HEADERS=Authorization=Bearer%20$PROJECT_TOKEN")

RUN_ID="$(hex 4)"
for run in $SELECTED; do
  run_spec "$run" || continue
  case "$run" in
    posthog-python) trace="ph-py-$RUN_ID" ;;
    posthog-langchain) trace="lc-$RUN_ID" ;;
    posthog-gemini) trace="gem-$RUN_ID" ;;
    posthog-node) trace="node-$RUN_ID" ;;
    *) trace="$(hex 16)" ;; # OTel and Langfuse trace ids are 32 hex digits
  esac
  if [[ "$VENV" == node ]]; then CMD=(node "${ARGS[@]}"); else CMD=("${PY[$VENV]}" "${ARGS[@]}"); fi
  dlog="$WORK/driver-$run.log"
  start=$SECONDS
  RUN_ENV=(env "E2E_RUN=$run" "E2E_TRACE_ID=$trace")
  [[ "$run" == otel-* ]] && RUN_ENV+=("${OTLP_ENV[@]}")
  if "${RUN_ENV[@]}" timeout -k 5 120 "${CMD[@]}" >"$dlog" 2>&1; then
    pass "driver $run ran and shut down cleanly ($((SECONDS - start)) s, trace $trace)"
  else
    code=$?
    if [[ $code -eq 124 || $code -eq 137 ]]; then fail "driver $run timed out after 120 s"; else fail "driver $run exited with code $code"; fi
    tail -n 30 "$dlog" | sed 's/^/     /'
  fi
  # Exporters log a refused export and carry on: make that visible.
  if grep -qiE 'Failed to export|error.*(401|403|404|415|4[0-9][0-9] Client Error)|Transient error|exporter.*error' "$dlog"; then
    fail "driver $run logged an export error: $(grep -iE 'Failed to export|error' "$dlog" | head -n 3 | tr '\n' ' ')"
  fi
  # The Langfuse SDK's score (POST /api/public/scores) must be taken: its SDK only logs a refusal.
  if [[ "$run" == langfuse ]] && grep -q 'Internal error occurred' "$dlog"; then
    fail "langfuse: the SDK reported an error for its create_score call (POST /api/public/scores)"
  fi
  if ! kill -0 "$SERVER_PID" 2>/dev/null; then
    fail "server died while the $run driver ran"
    break
  fi
done

# ---------------------------------------------------------------- checks through the trace view

log "checking each run's trace view: GET $SERVER_URL/api/projects/@current/traces/<trace id>"
# shellcheck disable=SC2086 # SELECTED is a word list
timeout -k 5 300 "$PYTHON" "$HERE/check.py" --api "$SERVER_URL" --secret "$SECRET_KEY" --out "$WORK/out" \
  --counts "$WORK/check-counts" --wait "${E2E_WAIT:-15}" $SELECTED || true
if [[ -s "$WORK/check-counts" ]]; then
  read -r cp cf <"$WORK/check-counts"
  PASSED=$((PASSED + cp))
  FAILED=$((FAILED + cf))
else
  fail "check.py did not finish (crashed or timed out)"
fi

if kill -0 "$SERVER_PID" 2>/dev/null; then
  pass "server stayed up for the whole run"
else
  wait "$SERVER_PID" && code=0 || code=$?
  fail "server died during the run (exit code $code)"
  SERVER_PID=""
fi
