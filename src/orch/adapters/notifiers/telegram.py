"""Telegram both ways: news to chats as HTML messages (with buttons at a checkpoint), and the
commands and button presses people send back, through `orch.services.chat`.

The bot token is part of every Bot API URL (`/bot<TOKEN>/<method>`). It is added to the path by
the transport, below the HTTP client, so httpx's request log lines, the requests and responses
errors carry, and this module's own messages never hold it.

Each chat has one queue: sends to it are serialized and kept a second apart, a 429 is waited
out (`retry_after`, up to `max_wait_s` in all) and a group that became a supergroup is followed
to its new id. Delivery is at least once: Telegram has no idempotency key to send.
"""

from __future__ import annotations

import hmac
import logging
import re
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any
from urllib.parse import quote, urlsplit
from urllib.request import getproxies, proxy_bypass

import httpx

from orch.domain.errors import OrchError
from orch.domain.news import News, NewsKind
from orch.services import chat as talk

log = logging.getLogger("orch.telegram")

LIMIT = 4000  # characters a message part holds, below Telegram's 4096
PACE_S = 1.0  # Telegram's advice: at most one message a second to one chat
ALLOWED_UPDATES = ["message", "callback_query"]
ANSWER_CHARS = 200  # answerCallbackQuery's text limit
_TOKEN_RE = re.compile(r"<[^>]*>|&[#\w]+;|[^<&]+|[<&]")


class TelegramError(OrchError):
    """The Bot API refused a call or could not be reached; `code` is its error_code (0: no
    answer), `parameters` its ResponseParameters."""

    def __init__(self, message: str, code: int = 0, parameters: Mapping[str, Any] | None = None):
        super().__init__(message)
        self.code = code
        self.parameters: Mapping[str, Any] = parameters or {}

    @property
    def passing(self) -> bool:
        """Worth sending again: no answer, or Telegram's own failure."""
        return self.code == 0 or self.code >= 500


# -- HTML ------------------------------------------------------------------------------------


def escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _attr(text: str) -> str:
    return escape(text).replace('"', "&quot;")


def _units(text: str) -> int:
    """Length as Telegram counts it: UTF-16 code units."""
    return len(text.encode("utf-16-le")) // 2


def compose(key: str, text: str, news: News | None, dashboard_url: str = "") -> list[str]:
    """The message as lines of HTML, each line complete in itself (every tag closed on it)."""
    if news is None:
        return [escape(line) for line in (text or key).splitlines()]
    task = news.task_key or key
    head = f"<b>{escape(task)}</b>" + (f" — <b>{escape(news.title)}</b>" if news.title else "")
    lines = [head, *(escape(line) for line in (news.text or text).splitlines())]
    if news.question:
        lines.append(f"<i>{escape(news.question)}</i>")
    if news.reason and news.reason not in (news.text or text):
        lines.append(f"reason: {escape(news.reason)}")
    for verdict in news.verdicts:
        mark = "✅" if verdict.passed else "❌"
        why = f": {escape(verdict.reason)}" if verdict.reason else ""
        lines.append(f"{mark} {escape(verdict.gate)}{why}")
    if news.cost_usd:
        lines.append(f"cost: ${news.cost_usd:.2f}")
    links = list(news.links)
    if dashboard_url and news.task_key:
        links.append(("dashboard", f"{dashboard_url.rstrip('/')}/tasks/{quote(news.task_key)}"))
    shown = [
        f'<a href="{_attr(url)}">{escape(label)}</a>'
        if url.startswith(("http://", "https://"))
        else f"{escape(label)}: {escape(url)}"
        for label, url in links
    ]
    if shown:
        lines.append(" · ".join(shown))
    return lines


def split(lines: Sequence[str], limit: int = LIMIT) -> list[str]:
    """Lines packed into parts of at most `limit`, cut only between lines, or inside an overlong
    line between tags and entities (its open tags closed and opened again)."""
    parts: list[str] = []
    current: list[str] = []
    size = -1  # the newline before the first line does not count
    for line in lines:
        for piece in _cut(line, limit):
            grown = size + 1 + _units(piece)
            if current and grown > limit:
                parts.append("\n".join(current))
                current, grown = [], _units(piece)
            current.append(piece)
            size = grown
    text = "\n".join(current)
    if text.strip():
        parts.append(text)
    return parts


