"""A fake Telegram Bot API that checks each call as Telegram would.

It serves `/bot<token>/<method>` for sendMessage, getUpdates (long polling, `offset` confirming
what came before it), answerCallbackQuery, setWebhook, deleteWebhook and getMe. Every call's
fields are checked against a table of the Bot API's parameters (names, types, required), and
sendMessage's text is parsed as Telegram parses it: HTML must be well formed with Telegram's
tags only, and 1-4096 characters must remain. A call that breaks the rules is recorded in
`violations` and answered `{"ok": false, "error_code": 400, "description": "Bad Request: ..."}`.
A field Telegram does not know is recorded, and ignored as Telegram ignores it.

Test knobs: `add_chat`, `messages(chat)`, `html(chat)`, `say(...)` and `press(...)` (queue the
updates a person makes), `flood(chat, retry_after)`, `migrate(chat, new_id)`, `answers`.
"""

from __future__ import annotations

import itertools
import json
import re
import threading
import time
from collections.abc import Mapping
from typing import Any

from orch.fakes.server import FakeServer, Request, Response, json_response

BOT = {"id": 7000001, "is_bot": True, "first_name": "orch", "username": "orch_test_bot"}

INT, STR, BOOL, CHAT, OBJ, ARRAY = (
    "Integer",
    "String",
    "Boolean",
    "Integer or String",
    "Object",
    "Array",
)
_TYPES: dict[str, Any] = {
    STR: lambda v: isinstance(v, str),
    INT: lambda v: isinstance(v, int) and not isinstance(v, bool),
    BOOL: lambda v: isinstance(v, bool),
    CHAT: lambda v: isinstance(v, str) or (isinstance(v, int) and not isinstance(v, bool)),
    OBJ: lambda v: isinstance(v, dict),
    ARRAY: lambda v: isinstance(v, list),
}

