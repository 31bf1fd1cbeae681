"""Plane as orch's tracker, over its REST API v1 (`{url}/api/v1/`, the `X-Api-Key` header).

Reads are retried on 429, 5xx and transport errors with a bounded, jittered backoff. A write
(a state PATCH, a comment POST) whose answer was lost is not sent again blindly: the item is read
back first (is the state set? is a comment with that key there?). The rate limit Plane announces
(`X-RateLimit-Remaining` 0 until `X-RateLimit-Reset`) is waited out before the next request.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any
from urllib.parse import quote

import httpx

from orch.adapters.trackers import (
    ORCH_SOURCE,
    TrackerError,
    TrackerUnavailable,
    UnknownState,
    plain_text,
    webhook_hint,
)
from orch.ports import ItemHint, WorkItem

_BACKOFF_BASE_S = 0.5
_BACKOFF_CAP_S = 8.0
log = logging.getLogger("orch.tracker")
_MAX_PAGES = 10_000  # a server that never stops paging is a bug, not a workspace


class PlaneTracker:
    """A Plane workspace's projects. Thread-safe: one HTTP client, caches under a lock."""

    def __init__(
        self,
        base_url: str,
        workspace: str,
        token: str,
        *,
        name: str = "plane",
        timeout_s: float = 10.0,
        sleep: Callable[[float], None] = time.sleep,
        transport: httpx.BaseTransport | None = None,
        max_tries: int = 5,
        clock: Callable[[], float] = time.time,
        page_size: int = 100,
        max_wait_s: float = 60.0,
        rng: random.Random | None = None,
    ) -> None:
        self.name = name
        self._base = base_url.rstrip("/")
        self._slug = workspace
        self._sleep = sleep
        self._clock = clock
        self._tries = max(1, max_tries)
        self._page_size = page_size
        self._max_wait_s = max_wait_s
        self._rng = rng or random.Random()
        self._client = httpx.Client(
            base_url=f"{self._base}/api/v1/",
            headers={"X-Api-Key": token, "Accept": "application/json"},
            timeout=timeout_s,
            transport=transport,
        )
        self._lock = threading.Lock()
        self._me: str | None = None
        self._identifiers: dict[str, str] = {}  # project id -> its identifier, e.g. ORCH
        self._states: dict[str, dict[str, str]] = {}  # project id -> state id -> name
        self._resume_at = 0.0  # the rate limit is spent until then

    def __repr__(self) -> str:
        return f"PlaneTracker({self._base!r}, workspace={self._slug!r})"

    def close(self) -> None:
        self._client.close()

    def __enter__(self) -> PlaneTracker:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- the Tracker protocol ------------------------------------------------------------------

    def item(self, project: str, ref: str) -> WorkItem | None:
        data = self._read(self._item_path(project, ref), {"expand": "state"}, missing_ok=True)
        return self._work_item(project, data) if data is not None else None

    def items(self, project: str) -> Iterator[WorkItem]:
        """Every item Plane lists, whatever its state's group (Plane leaves out archived and
        draft ones), newest first."""
        path = self._project_path(project) + "work-items/"
        for data in self._pages(path, {"expand": "state"}):
            yield self._work_item(project, data)

    def state_names(self, project: str) -> list[str]:
        return list(self._state_map(project, refresh=True).values())

    def move(self, item: WorkItem, state: str) -> bool:
        target = self._state_id(item.project, state)
        path = self._item_path(item.project, item.ref)

        def read() -> Mapping[str, Any]:
            data = self._read(path, missing_ok=True)
            if data is None:
                raise TrackerError(f"{item.key} is gone from Plane project {item.project}")
            return dict(data)

        def current() -> str:
            return _state_id_of(read())

        # the item as Plane holds it now, not as the caller last saw it: one a person moved since
        # is theirs, and is not moved over
        seen = self._state_id(item.project, item.state)
        before = read()
        now = _state_id_of(before)
        if now == target or now != seen:
            return False

        def settled() -> bool:
            # done by an earlier try, or moved by someone since: either way, not sent again
            return current() != seen

        answer = self._write("PATCH", path, {"state": target}, settled)
        if answer is not None:
            self._check(answer, "PATCH", path)
        return not self._put_back(item, seen, target, _moment(before.get("updated_at")))

    def _put_back(self, item: WorkItem, seen: str, target: str, read_at: datetime) -> bool:
        """Plane has no conditional write: a person's move that landed between orch's read and
        its write was overwritten by it. orch's own change in the item's activity says so (it
        moved the item from a state other than the one it read), and the person's state is put
        back (unless the item changed again since); whether it was. Their move then acts as it
        would have, on the next delivery or poll. Plane may record activity a moment late: an
        overwrite not recorded yet is not seen."""
        path = self._item_path(item.project, item.ref)
        after = self._read(path, missing_ok=True)
        if after is None or _state_id_of(after) != target:
            return False  # someone moved it after orch did: theirs stands as it is
        me = self._me_id()
        ours = [
            a
            for a in self._pages(path + "activities/", {})
            # this write's: orch's, of the state, after the read it was made on
            if a.get("field") == "state"
            and a.get("actor") == me
            and _moment(a.get("created_at")) > read_at
        ]
        if not ours:
            return False
        last = max(ours, key=lambda a: _moment(a.get("created_at")))
        wanted = str(last.get("old_identifier") or "")
        if last.get("new_identifier") != target or wanted in ("", seen, target):
            return False
        log.warning(
            "%s: orch's move to %s landed on a move to %s made after orch read it; put back",
            item.key,
            last.get("new_value"),
            last.get("old_value"),
        )

        def restored() -> bool:
            return _state_id_of(self._read(path, missing_ok=True) or {}) != target

        answer = self._write("PATCH", path, {"state": wanted}, restored)
        if answer is not None:
            self._check(answer, "PATCH", path)
        return True

    def comment(self, item: WorkItem, key: str, html: str) -> bool:
        path = self._item_path(item.project, item.ref) + "comments/"

        def there() -> bool:
            return any(
                c.get("external_source") == ORCH_SOURCE and c.get("external_id") == key
                for c in self._pages(path, {})
            )

        if there():
            return False
        body = {"comment_html": html, "external_source": ORCH_SOURCE, "external_id": key}
        answer = self._write("POST", path, body, there)
        if answer is None:
            return True  # an earlier try, whose answer was lost, made it
        if answer.status_code == 409:  # Plane's own guard on (external_source, external_id)
            return False
        self._check(answer, "POST", path)
        return True

    def latest_comment(self, item: WorkItem) -> str:
        me = self._me_id()
        path = self._item_path(item.project, item.ref) + "comments/"
        newest: tuple[datetime, Mapping[str, Any]] | None = None
        for c in self._pages(path, {}):
            mine = me in (c.get("created_by"), c.get("actor"))
            if mine or c.get("external_source") == ORCH_SOURCE:
                continue
            at = _moment(c.get("created_at"))
            if newest is None or at > newest[0]:
                newest = (at, c)
        if newest is None:
            return ""
        c = newest[1]
        return plain_text(str(c.get("comment_html") or "")) or str(c.get("comment_stripped") or "")

    def hint(self, payload: Mapping[str, Any]) -> ItemHint | None:
        return webhook_hint(payload, self._me_id)

    # -- what the workspace holds --------------------------------------------------------------

    def _project_path(self, project: str) -> str:
        return f"workspaces/{quote(self._slug, safe='')}/projects/{quote(project, safe='')}/"

    def _item_path(self, project: str, ref: str) -> str:
        return f"{self._project_path(project)}work-items/{quote(ref, safe='')}/"

    def _me_id(self) -> str:
        with self._lock:
            if self._me is not None:
                return self._me
        me = self._read("users/me/")
        user = str(me.get("id") or "") if isinstance(me, Mapping) else ""
        if not user:
            raise TrackerError(f"Plane at {self._base} did not say which user the API key is")
        with self._lock:
            self._me = user
        return user

    def _identifier(self, project: str) -> str:
        with self._lock:
            known = self._identifiers.get(project)
        if known is not None:
            return known
        data = self._read(self._project_path(project))
        identifier = str(data.get("identifier") or "") if isinstance(data, Mapping) else ""
        if not identifier:
            raise TrackerError(f"Plane project {project} has no identifier")
        with self._lock:
            self._identifiers[project] = identifier
        return identifier

    def _state_map(self, project: str, *, refresh: bool = False) -> dict[str, str]:
        with self._lock:
            known = self._states.get(project)
        if known is not None and not refresh:
            return known
        states = {
            str(s["id"]): str(s.get("name") or "")
            for s in self._pages(self._project_path(project) + "states/", {})
            if s.get("id")
        }
        with self._lock:
            self._states[project] = states
        return states

    def _state_id(self, project: str, name: str) -> str:
        for refresh in (False, True):  # a miss may be a state made since it was cached
            states = self._state_map(project, refresh=refresh)
            for state_id, state_name in states.items():
                if state_name == name:
                    return state_id
        raise UnknownState(project, name, states.values())

    def _state_name(self, project: str, data: Mapping[str, Any]) -> str:
        state = data.get("state")
        if isinstance(state, Mapping) and state.get("name"):
            return str(state["name"])
        state_id = _state_id_of(data)
        if not state_id:
            return ""
        names = self._state_map(project)
        if state_id not in names:
            names = self._state_map(project, refresh=True)
        # a triage state is not listed: its id is all there is to go by
        return names.get(state_id, state_id)

    def _work_item(self, project: str, data: Mapping[str, Any]) -> WorkItem:
        identifier = self._identifier(project)
        ref = str(data.get("id") or "")
        key = f"{identifier}-{data.get('sequence_id')}"
        html = data.get("description_html")
        body = plain_text(html) if isinstance(html, str) else ""
        return WorkItem(
            project=project,
            ref=ref,
            key=key,
            title=str(data.get("name") or ""),
            body=body or str(data.get("description_stripped") or ""),
            state=self._state_name(project, data),
            url=f"{self._base}/{quote(self._slug, safe='')}/browse/{key}/",
            updated=str(data.get("updated_at") or ""),
        )

    def _pages(self, path: str, params: Mapping[str, str]) -> Iterator[Mapping[str, Any]]:
        """Every result of a paginated list, following `next_cursor` while Plane says there
        are more."""
        cursor: str | None = None
        for _ in range(_MAX_PAGES):
            query = {**params, "per_page": str(self._page_size)}
            if cursor is not None:
                query["cursor"] = cursor
            page = self._read(path, query)
            if not isinstance(page, Mapping) or not isinstance(page.get("results"), list):
                raise TrackerError(f"Plane answered GET {path} with something not a page")
            for result in page["results"]:
                if isinstance(result, Mapping):
                    yield result
            following = page.get("next_cursor")
            if not page.get("next_page_results") or not following or following == cursor:
                return
            cursor = str(following)
        raise TrackerError(f"Plane kept paging GET {path} past {_MAX_PAGES} pages")

    # -- HTTP ----------------------------------------------------------------------------------

    def _send(
        self, method: str, path: str, params: Mapping[str, str] | None, body: Any
    ) -> httpx.Response:
        """One request, once, after waiting out a rate limit Plane said was spent."""
        with self._lock:
            resume_at = self._resume_at
        wait = resume_at - self._clock()
        if wait > 0:
            self._sleep(min(wait, self._max_wait_s))
        with self._lock:
            if self._resume_at == resume_at:
                self._resume_at = 0.0
        answer = self._client.request(method, path, params=params, json=body)
        if answer.headers.get("X-RateLimit-Remaining", "").strip() == "0":
            reset = _number(answer.headers.get("X-RateLimit-Reset"))
            if reset is not None:
                with self._lock:
                    self._resume_at = max(self._resume_at, reset)
        return answer

    def _read(
        self, path: str, params: Mapping[str, str] | None = None, *, missing_ok: bool = False
    ) -> Any:
        """GET and decode; None for a 404 when `missing_ok`."""
        failure = ""
        for attempt in range(1, self._tries + 1):
            try:
                answer = self._send("GET", path, params, None)
            except httpx.TransportError as exc:
                failure = _transport_failure(exc)
                if attempt < self._tries:
                    self._backoff(attempt)
                continue
            if answer.status_code == 404 and missing_ok:
                return None
            if answer.status_code == 429 or answer.status_code >= 500:
                failure = f"{answer.status_code}"
                if attempt < self._tries:
                    self._pause(answer, attempt)
                continue
            self._check(answer, "GET", path)
            try:
                return answer.json()
            except ValueError as exc:
                raise TrackerError(f"Plane answered GET {path} with something not JSON") from exc
        raise TrackerUnavailable(
            f"Plane failed GET {path} {self._tries} times; the last: {failure}"
        )

    def _write(
        self, method: str, path: str, body: Mapping[str, Any], done: Callable[[], bool]
    ) -> httpx.Response | None:
        """Send a write until Plane answers it; None when a read-back (`done`) shows that there
        is nothing left to send: an earlier try whose answer was lost (a transport error, a 5xx)
        did it, or the thing it was conditional on changed. The read-back comes before every
        try after the first, a refused one (429) too: a person may have moved the item while
        orch waited out the pause, and a write sent blindly after it would undo their move."""
        failure = ""
        for attempt in range(1, self._tries + 1):
            if attempt > 1 and done():
                return None
            try:
                answer = self._send(method, path, None, body)
            except httpx.TransportError as exc:
                failure = _transport_failure(exc)
                if attempt < self._tries:
                    self._backoff(attempt)
                continue
            if answer.status_code == 429:  # refused before it was done
                failure = "429"
                if attempt < self._tries:
                    self._pause(answer, attempt)
                continue
            if answer.status_code >= 500:
                failure = f"{answer.status_code}"
                if attempt < self._tries:
                    self._backoff(attempt)
                continue
            return answer
        if done():
            return None
        raise TrackerUnavailable(
            f"Plane failed {method} {path} {self._tries} times; the last: {failure}"
        )

    def _check(self, answer: httpx.Response, method: str, path: str) -> None:
        status = answer.status_code
        if 200 <= status < 300:
            return
        if status == 401:
            raise TrackerError(
                f"Plane at {self._base} refused the API key (401): it is wrong, expired or revoked"
            )
        detail = _detail(answer)
        if status == 403:
            raise TrackerError(f"Plane does not let this API key {method} {path} (403): {detail}")
        raise TrackerError(f"Plane answered {status} to {method} {path}: {detail}")

    def _backoff(self, attempt: int) -> None:
        delay = min(_BACKOFF_CAP_S, _BACKOFF_BASE_S * 2 ** (attempt - 1))
        self._sleep(delay * (0.5 + self._rng.random() / 2))

    def _pause(self, answer: httpx.Response, attempt: int) -> None:
        """Wait as long as a 429 or 503 asks (Retry-After, in seconds or as a date), bounded;
        without one, back off."""
        raw = answer.headers.get("Retry-After", "")
        wait = _number(raw)
        if wait is None and raw:
            try:
                wait = parsedate_to_datetime(raw).timestamp() - self._clock()
            except (TypeError, ValueError):
                wait = None
        if wait is None:
            self._backoff(attempt)
        else:
            self._sleep(min(max(wait, 0.0), self._max_wait_s))


def _state_id_of(data: Mapping[str, Any]) -> str:
    state = data.get("state")
    if isinstance(state, Mapping):
        return str(state.get("id") or "")
    return str(state or "")


def _number(raw: str | None) -> float | None:
    try:
        return float(raw) if raw else None
    except ValueError:
        return None


_NEVER = datetime.min.replace(tzinfo=UTC)


def _moment(raw: Any) -> datetime:
    try:
        at = datetime.fromisoformat(str(raw))
    except ValueError:
        return _NEVER
    return at if at.tzinfo is not None else at.replace(tzinfo=UTC)


def _transport_failure(exc: httpx.TransportError) -> str:
    # the exception's text may carry the URL; its kind says enough
    return type(exc).__name__


def _detail(answer: httpx.Response) -> str:
    try:
        body = answer.json()
    except ValueError:
        return answer.text[:200] or answer.reason_phrase
    if isinstance(body, Mapping):
        for field in ("error", "detail", "non_field_errors"):
            if body.get(field):
                value = body[field]
                return str(value[0] if isinstance(value, list) and value else value)[:200]
    return str(body)[:200]