def _cut(line: str, limit: int) -> Iterator[str]:
    if _units(line) <= limit:
        yield line
        return
    stack: list[tuple[str, str]] = []  # (name, opening tag) of the open elements
    out = ""

    def closers() -> str:
        return "".join(f"</{name}>" for name, _ in reversed(stack))

    def reopened() -> str:
        return "".join(tag for _, tag in stack)

    for token in _TOKEN_RE.findall(line):
        if token.startswith("</"):
            if stack:
                stack.pop()
            out += token
            continue
        if token.startswith("<") and len(token) > 1:
            name = token[1:-1].split()[0]
            if _units(out) + _units(token) + _units(closers()) + len(name) + 3 > limit:
                yield out + closers()
                out = reopened()
            stack.append((name, token))
            out += token
            continue
        if token.startswith("&") and len(token) > 1:
            if _units(out) + _units(token) + _units(closers()) > limit:
                yield out + closers()
                out = reopened()
            out += token
            continue
        rest = token
        while rest:
            room = limit - _units(out) - _units(closers())
            head, rest = _take(rest, room)
            out += head
            if rest:
                if not head and out == reopened():
                    raise ValueError("open tags leave no room for text")
                yield out + closers()
                out = reopened()
    if out != reopened():
        yield out + closers()


def _take(text: str, room: int) -> tuple[str, str]:
    used = 0
    for i, char in enumerate(text):
        used += 2 if ord(char) > 0xFFFF else 1
        if used > room:
            return text[:i], text[i:]
    return text, ""


def keyboard(news: News | None) -> dict[str, Any] | None:
    """Buttons for news that asks a person: approve (or confirm a deploy), reject, and STOP."""
    if news is None or news.kind != NewsKind.WAITING or not news.checkpoint:
        return None
    key, checkpoint = news.task_key, news.checkpoint
    if not key or not news.wait:
        return None  # a button must name the one wait it answers
    question = talk.asked(checkpoint, news.wait)
    yes = "Confirm deploy" if checkpoint == "confirm-deploy" else "Approve"
    rows = [
        [
            (yes, talk.button_data(talk.Verb.APPROVE, key, question)),
            ("Reject", talk.button_data(talk.Verb.REJECT, key, question)),
        ],
        [("STOP", talk.button_data(talk.Verb.STOP, key))],
    ]
    buttons = [[{"text": t, "callback_data": d} for t, d in row if d] for row in rows]
    buttons = [row for row in buttons if row]
    return {"inline_keyboard": buttons} if buttons else None


# -- the transport that holds the token --------------------------------------------------------


class _BotPath(httpx.BaseTransport):
    """Puts `bot<TOKEN>` into each request's path, below the client, so nothing above sees it."""

    def __init__(self, inner: httpx.BaseTransport, token: str) -> None:
        self._inner = inner
        self._token = token

    def __repr__(self) -> str:
        return "_BotPath(token=<hidden>)"

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        head, _, method = request.url.path.rpartition("/")
        inner = httpx.Request(
            request.method,
            request.url.copy_with(path=f"{head}/bot{self._token}/{method}"),
            headers=request.headers,
            stream=request.stream,
            extensions=request.extensions,
        )
        return self._inner.handle_request(inner)

    def close(self) -> None:
        self._inner.close()


def _transport(api_url: str) -> httpx.HTTPTransport:
    """The network, through the proxy the environment names, as httpx's own client would."""
    url = urlsplit(api_url)
    proxy = getproxies().get(url.scheme)
    if proxy and not proxy_bypass(url.hostname or ""):
        return httpx.HTTPTransport(proxy=proxy)
    return httpx.HTTPTransport()


# -- sending -----------------------------------------------------------------------------------