# the Bot API's parameters, as core.telegram.org/bots/api lists them: name -> (type, required)
PARAMS: dict[str, dict[str, tuple[str, bool]]] = {
    "getMe": {},
    "sendMessage": {
        "business_connection_id": (STR, False),
        "chat_id": (CHAT, True),
        "message_thread_id": (INT, False),
        "direct_messages_topic_id": (INT, False),
        "text": (STR, True),
        "parse_mode": (STR, False),
        "entities": (ARRAY, False),
        "link_preview_options": (OBJ, False),
        "disable_notification": (BOOL, False),
        "protect_content": (BOOL, False),
        "allow_paid_broadcast": (BOOL, False),
        "message_effect_id": (STR, False),
        "suggested_post_parameters": (OBJ, False),
        "reply_parameters": (OBJ, False),
        "reply_markup": (OBJ, False),
    },
    "getUpdates": {
        "offset": (INT, False),
        "limit": (INT, False),
        "timeout": (INT, False),
        "allowed_updates": (ARRAY, False),
    },
    "answerCallbackQuery": {
        "callback_query_id": (STR, True),
        "text": (STR, False),
        "show_alert": (BOOL, False),
        "url": (STR, False),
        "cache_time": (INT, False),
    },
    "setWebhook": {
        "url": (STR, True),
        "certificate": (OBJ, False),
        "ip_address": (STR, False),
        "max_connections": (INT, False),
        "allowed_updates": (ARRAY, False),
        "drop_pending_updates": (BOOL, False),
        "secret_token": (STR, False),
    },
    "deleteWebhook": {"drop_pending_updates": (BOOL, False)},
}
LINK_PREVIEW = {
    "is_disabled": BOOL,
    "url": STR,
    "prefer_small_media": BOOL,
    "prefer_large_media": BOOL,
    "show_above_text": BOOL,
}
REPLY_PARAMETERS = {
    "message_id": INT,
    "chat_id": CHAT,
    "allow_sending_without_reply": BOOL,
    "quote": STR,
    "quote_parse_mode": STR,
    "quote_entities": ARRAY,
    "quote_position": INT,
    "checklist_task_id": INT,
}
FORCE_REPLY = {"force_reply": BOOL, "input_field_placeholder": STR, "selective": BOOL}
# an InlineKeyboardButton has its text and exactly one of these
BUTTON_KINDS = (
    "url",
    "callback_data",
    "web_app",
    "login_url",
    "switch_inline_query",
    "switch_inline_query_current_chat",
    "switch_inline_query_chosen_chat",
    "copy_text",
    "callback_game",
    "pay",
)
_UPDATE_NAMES = (
    "message edited_message channel_post edited_channel_post business_connection "
    "business_message edited_business_message deleted_business_messages message_reaction "
    "message_reaction_count inline_query chosen_inline_result callback_query shipping_query "
    "pre_checkout_query purchased_paid_media poll poll_answer my_chat_member chat_member "
    "chat_join_request chat_boost removed_chat_boost"
)
UPDATE_TYPES = frozenset(_UPDATE_NAMES.split())
PARSE_MODES = frozenset({"HTML", "MarkdownV2", "Markdown"})
# Telegram's HTML tags and the attributes each may carry
_PLAIN_TAGS = "b strong i em u ins s strike del tg-spoiler pre"
TAGS: dict[str, frozenset[str]] = {
    **{t: frozenset() for t in _PLAIN_TAGS.split()},
    "span": frozenset({"class"}),
    "a": frozenset({"href"}),
    "tg-emoji": frozenset({"emoji-id"}),
    "code": frozenset({"class"}),
    "blockquote": frozenset({"expandable"}),
}
_TAG = re.compile(
    r"<(/?)([A-Za-z][A-Za-z0-9-]*)((?:\s+[A-Za-z-]+(?:=(?:\"[^\"]*\"|'[^']*'))?)*)\s*>"
)
_ATTR = re.compile(r"([A-Za-z-]+)(?:=(\"[^\"]*\"|'[^']*'))?")
_ENTITY = re.compile(r"&(lt|gt|amp|quot|#[0-9]{1,7}|#x[0-9A-Fa-f]{1,6});")
_NAMED = {"lt": "<", "gt": ">", "amp": "&", "quot": '"'}
_PATH = re.compile(r"^/bot([^/]+)/([A-Za-z]+)$")


class BadRequest(Exception):
    """What Telegram answers 400 with; `violation` when the client broke the API's rules."""

    def __init__(self, description: str, violation: bool = True) -> None:
        super().__init__(description)
        self.description = description
        self.violation = violation


def user(user_id: int, first_name: str, username: str | None = None) -> dict[str, Any]:
    """A Telegram User as updates carry it."""
    found: dict[str, Any] = {"id": user_id, "is_bot": False, "first_name": first_name}
    if username:
        found["username"] = username
    return found


