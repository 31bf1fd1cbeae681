"""Requests and responses checked against a Swagger 2.0 document, for the fakes: the route and
method, the path and query parameters, the JSON body against its schema (required fields,
enums, no fields the document does not name) and each response against the schema of the
status it carries.

Swagger's schemas become JSON Schema (draft 4) for jsonschema_rs. In a response any field may
be null: the document does not say which of Go's fields are pointers or slices, encoded as null
when nil."""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import jsonschema_rs

_SKIP = frozenset({"example", "discriminator", "readOnly", "title", "description", "xml"})
_INTEGER = re.compile(r"-?\d+")


@dataclass(frozen=True)
class Operation:
    template: str  # the path as the document names it, without the base path
    method: str  # lower case
    spec: Mapping[str, Any]
    params: Mapping[str, str]  # the path's parameters, decoded


@dataclass
class Checked:
    """What checking a request found: its operation, and what is wrong with it."""

    operation: Operation | None
    problems: list[str] = field(default_factory=list)
    status: int = 200  # what the provider answers a request it refuses
    body: Any = None  # the JSON body, decoded


class SwaggerDocument:
    def __init__(
        self,
        document: Mapping[str, Any],
        *,
        required: Mapping[str, Sequence[str]] | None = None,
        auth_query: Sequence[str] = (),
    ) -> None:
        """`required` names fields the provider requires of a definition beyond what the
        document says (its validation tags); `auth_query` query parameters any request may
        carry (besides the document's own query credentials)."""
        self.document = document
        self.base = str(document.get("basePath", "")).rstrip("/")
        self._consumes = list(document.get("consumes", ["application/json"]))
        security = document.get("securityDefinitions", {}).values()
        self._auth_query = {s["name"] for s in security if s.get("in") == "query"}
        self._auth_query.update(auth_query)
        definitions: Mapping[str, Any] = document.get("definitions", {})
        extra = required or {}
        self._defs = {
            mode: {
                name: _with_required(_convert(schema, strict=mode), extra.get(name, ()))
                for name, schema in definitions.items()
            }
            for mode in (True, False)
        }
        self._routes = [
            (template, template.strip("/").split("/")) for template in document.get("paths", {})
        ]
        self._validators: dict[tuple[str, bool], jsonschema_rs.Validator] = {}
        self._lock = threading.Lock()

    @classmethod
    def load(cls, path: Path, **options: Any) -> SwaggerDocument:
        return cls(json.loads(path.read_text()), **options)

    # -- requests ----------------------------------------------------------------------------

    def check_request(
        self,
        method: str,
        path: str,
        query: Mapping[str, Sequence[str]],
        headers: Mapping[str, str],
        body: bytes,
    ) -> Checked:
        """The operation a request calls, and every way it breaks the document."""
        found = self._route(method.lower(), path)
        if isinstance(found, Checked):
            return found
        op = found
        problems = [*self._path_problems(op), *self._query_problems(op, query)]
        params = op.spec.get("parameters", [])
        for param in params:
            required = param["in"] == "header" and param.get("required")
            if required and param["name"].lower() not in headers:
                problems.append(f"{self._name(op)}: header {param['name']} is required")
        decoded, body_problems = self._body_problems(op, params, headers, body)
        problems.extend(body_problems)
        status = 422 if problems else 200
        return Checked(op, problems, status, decoded)

    def _route(self, method: str, path: str) -> Operation | Checked:
        if not path.startswith(self.base + "/"):
            return Checked(None, [f"{method.upper()} {path} is outside {self.base}"], 404)
        segments = path[len(self.base) :].strip("/").split("/")
        matches: list[tuple[tuple[int, ...], str, dict[str, str]]] = []
        for template, parts in self._routes:
            if len(parts) != len(segments):
                continue
            params: dict[str, str] = {}
            for part, segment in zip(parts, segments, strict=True):
                if part.startswith("{") and part.endswith("}"):
                    if not segment:
                        break
                    params[part[1:-1]] = unquote(segment)
                elif part != unquote(segment):
                    break
            else:
                rank = tuple(0 if p.startswith("{") else 1 for p in parts)
                matches.append((rank, template, params))
        if not matches:
            return Checked(None, [f"{method.upper()} {path}: no such path in the document"], 404)
        # a literal segment beats a parameter, as the provider's router prefers it
        matches.sort(key=lambda m: m[0], reverse=True)
        for _, template, params in matches:
            item = self.document["paths"][template]
            if method in item:
                return Operation(template, method, item[method], params)
        template = matches[0][1]
        return Checked(None, [f"{method.upper()} {template}: method not in the document"], 405)

    @staticmethod
    def _name(op: Operation) -> str:
        return f"{op.method.upper()} {op.template}"

    def _path_problems(self, op: Operation) -> list[str]:
        problems = []
        for param in op.spec.get("parameters", []):
            if param["in"] == "path":
                value = op.params.get(param["name"], "")
                problems.extend(_scalar_problems(self._name(op), param, value))
        return problems

    def _query_problems(self, op: Operation, query: Mapping[str, Sequence[str]]) -> list[str]:
        name = self._name(op)
        declared = {p["name"]: p for p in op.spec.get("parameters", []) if p["in"] == "query"}
        problems = []
        for key, values in query.items():
            param = declared.get(key)
            if param is None:
                if key not in self._auth_query:
                    problems.append(f"{name}: unknown query parameter {key!r}")
                continue
            if param.get("type") == "array":
                if param.get("collectionFormat") != "multi" and len(values) > 1:
                    problems.append(f"{name}: {key} given {len(values)} times")
                item = {"name": key, **param.get("items", {})}
                for value in values:
                    problems.extend(_scalar_problems(name, item, value))
            else:
                if len(values) > 1:
                    problems.append(f"{name}: {key} given {len(values)} times")
                problems.extend(_scalar_problems(name, param, values[0]))
        for key, param in declared.items():
            if param.get("required") and key not in query:
                problems.append(f"{name}: query parameter {key} is required")
        return problems

    def _body_problems(
        self,
        op: Operation,
        params: Sequence[Mapping[str, Any]],
        headers: Mapping[str, str],
        body: bytes,
    ) -> tuple[Any, list[str]]:
        name = self._name(op)
        param = next((p for p in params if p["in"] == "body"), None)
        if param is None:
            return None, [f"{name} takes no body"] if body.strip() else []
        if not body.strip():
            if param.get("required"):
                return None, [f"{name}: a body is required"]
            decoded: Any = {}  # as the provider binds an absent body: every field unset
        else:
            media = headers.get("content-type", "").split(";")[0].strip().lower()
            consumes = op.spec.get("consumes", self._consumes)
            if media not in consumes:
                return None, [f"{name}: content type {media or 'none'!r} is not in {consumes}"]
            try:
                decoded = json.loads(body)
            except ValueError as exc:
                return None, [f"{name}: the body is not JSON ({exc})"]
        errors = self.errors(param["schema"], decoded, strict=True)
        return decoded, [f"{name} body: {e}" for e in errors]

    # -- responses ---------------------------------------------------------------------------

    def check_response(self, op: Operation, status: int, body: bytes) -> list[str]:
        """Every way a response breaks the document: a status it does not list for the
        operation, or a body that does not match the status's schema."""
        name = self._name(op)
        responses = op.spec.get("responses", {})
        response = responses.get(str(status), responses.get("default"))
        if response is None:
            return [f"{name}: status {status} is not in the document"]
        if "$ref" in response:
            response = self.document["responses"][response["$ref"].rsplit("/", 1)[-1]]
        schema = response.get("schema")
        if schema is None:
            return []
        try:
            decoded = json.loads(body)
        except ValueError:
            return [f"{name} {status}: the body is not JSON"]
        return [f"{name} {status}: {e}" for e in self.errors(schema, decoded, strict=False)]

    # -- schemas -----------------------------------------------------------------------------

    def errors(self, schema: Mapping[str, Any], value: Any, *, strict: bool) -> list[str]:
        """What is wrong with `value` as the Swagger `schema` describes it: `strict` for what
        a client sends (no nulls, no unknown fields), lenient about nulls for what a server
        answers."""
        validator = self._validator(schema, strict)
        return [
            f"{'/'.join(map(str, e.instance_path)) or '(root)'}: {e.message}"
            for e in validator.iter_errors(value)
        ]

    def _validator(self, schema: Mapping[str, Any], strict: bool) -> jsonschema_rs.Validator:
        key = (json.dumps(schema, sort_keys=True), strict)
        with self._lock:
            validator = self._validators.get(key)
            if validator is None:
                root = _convert(schema, strict=strict)
                defs = self._defs[strict]
                root["definitions"] = {n: defs[n] for n in _reachable(root, defs)}
                validator = jsonschema_rs.Draft4Validator(root, validate_formats=True)
                self._validators[key] = validator
            return validator