class TelegramNotifier:
    def __init__(
        self,
        api_url: str,
        token: str,
        chats: Sequence[int | str],
        *,
        timeout_s: float = 10.0,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
        transport: httpx.BaseTransport | None = None,
        dashboard_url: str = "",
        max_wait_s: float = 120.0,
    ) -> None:
        self.chats = list(chats)
        self.dashboard_url = dashboard_url
        self.max_wait_s = max_wait_s
        self._sleep = sleep
        self._clock = clock
        self._secret = token

        self._client = httpx.Client(
            base_url=api_url.rstrip("/"),
            timeout=timeout_s,
            transport=_BotPath(transport or _transport(api_url), token),
        )
        self._guard = threading.Lock()
        self._queues: dict[str, threading.Lock] = {}  # one per chat: its sends in turn
        self._last: dict[str, float] = {}  # when each chat was last sent to
        self._moved: dict[str, int | str] = {}  # a chat's id -> the id it became

    def __repr__(self) -> str:
        return f"TelegramNotifier(chats={self.chats!r})"

    def close(self) -> None:
        self._client.close()

    @property
    def moved(self) -> dict[str, int | str]:
        """Chats that became others (a group upgraded to a supergroup): old id -> new id."""
        with self._guard:
            return dict(self._moved)

    def remember_move(self, old: int | str, new: int | str) -> None:
        with self._guard:
            self._moved[str(old)] = new

    def notify(self, key: str, text: str, news: News | None = None) -> None:
        parts = split(compose(key, text, news, self.dashboard_url)) or [escape(key)]
        markup = keyboard(news)
        failed: list[str] = []
        for chat in self.chats:
            try:
                for i, part in enumerate(parts):
                    self.send(chat, part, reply_markup=markup if i == len(parts) - 1 else None)
            except TelegramError as exc:
                failed.append(f"chat {chat}: {exc}")
        if failed:
            raise TelegramError("; ".join(failed))

    def send(
        self,
        chat: int | str,
        html: str,
        *,
        reply_markup: Mapping[str, Any] | None = None,
        reply_to: int | None = None,
    ) -> dict[str, Any]:
        """Send one message of HTML to `chat` in its turn; the Message Telegram made."""
        params: dict[str, Any] = {
            "text": html,
            "parse_mode": "HTML",
            "link_preview_options": {"is_disabled": True},
        }
        if reply_markup is not None:
            params["reply_markup"] = dict(reply_markup)
        if reply_to is not None:
            params["reply_parameters"] = {
                "message_id": reply_to,
                "allow_sending_without_reply": True,
            }
        waited = 0.0
        failures = hops = 0
        with self._queue(chat):
            while True:
                target = self._route(chat)
                self._pace(target)
                try:
                    result = self.call("sendMessage", {"chat_id": target, **params})
                except TelegramError as exc:
                    moved = exc.parameters.get("migrate_to_chat_id")
                    retry_after = exc.parameters.get("retry_after")
                    if isinstance(moved, int | str) and hops < 3:
                        log.info("telegram chat %s became %s; sending there", target, moved)
                        self.remember_move(target, moved)
                        hops += 1
                        continue
                    if exc.code == 429 and isinstance(retry_after, int | float):
                        wait = float(retry_after)
                        if waited + wait > self.max_wait_s:
                            raise TelegramError(
                                f"Telegram asks to wait {wait:g}s more for chat {target}, past "
                                f"the {self.max_wait_s:g}s a message may wait",
                                429,
                            ) from None
                        self._sleep(wait)
                        waited += wait
                        continue
                    if exc.passing and failures < 2 and waited + 2**failures <= self.max_wait_s:
                        self._sleep(2**failures)
                        waited += 2**failures
                        failures += 1
                        continue
                    raise
                return result if isinstance(result, dict) else {}

    def call(self, method: str, params: Mapping[str, Any], *, timeout: float | None = None) -> Any:
        """One Bot API call, once: its result, or a TelegramError without the token."""
        try:
            response = self._client.post(
                f"/{method}",
                json=dict(params),
                timeout=timeout if timeout is not None else httpx.USE_CLIENT_DEFAULT,
            )
        except httpx.HTTPError as exc:
            raise TelegramError(
                f"Telegram {method} failed: {type(exc).__name__}: {self._scrub(str(exc))}"
            ) from None
        try:
            body = response.json()
        except ValueError:
            body = None
        if not isinstance(body, dict):
            raise TelegramError(
                f"Telegram {method} answered {response.status_code} without JSON",
                response.status_code,
            )
        if body.get("ok") is True:
            return body.get("result")
        code = body.get("error_code")
        parameters = body.get("parameters")
        description = self._scrub(str(body.get("description") or f"error {response.status_code}"))
        raise TelegramError(
            f"Telegram {method}: {description}",
            code if isinstance(code, int) else response.status_code,
            parameters if isinstance(parameters, dict) else None,
        )

    def _scrub(self, text: str) -> str:
        return text.replace(self._secret, "<token>") if self._secret else text

    def _route(self, chat: int | str) -> int | str:
        with self._guard:
            seen: set[str] = set()
            while str(chat) in self._moved and str(chat) not in seen:
                seen.add(str(chat))
                chat = self._moved[str(chat)]
            return chat

    def _queue(self, chat: int | str) -> threading.Lock:
        with self._guard:
            return self._queues.setdefault(str(chat), threading.Lock())

    def _pace(self, target: int | str) -> None:
        last = self._last.get(str(target))
        if last is not None:
            wait = last + PACE_S - self._clock()
            if wait > 0:
                self._sleep(wait)
        self._last[str(target)] = self._clock()


