"""Task validation: hostile task data is refused with the field named."""

from __future__ import annotations

import json
import math
from decimal import Decimal
from types import MappingProxyType
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ledger.errors import ValidationError
from ledger.tasks import (
    DEFAULT_COLLECTIONS,
    EVENT_RECORD_COLLECTIONS,
    MAX_DELAY_SECONDS,
    MAX_DEPTH,
    MAX_TASK_BYTES,
    READ_MODEL_COLLECTIONS,
    WORKER_COLLECTIONS,
    DbTask,
    PayloadTooLarge,
    Priority,
    _Budget,
    _walk,
    allowed_collections,
    check_db_task,
    check_task,
    check_task_data,
    is_event_id,
    task_size,
)
from tests import strategies as s


def refused(data: object) -> str | None:
    with pytest.raises(ValidationError) as info:
        check_task_data(data)
    return info.value.field


def task(**overrides: object) -> dict[str, Any]:
    args: dict[str, Any] = {
        "queue_name": "default",
        "task_type": "credit_purchase",
        "data": {"user_id": "u"},
        "priority": 2,
        "delay": 0,
    }
    args.update(overrides)
    return args


def task_field(**overrides: object) -> str | None:
    with pytest.raises(ValidationError) as info:
        check_task(**task(**overrides))
    return info.value.field


# --- task data ----------------------------------------------------------------------


