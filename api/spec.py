"""Declaring API operations once: the same declaration validates requests,
answers errors, and produces the OpenAPI 3.1 document and the docs page.

An operation names its request body and query models (pydantic), its success
responses, the scope it needs and whether it takes an Idempotency-Key. The
dispatcher around every handler enforces, in order: bearer token, scope, the
token's rate limit, content type, body size, JSON, schema; then it runs the
handler inside one database transaction. With an Idempotency-Key the answer is
stored in that same transaction, so a repeat gets the recorded answer and
writes nothing.

OpenAPI 3.1 schemas are JSON Schema 2020-12, which is what pydantic emits: the
document is the models' own schemas plus the operation table.
"""
from __future__ import annotations

import hashlib
import html
import json
import logging
import re
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable, Literal, Protocol

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from pydantic.json_schema import models_json_schema
from sqlmodel.ext.asyncio.session import AsyncSession

from api.problems import PROBLEM_JSON, PREFIX, PROBLEMS, Problem, from_refusal
from api.tokens import SCOPES, RateLimiter, find_token
from bot.config import Config
from bot.core.directory import Directory
from bot.core.notify import Notifier
from bot.core.service import Refused, TicketService
from bot.inbound import nesting_within
from bot.outbox import OutboxWorker, savepoint
from storage.db import Database
from storage.integration import ApiIdempotency, ApiToken
from storage.queries import insert_ignore



class Runtime(Protocol):
    """What the API uses of the bot's runtime (app/runtime.py builds it, app/web.py mounts the API)."""

    config: Config
    db: Database
    directory: Directory
    service: TicketService
    notifier: Notifier
    outbox: OutboxWorker

log = logging.getLogger(__name__)

BASE = "/api/v1"
IDEMPOTENCY_HEADER = "Idempotency-Key"


class ProblemDetails(BaseModel):
    """An error (RFC 9457). `type` is stable; refusals add `reason`, the rule's key."""

    model_config = ConfigDict(extra="allow", title="Problem")
    type: str
    title: str
    status: int
    detail: str
    instance: str | None = None
    reason: str | None = Field(default=None, description="for refusals: the rule that refused")


@dataclass
class Context:
    """What a handler gets besides its body: the request, the runtime, the
    caller's token, path and query values, and the open transaction."""

    request: web.Request
    runtime: "Runtime"
    token: ApiToken
    s: AsyncSession
    path: dict[str, str]
    query: Any = None
    wrote: bool = False  # set when the handler changed something the outbox should see


Handler = Callable[..., Awaitable[Any]]


@dataclass
class Operation:
    method: str
    path: str  # under BASE, aiohttp / OpenAPI template syntax
    handler: Handler
    summary: str
    scope: str
    tag: str
    body: type[BaseModel] | None = None
    query: type[BaseModel] | None = None
    responses: dict[int, type[BaseModel] | None] = field(default_factory=dict)
    problems: tuple[str, ...] = ()
    idempotency: Literal["required", "optional"] | None = None
    produces: str = "application/json"
    # The request body's cap from the [api] section, when not max_body_bytes (photos are larger).
    body_limit: Callable[[Any], int] | None = None

    @property
    def operation_id(self) -> str:
        return self.handler.__name__

    @property
    def description(self) -> str:
        return (self.handler.__doc__ or "").strip()

    def error_slugs(self) -> list[str]:
        slugs = ["unauthorized", "insufficient-scope", "rate-limited"]
        if self.body is not None:
            slugs += ["unsupported-media-type", "malformed-json", "body-too-large", "validation-failed"]
        if self.query is not None:
            slugs.append("validation-failed")
        if self.idempotency == "required":
            slugs.append("idempotency-key-missing")
        if self.idempotency:
            slugs.append("idempotency-key-reused")
        return list(dict.fromkeys(slugs + list(self.problems)))


class Reply:
    """A handler's answer: a status and a model (or a ready response)."""

    def __init__(self, status: int, model: BaseModel | None = None, *, headers: dict[str, str] | None = None):
        self.status, self.model, self.headers = status, model, headers or {}

    def body(self) -> Any:
        return None if self.model is None else self.model.model_dump(mode="json")


class Later:
    """A handler's answer built after its transaction closed (slow work such as
    drawing a PDF must not hold the database)."""

    def __init__(self, make: Callable[[], Awaitable[web.StreamResponse]]):
        self.make = make


