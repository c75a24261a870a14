"""Tiny local fakes: an OpenAI/Anthropic-compatible LLM server and a capture sink.

Usage: python fakes.py LLM_PORT SINK_PORT OUT_JSONL
All bind to 127.0.0.1 only. SINK_PORT 0 runs the LLM fake alone (tests/e2e/llm/run.sh points the
clients at Switchyard instead of the sink). Copied from the recorded harness
(shared/fixtures/llm-requests/fakes.py); the usage numbers are what check.py expects.
"""
import base64
import gzip
import json
import sys
import threading
import time
import zlib
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

LLM_PORT, SINK_PORT, OUT = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
lock = threading.Lock()


def record(kind, handler, body):
    enc = handler.headers.get("Content-Encoding", "")
    raw = body
    try:
        if enc == "gzip" or body[:2] == b"\x1f\x8b":
            raw = gzip.decompress(body)
        elif enc == "deflate":
            raw = zlib.decompress(body)
    except Exception:
        pass
    ct = handler.headers.get("Content-Type", "")
    entry = {
        "kind": kind,
        "ts": time.time(),
        "method": handler.command,
        "path": handler.path,
        "headers": {k: v for k, v in handler.headers.items()},
    }
    try:
        entry["json"] = json.loads(raw)
    except Exception:
        entry["b64"] = base64.b64encode(raw).decode()
    try:
        entry["body_text"] = body.decode("utf-8")
    except Exception:
        entry["body_base64"] = base64.b64encode(body).decode()
    with lock, open(OUT, "a") as f:
        f.write(json.dumps(entry) + "\n")


USAGE = {
    "prompt_tokens": 12,
    "completion_tokens": 5,
    "total_tokens": 17,
    "prompt_tokens_details": {"cached_tokens": 4},
    "completion_tokens_details": {"reasoning_tokens": 2},
}


class LLM(BaseHTTPRequestHandler):
    def log_message(self, *a):
        pass

    def _json(self, obj, status=200):
        b = json.dumps(obj).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(b)))
        self.send_header("x-request-id", "req_fake_1")
        self.end_headers()
        self.wfile.write(b)

    def _sse(self, chunks, anthropic=False):
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        self.end_headers()
        for c in chunks:
            if anthropic:
                self.wfile.write(f"event: {c['type']}\n".encode())
            self.wfile.write(b"data: " + json.dumps(c).encode() + b"\n\n")
            self.wfile.flush()
            time.sleep(0.01)
        if not anthropic:
            self.wfile.write(b"data: [DONE]\n\n")
        self.close_connection = True

    def do_POST(self):
        n = int(self.headers.get("Content-Length", 0) or 0)
        body = self.rfile.read(n)
        record("llm", self, body)
        req = json.loads(body or b"{}")
        model = req.get("model", "gpt-4o-mini")
        p = self.path.split("?")[0]
        if p.endswith("/chat/completions"):
            if req.get("model") == "fail-model":
                return self._json({"error": {"message": "Rate limit reached", "type": "rate_limit_error", "code": "rate_limit_exceeded"}}, 429)
            if req.get("stream"):
                base = {"id": "chatcmpl-fake", "object": "chat.completion.chunk", "created": 1700000000, "model": model}
                chunks = [
                    {**base, "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}]},
                    {**base, "choices": [{"index": 0, "delta": {"content": "Hello"}, "finish_reason": None}]},
                    {**base, "choices": [{"index": 0, "delta": {"content": " world"}, "finish_reason": None}]},
                    {**base, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]},
                ]
                if (req.get("stream_options") or {}).get("include_usage"):
                    chunks.append({**base, "choices": [], "usage": USAGE})
                return self._sse(chunks)
            return self._json({
                "id": "chatcmpl-fake", "object": "chat.completion", "created": 1700000000, "model": model,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": "Hello world"}, "finish_reason": "stop"}],
                "usage": USAGE, "system_fingerprint": "fp_fake",
            })
        if p.endswith("/embeddings"):
            inp = req.get("input")
            k = len(inp) if isinstance(inp, list) else 1
            return self._json({"object": "list", "model": model,
                               "data": [{"object": "embedding", "index": i, "embedding": [0.1, 0.2, 0.3]} for i in range(k)],
                               "usage": {"prompt_tokens": 7, "total_tokens": 7}})
        if p.endswith("/messages"):  # Anthropic
            usage = {"input_tokens": 10, "output_tokens": 6, "cache_read_input_tokens": 20, "cache_creation_input_tokens": 30}
            if req.get("stream"):
                msg = {"id": "msg_fake", "type": "message", "role": "assistant", "model": model, "content": [],
                       "stop_reason": None, "stop_sequence": None, "usage": {**usage, "output_tokens": 1}}
                return self._sse([
                    {"type": "message_start", "message": msg},
                    {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
                    {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "Hi there"}},
                    {"type": "content_block_stop", "index": 0},
                    {"type": "message_delta", "delta": {"stop_reason": "end_turn", "stop_sequence": None}, "usage": {"output_tokens": 6}},
                    {"type": "message_stop"},
                ], anthropic=True)
            return self._json({"id": "msg_fake", "type": "message", "role": "assistant", "model": model,
                               "content": [{"type": "text", "text": "Hi there"}], "stop_reason": "end_turn",
                               "stop_sequence": None, "usage": usage})
        if ":generateContent" in p:  # Gemini
            return self._json({"candidates": [{"content": {"role": "model", "parts": [{"text": "Hi from gemini"}]}, "finishReason": "STOP", "index": 0}],
                               "usageMetadata": {"promptTokenCount": 8, "candidatesTokenCount": 3, "totalTokenCount": 13, "thoughtsTokenCount": 2, "cachedContentTokenCount": 1},
                               "modelVersion": model if model != "gpt-4o-mini" else "gemini-2.5-flash", "responseId": "resp_fake"})
        return self._json({"error": {"message": "not found"}}, 404)


class Sink(BaseHTTPRequestHandler):
    def log_message(self, *a):
        pass

    def do_POST(self):
        n = int(self.headers.get("Content-Length", 0) or 0)
        body = self.rfile.read(n)
        record("sink", self, body)
        ct = self.headers.get("Content-Type", "")
        if self.path.startswith("/v1/") or "otel" in self.path:
            if "json" in ct:
                b = b"{}"
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
            else:
                b = b""  # empty ExportTraceServiceResponse
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
        else:
            b = b'{"status": 1}'
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(b)))
        self.end_headers()
        self.wfile.write(b)

    def do_GET(self):
        record("sink", self, b"")
        b = b"{}"
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(b)))
        self.end_headers()
        self.wfile.write(b)


def serve(port, h):
    ThreadingHTTPServer(("127.0.0.1", port), h).serve_forever()


if SINK_PORT:
    threading.Thread(target=serve, args=(LLM_PORT, LLM), daemon=True).start()
    serve(SINK_PORT, Sink)
else:
    serve(LLM_PORT, LLM)