def parse_html(text: str) -> str:
    """The text Telegram shows for `text` in HTML mode; BadRequest where Telegram refuses it."""
    out: list[str] = []
    stack: list[str] = []
    i = 0

    def refuse(why: str) -> BadRequest:
        at = len(text[:i].encode())
        return BadRequest(f"Bad Request: can't parse entities: {why} at byte offset {at}")

    while i < len(text):
        char = text[i]
        if char == "<":
            tag = _TAG.match(text, i)
            if tag is None:
                raise refuse("Unexpected character '<'")
            closing, name = tag[1], tag[2].lower()
            if name not in TAGS:
                raise refuse(f'Unsupported {"end" if closing else "start"} tag "{name}"')
            if closing:
                if not stack or stack[-1] != name:
                    raise refuse(f'Unmatched end tag "{name}"')
                stack.pop()
            else:
                attrs = dict(_ATTR.findall(tag[3]))
                unknown = set(attrs) - TAGS[name]
                if unknown:
                    raise refuse(f'Unsupported attribute "{sorted(unknown)[0]}" of tag "{name}"')
                if name == "a" and not attrs.get("href", "").strip("\"'"):
                    raise refuse('Tag "a" must have attribute "href"')
                if name == "span" and attrs.get("class", "").strip("\"'") != "tg-spoiler":
                    raise refuse('Tag "span" must have class "tg-spoiler"')
                stack.append(name)
            i = tag.end()
            continue
        if char == "&":
            entity = _ENTITY.match(text, i)
            if entity is None:
                raise refuse("Character '&' is not part of an HTML entity")
            name = entity[1]
            if name in _NAMED:
                out.append(_NAMED[name])
            else:
                code = int(name[2:], 16) if name.startswith("#x") else int(name[1:])
                out.append(chr(code) if 0 < code <= 0x10FFFF else "\ufffd")
            i = entity.end()
            continue
        if char == ">":
            raise refuse("Character '>' is reserved and must be escaped")
        out.append(char)
        i += 1
    if stack:
        raise refuse(f'Can\'t find end tag corresponding to start tag "{stack[-1]}"')
    return "".join(out)


def units(text: str) -> int:
    return len(text.encode("utf-16-le")) // 2