class Api:
    """The operation table: filled by `route` decorators, served by `routes`."""

    def __init__(self, title: str, version: str, description: str):
        self.title, self.version, self.description = title, version, description
        self.operations: list[Operation] = []

    def route(self, method: str, path: str, *, summary: str, scope: str, tag: str, **kw) -> Callable[[Handler], Handler]:
        if scope not in SCOPES:
            raise ValueError(f"unknown scope {scope!r}")

        def register(handler: Handler) -> Handler:
            self.operations.append(Operation(method.upper(), path, handler, summary, scope, tag, **kw))
            return handler

        return register

    # ---- serving ---------------------------------------------------------

    def routes(self, runtime: "Runtime") -> list[web.RouteDef]:
        limiter = RateLimiter(runtime.config.api.rate_per_second, runtime.config.api.burst)
        out = [web.get(BASE + "/openapi.json", self._serve_spec), web.get(BASE + "/docs", self._serve_docs)]
        for op in self.operations:
            out.append(web.route(op.method, BASE + op.path, _Dispatcher(op, runtime, limiter).__call__))
        out.append(web.route("*", BASE + "/{tail:.*}", self._fallback))  # after all others: unknown paths
        return out

    async def _fallback(self, request: web.Request) -> web.Response:
        """Unknown paths and methods under /api/v1 get problems too, not aiohttp's plain text."""
        path = request.path[len(BASE):]
        allowed = sorted({op.method for op in self.operations if _template(op.path).fullmatch(path)})
        if request.path in (BASE + "/openapi.json", BASE + "/docs"):
            allowed = ["GET"]
        if allowed:
            return Problem("method-not-allowed", f"{request.method} is not supported here; use {', '.join(allowed)}",
                           headers={"Allow": ", ".join(allowed)}).response(request.path)
        return Problem("not-found", f"no API operation at {request.path}").response(request.path)

    async def _serve_spec(self, request: web.Request) -> web.Response:
        return web.json_response(self.openapi())

    async def _serve_docs(self, request: web.Request) -> web.Response:
        return web.Response(text=render_docs(self.openapi()), content_type="text/html", charset="utf-8",
                            headers={"Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'",
                                     "X-Content-Type-Options": "nosniff"})

    # ---- the document ------------------------------------------------------

    def openapi(self) -> dict:
        models: list[tuple[type[BaseModel], str]] = [(ProblemDetails, "serialization")]
        for op in self.operations:
            if op.body is not None:
                models.append((op.body, "validation"))
            models += [(m, "serialization") for m in op.responses.values() if m is not None]
        keys, defs = models_json_schema(list(dict.fromkeys(models)), ref_template="#/components/schemas/{model}")
        schemas = defs.get("$defs", {})
        paths: dict[str, dict] = {}
        for op in self.operations:
            paths.setdefault(BASE + op.path, {})[op.method.lower()] = self._operation(op, keys)
        return {
            "openapi": "3.1.0",
            "info": {"title": self.title, "version": self.version, "description": self.description},
            "servers": [{"url": "/"}],
            "paths": paths,
            "components": {
                "schemas": schemas,
                "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer",
                                               "description": "python run_bot.py api-token create"}},
            },
            "security": [{"bearer": []}],
            "x-problem-types": {PREFIX + slug: {"status": st, "title": title} for slug, (st, title) in PROBLEMS.items()},
        }

    def _operation(self, op: Operation, keys: dict) -> dict:
        params: list[dict] = []
        for name in _path_names(op.path):
            params.append({"name": name, "in": "path", "required": True,
                           "schema": {"type": "string", "minLength": 1, "maxLength": 64}})
        if op.query is not None:
            schema = op.query.model_json_schema()
            required = set(schema.get("required", ()))
            for name, prop in schema.get("properties", {}).items():
                prop = dict(prop)
                desc = prop.pop("description", None)
                prop.pop("title", None)
                p = {"name": name, "in": "query", "required": name in required, "schema": prop}
                if desc:
                    p["description"] = desc
                params.append(p)
        if op.idempotency:
            params.append({"name": IDEMPOTENCY_HEADER, "in": "header", "required": op.idempotency == "required",
                           "description": "a repeat with the same key and body gets the first answer",
                           "schema": {"type": "string", "minLength": 1, "maxLength": 200,
                                      "pattern": "^[\\x21-\\x7e]+$"}})
        responses: dict[str, dict] = {}
        for status, model in op.responses.items():
            if model is None and op.produces != "application/json":
                content = {op.produces: {"schema": {"type": "string", "format": "binary"}}}
            elif model is None:
                content = None
            else:
                content = {"application/json": {"schema": keys[(model, "serialization")]}}
            responses[str(status)] = {"description": _status_text(status)}
            if content:
                responses[str(status)]["content"] = content
        problem_ref = keys[(ProblemDetails, "serialization")]
        for slug in op.error_slugs():
            status = str(PROBLEMS[slug][0])
            entry = responses.setdefault(status, {"description": "", "content": {PROBLEM_JSON: {"schema": problem_ref}}})
            types = entry.setdefault("x-problem-types", [])
            types.append(PREFIX + slug)
            entry["description"] = "; ".join(PROBLEMS[t.removeprefix(PREFIX)][1] for t in types)
            if slug == "rate-limited":
                entry["headers"] = {"Retry-After": {"description": "seconds to wait", "schema": {"type": "string"}}}
        out: dict[str, Any] = {
            "operationId": op.operation_id, "summary": op.summary, "tags": [op.tag],
            "security": [{"bearer": []}], "x-scope": op.scope, "responses": dict(sorted(responses.items())),
        }
        if op.description:
            out["description"] = op.description
        if params:
            out["parameters"] = params
        if op.body is not None:
            out["requestBody"] = {"required": True, "content": {
                "application/json": {"schema": keys[(op.body, "validation")]}}}
        return out


