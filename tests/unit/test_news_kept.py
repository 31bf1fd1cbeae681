"""News kept as JSON with a write-back that failed reads back as the same news, to be said
again."""

from __future__ import annotations

import json

from hypothesis import given
from hypothesis import strategies as st

from orch.domain.news import News, NewsKind, Verdict

text = st.text(max_size=40)
money = st.floats(min_value=0, max_value=1e6, allow_nan=False, allow_infinity=False)
news = st.builds(
    News,
    kind=st.sampled_from(NewsKind),
    text=text,
    task_key=text,
    title=text,
    repo=text,
    stage=text,
    from_stage=text,
    status=text,
    checkpoint=text,
    question=text,
    wait=text,
    reason=text,
    cost_usd=money,
    stage_cost_usd=money,
    verdicts=st.lists(st.builds(Verdict, text, st.booleans(), text), max_size=4).map(tuple),
    links=st.lists(st.tuples(text, text), max_size=4).map(tuple),
)


@given(news)
def test_news_kept_as_json_reads_back_as_the_same_news(said: News) -> None:
    kept = json.loads(json.dumps(said.as_dict()))
    assert News.from_dict(kept) == said


def test_news_kept_before_a_field_was_added_or_after_one_was_dropped_still_reads() -> None:
    kept = {"kind": "waiting", "text": "APP-1 waits", "task_key": "APP-1", "gone": 1}
    assert News.from_dict(kept) == News(NewsKind.WAITING, "APP-1 waits", task_key="APP-1")