# -- receiving -------------------------------------------------------------------------------


class TelegramBot:
    """Turns Telegram updates (polled, or posted to a webhook) into chat commands and answers
    them. Only `users` in `chats` may act; members of `chats` may read a task's status."""

    def __init__(
        self,
        notifier: TelegramNotifier,
        actions: talk.Actions,
        users: Sequence[int],
        chats: Sequence[int | str],
        *,
        webhook_secret: str = "",
    ) -> None:
        self.notifier = notifier
        self.chat = talk.Chat(actions, users, chats, lambda: notifier.moved.values())
        self.username = ""  # the bot's own, once getMe told it
        self._secret = webhook_secret
        self._offset: int | None = None

    def __repr__(self) -> str:
        return f"TelegramBot(chats={sorted(self.chat.chats)!r})"

    def check_secret(self, header_value: str | None) -> bool:
        """Whether a webhook request carries the secret (X-Telegram-Bot-Api-Secret-Token)."""
        if not self._secret or header_value is None:
            return False
        return hmac.compare_digest(header_value.encode(), self._secret.encode())

    def set_webhook(self, url: str) -> None:
        params: dict[str, Any] = {"url": url, "allowed_updates": ALLOWED_UPDATES}
        if self._secret:
            params["secret_token"] = self._secret
        self.notifier.call("setWebhook", params)

    def poll(self, stop: threading.Event, *, timeout_s: int = 8, backoff_s: float = 1.0) -> None:
        """Long-poll getUpdates and handle each update until `stop` is set, outliving errors.
        A poll is not interrupted: `timeout_s` bounds how long orch's shutdown waits for it."""
        try:
            me = self.notifier.call("getMe", {})
            self.username = str(me.get("username") or "") if isinstance(me, dict) else ""
        except TelegramError as exc:
            log.warning("telegram getMe failed: %s", exc)
        delay = backoff_s
        while not stop.is_set():
            try:
                self.poll_once(timeout_s)
            except TelegramError as exc:
                log.warning("telegram getUpdates failed (again in %gs): %s", delay, exc)
                stop.wait(delay)
                delay = min(delay * 2, 60.0)
                continue
            delay = backoff_s
        if self._offset is not None:
            # confirm what was handled, so a restart does not handle it again
            try:
                self.notifier.call("getUpdates", {"offset": self._offset, "timeout": 0})
            except TelegramError as exc:
                log.warning("telegram could not confirm updates: %s", exc)

    def poll_once(self, timeout_s: int = 0) -> int:
        """One getUpdates (confirming what came before): handle what it brings; how many."""
        params: dict[str, Any] = {"timeout": timeout_s, "allowed_updates": ALLOWED_UPDATES}
        if self._offset is not None:
            params["offset"] = self._offset
        updates = self.notifier.call("getUpdates", params, timeout=timeout_s + 10)
        handled = 0
        for update in updates if isinstance(updates, list) else []:
            if isinstance(update, dict) and isinstance(update.get("update_id"), int):
                self._offset = update["update_id"] + 1
                self.handle_update(update)
                handled += 1
        return handled

    def handle_update(self, update: Mapping[str, Any]) -> None:
        """Act on one update; failures are logged, never raised (Telegram would resend it)."""
        try:
            if isinstance(update.get("callback_query"), dict):
                self._on_button(update["callback_query"])
            elif isinstance(update.get("message"), dict):
                self._on_message(update["message"])
        except Exception:
            log.exception("telegram update %s failed", update.get("update_id"))

    def _on_message(self, message: Mapping[str, Any]) -> None:
        chat = _dict(message.get("chat"))
        sender = _dict(message.get("from"))
        moved = message.get("migrate_to_chat_id")
        if isinstance(moved, int) and self.chat.in_chat(_person(sender, chat)):
            self.notifier.remember_move(chat.get("id", ""), moved)
            return
        text = message.get("text")
        if not isinstance(text, str) or not sender or sender.get("is_bot"):
            return
        person = _person(sender, chat)
        replied = _dict(message.get("reply_to_message"))
        command = None
        if _dict(replied.get("from")).get("is_bot"):
            command = talk.parse_reason(str(replied.get("text") or ""), text)
        if command is None:
            if not self._addressed_to_me(text):
                return
            try:
                command = talk.parse_command(text)
            except talk.BadCommand as exc:
                allowed = self.chat.in_chat(person)
                reply = talk.Reply(str(exc) if allowed else f"{person.actor} is not allowed here")
                self._say(person.chat_id, reply, message.get("message_id"))
                return
            if command is None:
                return
        self._say(person.chat_id, self.chat.run(person, command), message.get("message_id"))

    def _on_button(self, query: Mapping[str, Any]) -> None:
        message = _dict(query.get("message"))
        person = _person(_dict(query.get("from")), _dict(message.get("chat")))
        reply = talk.Reply("this button could not be handled: nothing was recorded")
        try:
            reply = self.chat.run(person, talk.parse_button(str(query.get("data") or "")))
        except talk.BadCommand as exc:
            reply = talk.Reply(str(exc))
        finally:
            try:
                answer = {"callback_query_id": str(query.get("id")), "text": _clip(reply.text)}
                self.notifier.call("answerCallbackQuery", answer)
            except TelegramError as exc:
                log.warning("telegram could not answer a button: %s", exc)
        if reply.ask_reason or reply.recorded:
            self._say(person.chat_id, reply, message.get("message_id"))

    def _say(self, chat_id: int | str, reply: talk.Reply, reply_to: Any) -> None:
        to = reply_to if isinstance(reply_to, int) else None
        if reply.ask_reason is not None:
            question = talk.reason_question(*reply.ask_reason)
            markup = {"force_reply": True, "input_field_placeholder": "the reason"}
            self.notifier.send(chat_id, escape(question), reply_markup=markup, reply_to=to)
            return
        for part in split([escape(line) for line in reply.text.splitlines()]):
            self.notifier.send(chat_id, part, reply_to=to)

    def _addressed_to_me(self, text: str) -> bool:
        """`/cmd@other_bot` is another bot's command in a group."""
        head = text.strip().split(" ", 1)[0]
        if "@" not in head or not self.username:
            return True
        return head.split("@", 1)[1].lower() == self.username.lower()


def _person(sender: Mapping[str, Any], chat: Mapping[str, Any]) -> talk.Person:
    user_id = sender.get("id")
    name = sender.get("username") or sender.get("first_name") or str(user_id)
    return talk.Person(
        user_id if isinstance(user_id, int) else 0,
        str(name),
        chat.get("id", 0) if isinstance(chat.get("id"), int | str) else 0,
        str(chat.get("username") or ""),
    )


def _dict(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, dict) else {}


def _clip(text: str, chars: int = ANSWER_CHARS) -> str:
    return text if len(text) <= chars else text[: chars - 1] + "…"