def _template(path: str) -> re.Pattern:
    return re.compile(re.sub(r"\\\{[^}]+\\\}", "[^/]+", re.escape(path)))


def _path_names(path: str) -> list[str]:
    return [part[1:-1] for part in path.split("/") if part.startswith("{") and part.endswith("}")]


def _status_text(status: int) -> str:
    return {200: "OK", 201: "Created", 204: "No content"}.get(status, str(status))


class _Dispatcher:
    """One operation's request handling, from the bearer token to the stored answer."""

    def __init__(self, op: Operation, runtime: "Runtime", limiter: RateLimiter):
        self.op, self.runtime, self.limiter = op, runtime, limiter

    async def __call__(self, request: web.Request) -> web.StreamResponse:
        try:
            return await self._handle(request)
        except Problem as p:
            return p.response(request.path)

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        op, rt = self.op, self.runtime
        token = await self._authenticate(request)
        if op.scope not in token.scopes:
            raise Problem("insufficient-scope", f"this operation needs the scope {op.scope}", scope=op.scope)
        wait = self.limiter.take(token.id)
        if wait:
            raise Problem("rate-limited", f"at most {rt.config.api.rate_per_second:g} requests/s per token",
                          headers={"Retry-After": RateLimiter.retry_after(wait)})
        if any("\x00" in value for value in request.match_info.values()):
            raise Problem("not-found", "no resource has NUL (U+0000) in its name")
        query = self._query(request)
        raw, body = await self._body(request)
        key = request.headers.get(IDEMPOTENCY_HEADER)
        if op.idempotency == "required" and not key:
            raise Problem("idempotency-key-missing", f"send an {IDEMPOTENCY_HEADER} header (any unique string)")
        if key is not None and not op.idempotency:
            key = None  # reads ignore it
        if key is not None and (len(key) > 200 or not key.isprintable() or not key.isascii()):
            raise Problem("validation-failed", f"{IDEMPOTENCY_HEADER}: 1-200 printable ASCII characters")
        request_hash = hashlib.sha256(f"{op.method} {request.path}\n".encode() + raw).hexdigest()
        async with rt.db.session() as s:
            ctx = Context(request, rt, token, s, dict(request.match_info), query)
            if key is not None:
                replay = await self._replay(s, token, key, request_hash)
                if replay is not None:
                    return replay
            try:
                async with savepoint(s):  # a refusal leaves nothing behind
                    reply = await (op.handler(ctx, body) if op.body is not None else op.handler(ctx))
            except Refused as r:
                raise from_refusal(r) from None
            if isinstance(reply, web.StreamResponse):
                return reply
            if key is not None and not isinstance(reply, Later):
                await s.exec(ApiIdempotency.__table__.update()
                             .where(ApiIdempotency.token_name == token.name, ApiIdempotency.key == key)
                             .values(status=reply.status, body={"v": reply.body()}))
        if ctx.wrote:
            rt.outbox.wake()
        if isinstance(reply, Later):
            return await reply.make()
        return self._respond(reply.status, reply.body(), reply.headers)

    @staticmethod
    def _respond(status: int, body: Any, headers: dict[str, str]) -> web.Response:
        if body is None:
            return web.Response(status=status, headers=headers)
        return web.Response(status=status, text=json.dumps(body, ensure_ascii=False),
                            content_type="application/json", headers=headers)

    async def _replay(self, s: AsyncSession, token: ApiToken, key: str, request_hash: str) -> web.Response | None:
        """None for a new key (now reserved in this transaction), else the recorded answer."""
        if await insert_ignore(s, ApiIdempotency, token_name=token.name, key=key, method=self.op.method,
                               path=self.op.path, request_hash=request_hash, status=0, body={}):
            return None
        row = await s.get(ApiIdempotency, (token.name, key))
        if row is None or row.request_hash != request_hash:
            raise Problem("idempotency-key-reused",
                          f"{IDEMPOTENCY_HEADER} {key!r} was sent before with a different request")
        return self._respond(row.status, row.body.get("v"), {"Idempotent-Replayed": "true"})

    async def _authenticate(self, request: web.Request) -> ApiToken:
        scheme, _, secret = request.headers.get("Authorization", "").partition(" ")
        challenge = {"WWW-Authenticate": 'Bearer realm="relaydesk"'}
        if scheme.lower() != "bearer" or not secret.strip():
            raise Problem("unauthorized", "send Authorization: Bearer <token>", headers=challenge)
        token = await find_token(self.runtime.db, secret.strip())
        if token is None:
            raise Problem("unauthorized", "unknown API token", headers=challenge)
        if token.revoked_at is not None:
            raise Problem("token-revoked", f"the token {token.prefix}… was revoked", headers=challenge)
        return token

    def _query(self, request: web.Request) -> Any:
        if self.op.query is None:
            return None
        params = {k: request.query.getone(k) for k in request.query}
        _refuse_nul(params, "query")
        try:
            return self.op.query.model_validate(params)
        except ValidationError as e:
            raise Problem("validation-failed", _errors_text(e), errors=_errors(e)) from None

    async def _body(self, request: web.Request) -> tuple[bytes, Any]:
        if self.op.body is None:
            return b"", None
        api = self.runtime.config.api
        limit = self.op.body_limit(api) if self.op.body_limit else api.max_body_bytes
        if request.content_length is not None and request.content_length > limit:
            raise Problem("body-too-large", f"at most {limit} bytes", max_bytes=limit)
        if request.content_type != "application/json":
            raise Problem("unsupported-media-type", f"got {request.content_type or 'no content type'}")
        raw = await request.read()  # already read, within [server] limits and body_timeout, by bot.inbound's guard
        if len(raw) > limit:
            raise Problem("body-too-large", f"at most {limit} bytes", max_bytes=limit)
        if not nesting_within(raw):
            raise Problem("malformed-json", "the body is nested too deeply")
        try:
            data = json.loads(raw.decode(request.charset or "utf-8"))
        except (ValueError, UnicodeDecodeError, LookupError, RecursionError) as e:
            raise Problem("malformed-json", f"the body is not valid JSON: {e}") from None
        _refuse_nul(data, "body")
        try:
            model = self.op.body.model_validate(data)
        except ValidationError as e:
            raise Problem("validation-failed", _errors_text(e), errors=_errors(e)) from None
        canonical = json.dumps(model.model_dump(mode="json"), sort_keys=True, ensure_ascii=False).encode()
        return canonical, model


