"""ESPI query parameters: what is accepted, and that everything else is a 400 naming the parameter."""
import calendar

import pytest
from hypothesis import given, strategies as st

from openseg.lan_server.espi import query as espi_query
from openseg.lan_server.espi.query import Query, QueryError, parse


def test_no_parameters_means_current_value():
    q = parse({})
    assert q == Query() and not q.history
    with pytest.raises(QueryError):
        parse({"download": "1"})                      # the HTTP layer's switch, taken off before parsing


def test_all_parameters():
    q = parse({"published-min": "2024-05-01T00:00:00Z", "published-max": "2024-05-01T01:00:00Z",
               "updated-min": "2024-05-01T00:10:00Z", "updated-max": "2024-05-02T00:00:00Z",
               "max-results": "10", "start-index": "3"})
    base = calendar.timegm((2024, 5, 1, 0, 0, 0))
    assert (q.published_min, q.published_max) == (base, base + 3600)
    w = q.window            # published: data time; updated: when the gateway had it
    assert (w.since, w.until, w.available_since, w.available_until) == (base, base + 3600, base + 600,
                                                                        base + 86400)
    assert (q.max_results, q.start_index, q.history, q.continued) == (10, 3, True, False)
    assert w.holds(base, base + 600) and not w.holds(base, base + 599) and not w.holds(base + 3600, base + 3600)
    assert not w.holds(base - 1, base + 600)
    # A next link's position narrows the data window from below and marks a later page.
    later = parse({"published-min": "2024-05-01T00:00:00Z", "resume-at": "2024-05-01T00:30:00Z"})
    assert (later.window.since, later.continued) == (base + 1800, True)
    assert q.page(list(range(20))) == list(range(2, 12))


@pytest.mark.parametrize("params, name", [
    ({"published-min": "2024-05-01T00:00:00"}, "published-min"),          # no Z
    ({"published-min": "2024-05-01 00:00:00Z"}, "published-min"),
    ({"published-max": "2024-05-01T00:00:00+00:00"}, "published-max"),
    ({"updated-min": "2024-02-30T00:00:00Z"}, "updated-min"),            # no such day
    ({"updated-max": "2024-05-01T24:00:00Z"}, "updated-max"),
    ({"updated-max": "1714521600"}, "updated-max"),                      # epoch seconds are not ESPI
    ({"updated-min": "２０２４-05-01T00:00:00Z"}, "updated-min"),          # non-ASCII digits
    ({"max-results": "0"}, "max-results"),
    ({"max-results": "-1"}, "max-results"),
    ({"max-results": "ten"}, "max-results"),
    ({"max-results": "1" * 5000}, "max-results"),
    ({"start-index": "0"}, "start-index"),
    ({"start-index": " 1"}, "start-index"),
    ({"published-min": "2024-05-02T00:00:00Z", "published-max": "2024-05-01T00:00:00Z"}, "published-max"),
    ({"updated-min": "2024-05-02T00:00:00Z", "updated-max": "2024-05-01T00:00:00Z"}, "updated-max"),
    ({"published_min": "2024-05-01T00:00:00Z"}, "published_min"),        # a typo is not ignored
    ({"depth": "1"}, "depth"),
    ({"max-results": ["1", "2"]}, "max-results"),                        # repeated by the framework
])
def test_bad_parameters_name_themselves(params, name):
    with pytest.raises(QueryError) as info:
        parse(params)
    assert info.value.param == name
    assert repr(name[:40]) in str(info.value)


TEXT = st.text(max_size=40)
KEYS = st.one_of(st.sampled_from(espi_query.KNOWN), TEXT)
VALUES = st.one_of(TEXT, st.from_regex(r"\A[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}Z\Z"),
                   st.integers(-5, 10 ** 12).map(str), st.lists(TEXT, max_size=2), st.none())


@given(st.dictionaries(KEYS, VALUES, max_size=6))
def test_parsing_never_fails_any_other_way(params):
    try:
        q = parse(params)
    except QueryError as exc:
        assert exc.param in params
    else:
        assert set(params) <= set(espi_query.KNOWN)
        assert q.start_index >= 1 and (q.max_results is None or q.max_results >= 1)
