"""Rows become Structs positionally (`Card(*row)`): start-up holds every such query to its
Struct (database.check_row_shapes), so a column added, dropped or moved fails the start
instead of shifting every value into the wrong field."""

from __future__ import annotations

import asyncpg
import pytest

from travel import database, models
from travel.groupcommit import LEADING_COLUMNS


def test_a_query_that_selects_the_structs_fields_in_order_fits() -> None:
    fields = models.CardBalance.__struct_fields__
    assert database.row_shape_mismatch(fields, models.CardBalance, ()) is None
    # A trailing field with a default may be left out (Revenue's currency).
    assert database.row_shape_mismatch(("total_revenue",), models.Revenue, ()) is None
    # Columns past the fields are the caller's, read by name (a batch's user_id, replayed).
    batch = (*LEADING_COLUMNS, *models.Recharge.__struct_fields__, "user_id", "replayed")
    assert database.row_shape_mismatch(batch, models.Recharge, LEADING_COLUMNS) is None


@pytest.mark.parametrize(
    "columns",
    [
        ("balance", "card_id", "status", "last_used_date"),  # two swapped
        ("card_id", "balance", "status"),  # a field without a default left out
        ("card_id", "balance", "state", "last_used_date"),  # renamed
    ],
)
def test_a_query_that_moved_a_column_does_not_fit(columns: tuple[str, ...]) -> None:
    assert database.row_shape_mismatch(columns, models.CardBalance, ()) is not None


def test_leading_columns_are_checked_too() -> None:
    fields = models.Trip.__struct_fields__
    assert database.row_shape_mismatch(("item", "refusal", "detail", "message", *fields), models.Trip, LEADING_COLUMNS)


async def test_every_registered_query_fits_and_a_wrong_registration_fails_the_check(
    pool: asyncpg.Pool, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert len(database.ROW_SHAPES) >= 15  # the cached reads, the writes, the batches, tokens
    async with pool.acquire() as conn:
        await database.check_row_shapes(conn)
        monkeypatch.setitem(database.ROW_SHAPES, "card-balance", (models.Trip, ()))
        with pytest.raises(RuntimeError, match="'card-balance' no longer fits Trip"):
            await database.check_row_shapes(conn)