def _scalar_problems(where: str, param: Mapping[str, Any], value: str) -> list[str]:
    name, kind = param["name"], param.get("type", "string")
    problems = []
    if kind == "integer":
        if not _INTEGER.fullmatch(value):
            return [f"{where}: {name}={value!r} is not an integer"]
        if "minimum" in param and int(value) < param["minimum"]:
            problems.append(f"{where}: {name}={value} is below {param['minimum']}")
    elif kind == "boolean" and value not in ("true", "false"):
        problems.append(f"{where}: {name}={value!r} is not a boolean")
    if "enum" in param and value not in [str(v) for v in param["enum"]]:
        problems.append(f"{where}: {name}={value!r} is not one of {param['enum']}")
    return problems


def _convert(schema: Mapping[str, Any], *, strict: bool) -> dict[str, Any]:
    """A Swagger schema as JSON Schema: references stay `#/definitions/...`, the vendor
    extensions go, and objects take no fields the document does not name."""
    if "$ref" in schema:
        return {"$ref": schema["$ref"]}
    out: dict[str, Any] = {}
    for key, value in schema.items():
        if key.startswith("x-") or key in _SKIP:
            continue
        if key == "properties":
            out[key] = {
                name: _convert(prop, strict=strict)
                if strict
                else _nullable(_convert(prop, strict=strict))
                for name, prop in value.items()
            }
        elif key in ("items", "additionalProperties") and isinstance(value, Mapping):
            out[key] = _convert(value, strict=strict)
        elif key == "allOf":
            out[key] = [_convert(part, strict=strict) for part in value]
        else:
            out[key] = value
    if "properties" in out and "additionalProperties" not in out:
        out["additionalProperties"] = False
    return out


def _nullable(schema: dict[str, Any]) -> dict[str, Any]:
    if "$ref" in schema:
        return {"anyOf": [schema, {"type": "null"}]}
    kind = schema.get("type")
    if kind is None:
        return {"anyOf": [schema, {"type": "null"}]}
    out = {**schema, "type": [kind, "null"]}
    if "enum" in out:
        out["enum"] = [*out["enum"], None]
    return out


def _with_required(schema: dict[str, Any], fields: Sequence[str]) -> dict[str, Any]:
    if not fields:
        return schema
    return {**schema, "required": sorted({*schema.get("required", ()), *fields})}


def _reachable(schema: Any, defs: Mapping[str, Any]) -> set[str]:
    """The definitions `schema` refers to, directly or through others."""
    seen: set[str] = set()
    todo = [schema]
    while todo:
        node = todo.pop()
        if isinstance(node, Mapping):
            ref = node.get("$ref")
            if isinstance(ref, str) and ref.startswith("#/definitions/"):
                name = ref.rsplit("/", 1)[-1]
                if name not in seen and name in defs:
                    seen.add(name)
                    todo.append(defs[name])
            todo.extend(v for k, v in node.items() if k != "$ref")
        elif isinstance(node, list):
            todo.extend(node)
    return seen
