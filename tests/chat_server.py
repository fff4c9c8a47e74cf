"""A scripted OpenAI-compatible chat server on 127.0.0.1 for testing the drafting agent.

Each ``POST .../chat/completions`` takes the next step of the script: a reply (status, JSON body,
headers) or a hang (the server holds the request longer than the client waits). Every request's
headers and JSON body are kept in ``requests``.
"""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


def tool_calls(*calls: tuple[str, dict[str, Any]], usage: dict | None = None) -> dict[str, Any]:
    """A reply asking for tool calls ``(name, arguments)``."""
    return {"status": 200, "body": {
        "choices": [{"index": 0, "finish_reason": "tool_calls", "message": {
            "role": "assistant", "content": None,
            "tool_calls": [{"id": f"call_{i}", "type": "function",
                            "function": {"name": name, "arguments": json.dumps(args)}}
                           for i, (name, args) in enumerate(calls)]}}],
        "usage": usage or {"prompt_tokens": 100, "completion_tokens": 10, "cost": 0.001}}}


def answer(content: str, usage: dict | None = None) -> dict[str, Any]:
    """A final answer."""
    return {"status": 200, "body": {
        "choices": [{"index": 0, "finish_reason": "stop",
                     "message": {"role": "assistant", "content": content}}],
        "usage": usage or {"prompt_tokens": 200, "completion_tokens": 50, "cost": 0.002}}}


class ScriptedChat:
    def __init__(self, script: list[dict[str, Any]]) -> None:
        self.script = list(script)
        self.requests: list[dict[str, Any]] = []
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *_: Any) -> None:
                pass

            def do_POST(self) -> None:  # noqa: N802 - the http.server API
                length = int(self.headers.get("content-length", 0))
                body = json.loads(self.rfile.read(length) or b"{}")
                owner.requests.append({"path": self.path, "headers": dict(self.headers), "body": body})
                over = {"status": 500, "body": {"error": "script over"}}
                step = owner.script.pop(0) if owner.script else over
                if "hang" in step:
                    time.sleep(step["hang"])
                    return
                data = json.dumps(step.get("body", {})).encode()
                self.send_response(step.get("status", 200))
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(data)))
                for k, v in step.get("headers", {}).items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(data)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/api/v1"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> ScriptedChat:
        self.thread.start()
        return self

    def __exit__(self, *_: Any) -> None:
        self.server.shutdown()
        self.server.server_close()