class TelegramFake(FakeServer):
    def __init__(self, token: str) -> None:
        super().__init__()
        self.token = token
        self.answers: list[dict[str, Any]] = []  # answerCallbackQuery's parameters, in order
        self.calls: list[tuple[str, dict[str, Any]]] = []  # every call the token opened
        self.webhook: dict[str, Any] | None = None
        self._cond = threading.Condition()
        self._closing = False
        self._chats: dict[int, dict[str, Any]] = {}
        self._sent: dict[int, list[tuple[dict[str, Any], str]]] = {}  # (Message, its HTML)
        self._all: dict[tuple[int, int], dict[str, Any]] = {}  # every message, by chat and id
        self._updates: list[dict[str, Any]] = []
        self._update_ids = itertools.count(1)
        self._message_ids = itertools.count(1)
        self._query_ids = itertools.count(1)
        self._open_queries: set[str] = set()
        self._floods: dict[int, int] = {}
        self._moved: dict[int, int] = {}

    def stop(self) -> None:
        with self._cond:
            self._closing = True
            self._cond.notify_all()
        super().stop()

    # -- knobs -------------------------------------------------------------------------------

    def add_chat(self, chat_id: int, *, username: str = "", kind: str = "") -> dict[str, Any]:
        """A chat the bot is a member of."""
        with self._cond:
            kind = kind or ("private" if chat_id > 0 else "supergroup")
            chat: dict[str, Any] = {"id": chat_id, "type": kind}
            if kind != "private":
                chat["title"] = f"chat {chat_id}"
            if username:
                chat["username"] = username
            self._chats.setdefault(chat_id, chat)
            return self._chats[chat_id]

    def messages(self, chat: int | str) -> list[dict[str, Any]]:
        """The Messages the bot sent to `chat`, in order."""
        with self._cond:
            return [m for m, _ in self._sent.get(self._resolve(chat) or 0, [])]

    def html(self, chat: int | str) -> list[str]:
        """The HTML texts of the bot's messages to `chat`, as they were sent."""
        with self._cond:
            return [h for _, h in self._sent.get(self._resolve(chat) or 0, [])]

    def say(
        self,
        chat_id: int,
        sender: Mapping[str, Any],
        text: str,
        reply_to: Mapping[str, Any] | None = None,
    ) -> dict[str, Any]:
        """A person writes `text` in `chat_id` (replying to `reply_to`): queues the update."""
        chat = self.add_chat(chat_id)
        message: dict[str, Any] = {
            "message_id": next(self._message_ids),
            "date": int(time.time()),
            "chat": chat,
            "from": dict(sender),
            "text": text,
        }
        if text.startswith("/"):
            length = len(text.split(" ", 1)[0])
            message["entities"] = [{"type": "bot_command", "offset": 0, "length": length}]
        if reply_to is not None:
            message["reply_to_message"] = dict(reply_to)
        with self._cond:
            self._all[chat_id, message["message_id"]] = message
        self._queue({"message": message})
        return message

    def press(
        self, message: Mapping[str, Any], button_text: str, sender: Mapping[str, Any]
    ) -> dict[str, Any]:
        """A person presses the button `button_text` of `message`: queues the callback query."""
        rows = message.get("reply_markup", {}).get("inline_keyboard", [])
        data = next(
            (b["callback_data"] for row in rows for b in row if b["text"] == button_text), None
        )
        if data is None:
            raise AssertionError(
                f"no button {button_text!r} on message {message.get('message_id')}"
            )
        query_id = f"q{next(self._query_ids)}"
        with self._cond:
            self._open_queries.add(query_id)
        query = {
            "id": query_id,
            "from": dict(sender),
            "message": dict(message),
            "chat_instance": f"ci{message['chat']['id']}",
            "data": data,
        }
        self._queue({"callback_query": query})
        return query

    def flood(self, chat_id: int | str, retry_after: int) -> None:
        """The next message to `chat_id` is answered 429 with `retry_after`."""
        with self._cond:
            self._floods[self._resolve(chat_id) or 0] = retry_after

    def migrate(self, chat_id: int, new_id: int) -> None:
        """The group `chat_id` became the supergroup `new_id`: sends to it are refused with
        `migrate_to_chat_id` from now on."""
        self.add_chat(new_id, kind="supergroup")
        with self._cond:
            self._moved[chat_id] = new_id

    @property
    def unconfirmed(self) -> list[dict[str, Any]]:
        """Updates getUpdates has not been told (by a later offset) were handled."""
        with self._cond:
            return list(self._updates)

    # -- serving -----------------------------------------------------------------------------

    def handle(self, request: Request) -> Response:
        path = _PATH.match(request.path)
        if path is None:
            return _error(404, "Not Found")
        if path[1] != self.token:
            return _error(401, "Unauthorized")
        method = path[2]
        if method not in PARAMS:
            return _error(404, "Not Found: method not found")
        try:
            params = self._params(request)
            with self._cond:
                self.calls.append((method, params))
            self._check(method, params)
            result = getattr(self, f"_do_{method}")(params)
        except BadRequest as exc:
            if exc.violation:
                self.violate(f"{method}: {exc.description}")
            return _error(400, exc.description)
        except _Answer as answer:
            return answer.response
        return json_response(200, {"ok": True, "result": result})

    def _params(self, request: Request) -> dict[str, Any]:
        params: dict[str, Any] = {k: v[0] for k, v in request.query.items()}
        if request.body:
            if "json" not in request.headers.get("content-type", ""):
                raise BadRequest("Bad Request: this fake takes JSON bodies only")
            try:
                body = json.loads(request.body)
            except ValueError as exc:
                raise BadRequest(f"Bad Request: invalid JSON: {exc}") from None
            if not isinstance(body, dict):
                raise BadRequest("Bad Request: the body must be a JSON object")
            params.update(body)
        return params

    def _check(self, method: str, params: Mapping[str, Any]) -> None:
        table = PARAMS[method]
        for name in params:
            if name not in table:
                self.violate(f"{method}: unknown parameter {name!r} (Telegram ignores it)")
        for name, (kind, required) in table.items():
            if name not in params:
                if required:
                    raise BadRequest(f"Bad Request: {name} is empty")
                continue
            if not _TYPES[kind](params[name]):
                raise BadRequest(f'Bad Request: field "{name}" must be of type {kind}')

    # -- methods -----------------------------------------------------------------------------

    def _do_getMe(self, params: Mapping[str, Any]) -> dict[str, Any]:
        return dict(BOT)

    def _do_sendMessage(self, params: Mapping[str, Any]) -> dict[str, Any]:
        mode = params.get("parse_mode")
        if mode is not None and mode not in PARSE_MODES:
            raise BadRequest(f"Bad Request: unsupported parse_mode {mode!r}")
        text = parse_html(params["text"]) if mode == "HTML" else params["text"]
        if not text.strip():
            raise BadRequest("Bad Request: message text is empty")
        if units(text) > 4096:
            raise BadRequest("Bad Request: message is too long")
        _check_object("link_preview_options", params.get("link_preview_options"), LINK_PREVIEW)
        markup = params.get("reply_markup")
        if markup is not None:
            _check_markup(markup)
        reply = params.get("reply_parameters")
        if reply is not None:
            _check_object("reply_parameters", reply, REPLY_PARAMETERS)
            if "message_id" not in reply:
                raise BadRequest("Bad Request: reply_parameters.message_id is empty")
        with self._cond:
            chat_id = self._resolve(params["chat_id"])
            if chat_id is None:
                raise BadRequest("Bad Request: chat not found", violation=False)
            if chat_id in self._moved:
                raise _Answer(
                    _error(
                        400,
                        "Bad Request: group chat was upgraded to a supergroup chat",
                        {"migrate_to_chat_id": self._moved[chat_id]},
                    )
                )
            if chat_id in self._floods:
                wait = self._floods.pop(chat_id)
                raise _Answer(
                    _error(429, f"Too Many Requests: retry after {wait}", {"retry_after": wait})
                )
            message: dict[str, Any] = {
                "message_id": next(self._message_ids),
                "date": int(time.time()),
                "chat": self._chats[chat_id],
                "from": dict(BOT),
                "text": text,
            }
            if reply is not None:
                replied = self._all.get((chat_id, reply["message_id"]))
                if replied is None and not reply.get("allow_sending_without_reply"):
                    raise BadRequest("Bad Request: message to be replied not found", False)
                if replied is not None:
                    message["reply_to_message"] = replied
            if markup is not None and "inline_keyboard" in markup:
                message["reply_markup"] = markup
            self._sent.setdefault(chat_id, []).append((message, params["text"]))
            self._all[chat_id, message["message_id"]] = message
            return message

    def _do_getUpdates(self, params: Mapping[str, Any]) -> list[dict[str, Any]]:
        if self.webhook is not None:
            raise _Answer(
                _error(
                    409,
                    "Conflict: can't use getUpdates method while webhook is active; use "
                    "deleteWebhook to delete the webhook first",
                )
            )
        limit = params.get("limit", 100)
        timeout = params.get("timeout", 0)
        if not 1 <= limit <= 100 or timeout < 0:
            raise BadRequest("Bad Request: limit must be 1-100 and timeout non-negative")
        wanted = params.get("allowed_updates")
        if wanted is not None and not set(wanted) <= UPDATE_TYPES:
            raise BadRequest(f"Bad Request: unknown update types in {wanted!r}")
        offset = params.get("offset")
        deadline = time.monotonic() + timeout
        with self._cond:
            if offset is not None:  # everything before it is confirmed
                self._updates = [u for u in self._updates if u["update_id"] >= offset]
            while not self._updates and not self._closing:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._cond.wait(left)
            kinds = set(wanted or ()) or UPDATE_TYPES - {"message_reaction", "chat_member"}
            return [u for u in self._updates if kinds & set(u)][:limit]

    def _do_answerCallbackQuery(self, params: Mapping[str, Any]) -> bool:
        if len(params.get("text", "")) > 200:
            raise BadRequest("Bad Request: answer text is longer than 200 characters")
        with self._cond:
            if params["callback_query_id"] not in self._open_queries:
                raise BadRequest(
                    "Bad Request: query is too old and response timeout expired or query ID is "
                    "invalid"
                )
            self._open_queries.discard(params["callback_query_id"])
            self.answers.append(dict(params))
        return True

    def _do_setWebhook(self, params: Mapping[str, Any]) -> bool:
        if not params["url"].startswith("https://"):
            raise BadRequest("Bad Request: bad webhook: An HTTPS URL must be provided for webhook")
        secret = params.get("secret_token")
        if secret is not None and not re.fullmatch(r"[A-Za-z0-9_-]{1,256}", secret):
            raise BadRequest("Bad Request: bad webhook: secret token contains bad characters")
        with self._cond:
            self.webhook = dict(params)
        return True

    def _do_deleteWebhook(self, params: Mapping[str, Any]) -> bool:
        with self._cond:
            self.webhook = None
            if params.get("drop_pending_updates"):
                self._updates.clear()
        return True

    # -- helpers -----------------------------------------------------------------------------

    def _queue(self, update: dict[str, Any]) -> None:
        with self._cond:
            update = {"update_id": next(self._update_ids), **update}
            self._updates.append(update)
            self._cond.notify_all()

    def _resolve(self, chat: int | str) -> int | None:
        if isinstance(chat, int):
            return chat if chat in self._chats else None
        if chat.startswith("@"):
            name = chat[1:].lower()
            found = (c for c, v in self._chats.items() if v.get("username", "").lower() == name)
            return next(found, None)
        try:
            return self._resolve(int(chat))
        except ValueError:
            return None