def _refuse_nul(data: Any, where: str) -> None:
    """NUL (U+0000) is valid JSON and URL text but no text PostgreSQL can store or compare:
    refuse it up front, anywhere in a request, instead of failing in the database."""
    if isinstance(data, str):
        if "\x00" in data:
            raise Problem("validation-failed", f"{where}: text may not contain NUL (U+0000)",
                          errors=[{"loc": where, "msg": "contains NUL (U+0000)"}])
    elif isinstance(data, dict):
        for k, v in data.items():
            _refuse_nul(k, where)
            _refuse_nul(v, f"{where}.{k}")
    elif isinstance(data, list):
        for i, v in enumerate(data):
            _refuse_nul(v, f"{where}[{i}]")


def _errors(e: ValidationError) -> list[dict]:
    return [{"loc": ".".join(str(p) for p in err["loc"]), "msg": err["msg"]} for err in e.errors()]


def _errors_text(e: ValidationError) -> str:
    return "; ".join(f"{x['loc'] or 'body'}: {x['msg']}" for x in _errors(e))


# ---- the docs page -------------------------------------------------------------


def render_docs(spec: dict) -> str:
    """The OpenAPI document as one static page: operations by tag, their
    parameters, bodies and answers, then the schemas and problem types."""
    esc = html.escape
    parts = [f"<!doctype html><html lang='en'><head><meta charset='utf-8'><title>{esc(spec['info']['title'])}</title>",
             "<style>body{font:14px/1.5 system-ui,sans-serif;max-width:980px;margin:2em auto;padding:0 1em}"
             "code,pre{background:#f4f4f6;border-radius:4px}pre{padding:.6em;overflow:auto;font-size:12px}"
             ".op{border:1px solid #ddd;border-radius:6px;margin:1em 0;padding:.4em 1em}"
             ".m{display:inline-block;min-width:4em;font-weight:bold}.get{color:#1565c0}.post{color:#2e7d32}"
             ".delete{color:#c62828}table{border-collapse:collapse}td,th{border:1px solid #ddd;padding:2px 6px;"
             "text-align:left;vertical-align:top}</style></head><body>",
             f"<h1>{esc(spec['info']['title'])} <small>{esc(spec['info']['version'])}</small></h1>",
             f"<p>{esc(spec['info']['description'])}</p>",
             "<p>Machine-readable: <a href='openapi.json'>openapi.json</a> (OpenAPI 3.1).</p>"]
    by_tag: dict[str, list[tuple[str, str, dict]]] = {}
    for path, item in spec["paths"].items():
        for method, op in item.items():
            by_tag.setdefault(op["tags"][0], []).append((method, path, op))
    for tag, ops in by_tag.items():
        parts.append(f"<h2>{esc(tag)}</h2>")
        for method, path, op in ops:
            parts.append(f"<div class='op' id='{esc(op['operationId'])}'><h3><span class='m {method}'>"
                         f"{method.upper()}</span> <code>{esc(path)}</code></h3>"
                         f"<p><b>{esc(op['summary'])}</b> — scope <code>{esc(op['x-scope'])}</code></p>")
            if op.get("description"):
                parts.append(f"<p>{esc(op['description'])}</p>")
            if op.get("parameters"):
                parts.append("<table><tr><th>parameter</th><th>in</th><th>required</th><th>schema</th></tr>")
                for p in op["parameters"]:
                    parts.append(f"<tr><td><code>{esc(p['name'])}</code></td><td>{p['in']}</td>"
                                 f"<td>{'yes' if p.get('required') else 'no'}</td>"
                                 f"<td><code>{esc(json.dumps(p['schema'], ensure_ascii=False))}</code></td></tr>")
                parts.append("</table>")
            if "requestBody" in op:
                ref = op["requestBody"]["content"]["application/json"]["schema"]["$ref"].rsplit("/", 1)[1]
                parts.append(f"<p>Body: <a href='#schema-{esc(ref)}'>{esc(ref)}</a></p>")
            parts.append("<table><tr><th>status</th><th>answer</th></tr>")
            for status, resp in op["responses"].items():
                content = resp.get("content", {})
                what = ", ".join(
                    (f"<a href='#schema-{esc(c['schema']['$ref'].rsplit('/', 1)[1])}'>"
                     f"{esc(c['schema']['$ref'].rsplit('/', 1)[1])}</a>" if "$ref" in c["schema"] else esc(ctype))
                    for ctype, c in content.items())
                types = "".join(f"<br><code>{esc(t)}</code>" for t in resp.get("x-problem-types", ()))
                parts.append(f"<tr><td>{status}</td><td>{esc(resp['description'])} {what}{types}</td></tr>")
            parts.append("</table></div>")
    parts.append("<h2>Schemas</h2>")
    for name, schema in spec["components"]["schemas"].items():
        parts.append(f"<h3 id='schema-{esc(name)}'>{esc(name)}</h3>"
                     f"<pre>{esc(json.dumps(schema, ensure_ascii=False, indent=2))}</pre>")
    parts.append("<h2>Problem types</h2><table><tr><th>type</th><th>status</th><th>meaning</th></tr>")
    for t, info in spec["x-problem-types"].items():
        parts.append(f"<tr><td><code>{esc(t)}</code></td><td>{info['status']}</td><td>{esc(info['title'])}</td></tr>")
    parts.append("</table></body></html>")
    return "".join(parts)
