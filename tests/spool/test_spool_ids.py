"""Message ids: sortable in creation order, unique, and the only names that become paths."""

from __future__ import annotations

import time

import pytest

from dispatch.spool.ids import ID_LENGTH, IdGenerator, check_id, id_timestamp, is_valid_id, new_id


def test_ids_sort_in_creation_order_even_within_one_millisecond() -> None:
    made = [new_id() for _ in range(20_000)]  # thousands per millisecond
    assert made == sorted(made)
    assert len(set(made)) == len(made)
    assert all(len(i) == ID_LENGTH and is_valid_id(i) for i in made)


def test_ids_keep_increasing_when_the_clock_steps_back() -> None:
    clock = iter([5_000_000_000_000_000, 4_000_000_000_000_000, 4_000_000_000_000_000])
    generator = IdGenerator(clock_ns=lambda: next(clock))
    made = [generator.new_id() for _ in range(3)]
    assert made == sorted(made)
    assert len(set(made)) == 3


def test_id_carries_its_creation_time() -> None:
    before = time.time()
    message_id = new_id()
    assert before - 0.002 <= id_timestamp(message_id) <= time.time() + 0.002


@pytest.mark.parametrize(
    "value",
    [
        "",
        "spl_",
        "spl_01ARZ3NDEKTSV4RRFFQ69G5FA",  # 25 characters
        "spl_01ARZ3NDEKTSV4RRFFQ69G5FAVX",  # 27
        "spl_01arz3ndektsv4rrffq69g5fav",  # lower case
        "spl_01ARZ3NDEKTSV4RRFFQ69G5FAU",  # U is not Crockford base32
        "spl_81ARZ3NDEKTSV4RRFFQ69G5FAV",  # more than 128 bits
        "msg_01ARZ3NDEKTSV4RRFFQ69G5FAV",
        "../../etc/passwd",
        "spl_01ARZ3NDEKTSV4RRFFQ69G5FAV/../x",
        "spl_01ARZ3NDEKTSV4RRFFQ69G5FAV.eml",
        "spl_01ARZ3NDEKTSV4RRFFQ69G5FAV\n",
        " spl_01ARZ3NDEKTSV4RRFFQ69G5FAV",
        None,
        42,
        b"spl_01ARZ3NDEKTSV4RRFFQ69G5FAV",
    ],
)
def test_invalid_ids_are_rejected(value: object) -> None:
    assert not is_valid_id(value)
    with pytest.raises(ValueError, match="not a spool message id"):
        check_id(value)


def test_a_well_formed_id_is_accepted() -> None:
    assert check_id("spl_01ARZ3NDEKTSV4RRFFQ69G5FAV") == "spl_01ARZ3NDEKTSV4RRFFQ69G5FAV"