class _Answer(Exception):
    """An answer that is not an error of the client's (flood control, a moved chat)."""

    def __init__(self, response: Response) -> None:
        super().__init__(response.status)
        self.response = response


def _error(code: int, description: str, parameters: Mapping[str, Any] | None = None) -> Response:
    body: dict[str, Any] = {"ok": False, "error_code": code, "description": description}
    if parameters:
        body["parameters"] = dict(parameters)
    return json_response(code, body)


def _check_object(name: str, value: Any, fields: Mapping[str, str]) -> None:
    if value is None:
        return
    for key, item in value.items():
        kind = fields.get(key)
        if kind is None:
            raise BadRequest(f"Bad Request: {name} has no field {key!r}")
        if not _TYPES[kind](item):
            raise BadRequest(f'Bad Request: field "{name}.{key}" must be of type {kind}')


def _check_markup(markup: Mapping[str, Any]) -> None:
    if "inline_keyboard" in markup:
        rows = markup["inline_keyboard"]
        if set(markup) != {"inline_keyboard"} or not isinstance(rows, list):
            raise BadRequest("Bad Request: can't parse inline keyboard markup")
        for row in rows:
            if not isinstance(row, list):
                raise BadRequest("Bad Request: inline keyboard rows must be arrays")
            for button in row:
                _check_button(button)
        return
    if "force_reply" in markup:
        _check_object("reply_markup", markup, FORCE_REPLY)
        if markup["force_reply"] is not True:
            raise BadRequest("Bad Request: force_reply must be True")
        placeholder = markup.get("input_field_placeholder")
        if placeholder is not None and not 1 <= len(placeholder) <= 64:
            raise BadRequest("Bad Request: input_field_placeholder must be 1-64 characters")
        return
    raise BadRequest("Bad Request: unsupported reply_markup (this fake knows inline and force)")


def _check_button(button: Any) -> None:
    if (
        not isinstance(button, dict)
        or not isinstance(button.get("text"), str)
        or not button["text"]
    ):
        raise BadRequest("Bad Request: BUTTON_TEXT_EMPTY")
    kinds = [k for k in BUTTON_KINDS if k in button]
    if len(kinds) != 1 or set(button) - {"text", *BUTTON_KINDS}:
        raise BadRequest(f"Bad Request: a button needs a text and one action: {sorted(button)}")
    data = button.get("callback_data")
    if "callback_data" in button and (
        not isinstance(data, str) or not 1 <= len(data.encode()) <= 64
    ):
        raise BadRequest("Bad Request: BUTTON_DATA_INVALID")