@s.QUICK
@given(data=s.json_objects())
def test_json_like_data_is_accepted_unchanged(data: dict[str, object]) -> None:
    assert check_task_data(data) is data
    assert task_size(data) == len(
        json.dumps(data, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    )


@s.QUICK
@given(case=s.hostile_at_depth(st.tuples(s.dollar_keys(), s.json_values(max_leaves=3))))
def test_dollar_keys_are_refused_at_any_depth(case: tuple[dict[str, Any], str]) -> None:
    data, path = case
    assert refused(data) == path


@s.QUICK
@given(
    case=s.hostile_at_depth(
        st.tuples(
            st.text(max_size=5)
            .map(lambda k: k + "\x00" + k)
            .filter(lambda k: not k.startswith("$")),
            st.just(1),
        )
    )
)
def test_nul_in_keys_is_refused(case: tuple[dict[str, Any], str]) -> None:
    data, path = case
    assert refused(data) == path


@s.QUICK
@given(
    case=s.hostile_at_depth(
        st.tuples(
            st.just("v"),
            st.one_of(
                st.sampled_from(
                    [
                        math.nan,
                        math.inf,
                        -math.inf,
                        2**63,
                        -(2**63) - 1,
                        10**40,
                        b"bytes",
                        {1, 2},
                        (1, 2),
                        Decimal("1.5"),
                        object(),
                    ]
                ),
                s.lone_surrogates(),
            ),
        )
    )
)
def test_non_json_values_are_refused_at_any_depth(case: tuple[dict[str, Any], str]) -> None:
    data, path = case
    assert refused(data) == path


def test_int64_edges_are_accepted() -> None:
    assert check_task_data({"a": [2**63 - 1, -(2**63)]})


def test_non_string_keys_are_refused() -> None:
    assert refused({"a": {1: "x"}}) == "task_data.a"
    assert refused({None: 1}) == "task_data"


@pytest.mark.parametrize("data", [[], "x", None, 5, MappingProxyType({"a": 1})])
def test_data_must_be_a_dict(data: object) -> None:
    assert refused(data) == "task_data"


def test_list_items_are_named_by_index() -> None:
    assert refused({"items": [1, {"ok": 1}, {"$gt": 0}]}) == "task_data.items[2].$gt"


def test_depth_limit_is_exact() -> None:
    assert check_task_data(s.nest(MAX_DEPTH))
    with pytest.raises(ValidationError):
        check_task_data(s.nest(MAX_DEPTH + 1))
    lists: Any = 1
    for _ in range(MAX_DEPTH - 1):
        lists = [lists]
    assert check_task_data({"l": lists})
    with pytest.raises(ValidationError):
        check_task_data({"l": [lists]})


@s.QUICK
@given(data=s.json_objects())
def test_the_walk_bounds_the_json_size_from_both_sides(data: dict[str, object]) -> None:
    """check_task_data skips the exact measure when the upper bound fits: it must hold."""
    budget = _Budget("task_data")
    _walk(data, "task_data", 1, budget)
    assert budget.used <= task_size(data) <= budget.most


def test_long_numbers_over_the_limit_are_refused() -> None:
    """Numbers count 1 byte in the running bound; the exact measure still catches them."""
    data = {"n": [2**62] * (MAX_TASK_BYTES // 18)}
    assert task_size(data) > MAX_TASK_BYTES
    with pytest.raises(PayloadTooLarge):
        check_task_data(data)


def test_very_deep_nesting_is_refused_without_recursion_error() -> None:
    with pytest.raises(ValidationError):
        check_task_data(s.nest(100_000))


def padded(size: int, char: str = "x") -> dict[str, str]:
    """A dict whose compact JSON is exactly ``size`` bytes ("x" is 1 byte, "é" 2)."""
    overhead = task_size({"s": ""})
    width = len(char.encode("utf-8"))
    body = char * ((size - overhead) // width) + "x" * ((size - overhead) % width)
    data = {"s": body}
    assert task_size(data) == size
    return data


@pytest.mark.parametrize("char", ["x", "é", "€", "😀"])
def test_size_limit_is_exact_in_utf8_bytes(char: str) -> None:
    assert check_task_data(padded(MAX_TASK_BYTES, char))
    with pytest.raises(PayloadTooLarge) as info:
        check_task_data(padded(MAX_TASK_BYTES + 1, char))
    assert info.value.field == "task_data"


def test_escaped_characters_count_as_their_json_bytes() -> None:
    """A newline is one character but two bytes of JSON (``\\n``)."""
    half = MAX_TASK_BYTES // 2
    assert check_task_data({"s": "\n" * (half - 10)})
    with pytest.raises(PayloadTooLarge):
        check_task_data({"s": "\n" * half})


def test_many_small_values_count_towards_the_size() -> None:
    with pytest.raises(PayloadTooLarge):
        check_task_data({"n": [0] * (MAX_TASK_BYTES // 2)})


def test_huge_payload_is_refused_quickly_by_the_running_bound() -> None:
    with pytest.raises(PayloadTooLarge):
        check_task_data({"n": ["x" * 1000] * 1_000_000})


# --- enqueue inputs -----------------------------------------------------------------


def test_valid_task_is_checked_into_a_tuple() -> None:
    checked = check_task(**task(priority=Priority.HIGH, delay=1.5))
    assert checked.priority is Priority.HIGH
    assert checked.delay_ms == 1500
    queue_name, task_type, data, priority, delay_ms = checked
    assert (queue_name, task_type, data, priority, delay_ms) == (
        "default",
        "credit_purchase",
        {"user_id": "u"},
        Priority.HIGH,
        1500,
    )


@pytest.mark.parametrize("value", [1, 2, 3, 4, *Priority])
def test_priorities_accepted(value: int) -> None:
    assert check_task(**task(priority=value)).priority == Priority(value)


@pytest.mark.parametrize("value", [0, 5, -1, True, False, 2.0, "2", "HIGH", None])
def test_bad_priority_is_named(value: object) -> None:
    assert task_field(priority=value) == "priority"


@pytest.mark.parametrize("value", [0, 0.0, 1, 2.5, MAX_DELAY_SECONDS])
def test_delays_accepted(value: float) -> None:
    assert check_task(**task(delay=value)).delay_ms == round(value * 1000)


@pytest.mark.parametrize(
    "value",
    [-1, -0.001, MAX_DELAY_SECONDS + 1, math.nan, math.inf, -math.inf, True, "5", None, [1]],
)
def test_bad_delay_is_named(value: object) -> None:
    assert task_field(delay=value) == "delay"


BAD_NAMES = ["", "a" * 65, "a b", "a/b", "queue\n", "ü", "$q", "a{b}", 5, None]


@pytest.mark.parametrize("value", BAD_NAMES)
def test_bad_queue_name_and_task_type_are_named(value: object) -> None:
    assert task_field(queue_name=value) == "queue_name"
    assert task_field(task_type=value) == "task_type"


def test_name_edges_accepted() -> None:
    checked = check_task(**task(queue_name="a" * 64, task_type="x.y:z-1_2"))
    assert checked.queue_name == "a" * 64


def test_task_data_errors_are_named_by_path() -> None:
    assert task_field(data={"filter": {"$where": "1"}}) == "task_data.filter.$where"


# --- the default DB handler's tasks -------------------------------------------------


def db_field(task_data: object, allowed: frozenset[str] = DEFAULT_COLLECTIONS) -> str | None:
    with pytest.raises(ValidationError) as info:
        check_db_task(task_data, allowed)  # type: ignore[arg-type]
    return info.value.field


def test_valid_db_tasks() -> None:
    assert check_db_task(
        {"operation": "insert", "collection": "users", "data": {"_id": "u", "n": 1}}
    ) == DbTask(operation="insert", collection="users", data={"_id": "u", "n": 1})
    assert check_db_task(
        {
            "operation": "update",
            "collection": "analytics",
            "data": {"n": 2},
            "filter": {"user_id": "u"},
        }
    ) == DbTask(operation="update", collection="analytics", data={"n": 2}, filter={"user_id": "u"})
    assert check_db_task(
        MappingProxyType(
            {
                "operation": "delete",
                "collection": "notifications",
                "filter": {"id": 3},
                "data": None,
            }
        )
    ) == DbTask(operation="delete", collection="notifications", filter={"id": 3})


@pytest.mark.parametrize(
    "collection",
    [
        *sorted(READ_MODEL_COLLECTIONS),
        *sorted(WORKER_COLLECTIONS),
        "system.users",
        "system.js",
        "system.profile",
    ],
)
def test_read_models_and_system_are_refused_even_if_allowed(collection: str) -> None:
    allowed = DEFAULT_COLLECTIONS | {collection}
    for op in (
        {"operation": "insert", "data": {"a": 1}},
        {"operation": "delete", "filter": {"a": 1}},
    ):
        assert db_field({**op, "collection": collection}, allowed) == "task_data.collection"


@pytest.mark.parametrize("collection", ["other", "Users", "", 5, None, ["users"]])
def test_unlisted_collections_are_refused(collection: object) -> None:
    assert (
        db_field({"operation": "insert", "collection": collection, "data": {}})
        == "task_data.collection"
    )


@pytest.mark.parametrize("operation", ["drop", "INSERT", "find", "", None, 1, "aggregate"])
def test_unknown_operations_are_refused(operation: object) -> None:
    assert (
        db_field({"operation": operation, "collection": "users", "data": {}})
        == "task_data.operation"
    )


@s.QUICK
@given(
    key=st.text(min_size=1, max_size=10).filter(
        lambda k: (
            k not in ("operation", "collection", "data", "filter")
            and not k.startswith("$")
            and "\x00" not in k
        )
    )
)
def test_unknown_top_level_keys_are_refused(key: str) -> None:
    assert (
        db_field({"operation": "insert", "collection": "users", "data": {}, key: 1})
        == f"task_data.{key}"
    )


@s.QUICK
@given(
    case=s.hostile_at_depth(st.tuples(s.dollar_keys(), st.just(1))),
    where=st.sampled_from(["data", "filter"]),
)
def test_operator_injection_is_refused(case: tuple[dict[str, Any], str], where: str) -> None:
    inner, path = case
    task_data = {
        "operation": "update",
        "collection": "users",
        "data": {"n": 1},
        "filter": {"user_id": "u"},
    }
    task_data[where] = inner
    assert db_field(task_data) == path.replace("task_data", f"task_data.{where}", 1)


def test_classic_injections_are_named() -> None:
    base = {"operation": "update", "collection": "users", "data": {"n": 1}}
    assert db_field({**base, "filter": {"$where": "sleep(1000)"}}) == "task_data.filter.$where"
    assert db_field({**base, "filter": {"balance": {"$gt": 0}}}) == "task_data.filter.balance.$gt"
    assert (
        db_field({**base, "filter": {"u": 1}, "data": {"$set": {"admin": True}}})
        == "task_data.data.$set"
    )
    assert (
        db_field({"operation": "delete", "collection": "users", "filter": {"$or": [{"a": 1}]}})
        == "task_data.filter.$or"
    )


@pytest.mark.parametrize(
    ("task_data", "field"),
    [
        ({"operation": "insert", "collection": "users"}, "task_data.data"),
        ({"operation": "insert", "collection": "users", "data": [1]}, "task_data.data"),
        (
            {"operation": "insert", "collection": "users", "data": {}, "filter": {"a": 1}},
            "task_data.filter",
        ),
        ({"operation": "update", "collection": "users", "filter": {"a": 1}}, "task_data.data"),
        (
            {"operation": "update", "collection": "users", "data": {}, "filter": {"a": 1}},
            "task_data.data",
        ),
        (
            {"operation": "update", "collection": "users", "data": {"_id": 1}, "filter": {"a": 1}},
            "task_data.data._id",
        ),
        ({"operation": "update", "collection": "users", "data": {"a": 1}}, "task_data.filter"),
        (
            {"operation": "update", "collection": "users", "data": {"a": 1}, "filter": {}},
            "task_data.filter",
        ),
        (
            {"operation": "update", "collection": "users", "data": {"a": 1}, "filter": "a=1"},
            "task_data.filter",
        ),
        ({"operation": "delete", "collection": "users"}, "task_data.filter"),
        ({"operation": "delete", "collection": "users", "filter": {}}, "task_data.filter"),
        (
            {"operation": "delete", "collection": "users", "filter": {"a": 1}, "data": {"b": 1}},
            "task_data.data",
        ),
    ],
)
def test_operation_shape_rules(task_data: dict[str, Any], field: str) -> None:
    assert db_field(task_data) == field


# --- recorded ledger events are unforgeable -----------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("bob:5", True),
        ("bob:5:2", True),
        ("a.b@c-d_e:12", True),
        ("x:0", True),
        ("bob", False),
        ("bob:", False),
        (":5", False),
        ("bob:5a", False),
        ("bob 1:5", False),
        ("3f2a9c1e-8d4b-4c1a-9e7f-0a1b2c3d4e5f", False),
        ("1700000000000-0", False),
        (5, False),
        (None, False),
        ({"u": "bob:5"}, False),
        ("b" * 129 + ":1", False),
    ],
)
def test_the_event_id_form(value: object, expected: bool) -> None:
    assert is_event_id(value) is expected


@pytest.mark.parametrize("collection", sorted(EVENT_RECORD_COLLECTIONS))
@pytest.mark.parametrize(
    ("task_data", "field"),
    [
        ({"operation": "insert", "data": {"_id": "bob:5", "amount": 1}}, "task_data.data._id"),
        ({"operation": "insert", "data": {"_id": "bob:5:2"}}, "task_data.data._id"),
        (
            {"operation": "update", "data": {"amount": 1}, "filter": {"_id": "bob:5"}},
            "task_data.filter._id",
        ),
        (
            {"operation": "update", "data": {"amount": 1}, "filter": {"_id": "bob:5", "a": 1}},
            "task_data.filter._id",
        ),
        ({"operation": "delete", "filter": {"_id": "bob:1"}}, "task_data.filter._id"),
    ],
)
def test_tasks_cannot_name_a_recorded_event(
    collection: str, task_data: dict[str, Any], field: str
) -> None:
    with pytest.raises(ValidationError) as info:
        check_db_task({**task_data, "collection": collection})
    assert info.value.field == field
    assert "ledger event id" in str(info.value) and collection in str(info.value)


def test_event_form_ids_are_fine_elsewhere_and_other_ids_everywhere() -> None:
    assert check_db_task(
        {"operation": "insert", "collection": "analytics", "data": {"_id": "bob:5"}}
    ).data == {"_id": "bob:5"}
    for collection in EVENT_RECORD_COLLECTIONS:
        for doc_id in ("bob", "u1", "3f2a9c1e-8d4b-4c1a-9e7f-0a1b2c3d4e5f", 7, {"k": "bob:5"}):
            check_db_task(
                {"operation": "insert", "collection": collection, "data": {"_id": doc_id}}
            )
            check_db_task(
                {"operation": "delete", "collection": collection, "filter": {"_id": doc_id}}
            )
        check_db_task(
            {
                "operation": "update",
                "collection": collection,
                "data": {"note": "bob:5"},
                "filter": {"user_id": "bob:5"},
            }
        )


@pytest.mark.parametrize("task_data", [None, [], "insert"])
def test_db_task_must_be_an_object(task_data: object) -> None:
    assert db_field(task_data) == "task_data"


# --- allow-list configuration -------------------------------------------------------


def test_allowed_collections_extend_the_defaults() -> None:
    allowed = allowed_collections(["ledger_reports", "audit.log"])
    assert allowed == DEFAULT_COLLECTIONS | {"ledger_reports", "audit.log"}
    assert allowed_collections() == DEFAULT_COLLECTIONS
    assert (
        check_db_task(
            {"operation": "insert", "collection": "ledger_reports", "data": {}}, allowed
        ).collection
        == "ledger_reports"
    )


@pytest.mark.parametrize(
    "name",
    [
        *sorted(READ_MODEL_COLLECTIONS),
        *sorted(WORKER_COLLECTIONS),
        "system.users",
        "system.x",
        "",
        "a$b",
        "a\x00b",
        "a b",
        "x" * 65,
        5,
    ],
)
def test_allowed_collections_refuses_unsafe_names(name: object) -> None:
    with pytest.raises(ValidationError) as info:
        allowed_collections(["fine", name])  # type: ignore[list-item]
    assert info.value.field == "collections"


def test_allowed_collections_refuses_a_bare_string() -> None:
    with pytest.raises(ValidationError):
        allowed_collections("users,analytics")
