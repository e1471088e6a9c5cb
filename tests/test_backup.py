"""deploy/backup: dump, wipe, restore, reconcile, run for real against the session's PostgreSQL
with the embedded PostgreSQL's own pg_dump, pg_restore and psql (PG_BIN_DIR), the way the
nightly timer runs backup.sh on VM3 and an operator runs restore.sh after a loss."""

from __future__ import annotations

import datetime
import os
import subprocess
import urllib.parse
from pathlib import Path

import pytest

from tests.support.db import (
    assert_balances_reconcile,
    assert_counters_exact,
    connected,
    pg_environment,
    table_rows,
)
from tests.support.stack import with_database
from travel.startup.embedded import EmbeddedStack

pytestmark = pytest.mark.slow  # dumps and restores databases: seconds

BACKUP = Path(__file__).resolve().parent.parent / "deploy" / "backup"


def run(script: str, *args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(BACKUP / script), *args], env=env, capture_output=True, text=True, timeout=60)


async def make_history(url: str) -> None:
    """Users, cards, recharges and trips, all through the write functions; one card imported
    with an opening balance (its history from before)."""
    async with connected(url) as conn:
        for number in range(1, 4):
            user = await conn.fetchrow(
                "SELECT * FROM create_user($1, 'Test', $2, $3, NULL, NULL, NULL, NULL, NULL)",
                f"User{number}",
                f"user{number}@example.com",
                f"CC-{number:05d}",
            )
            card = await conn.fetchrow("SELECT * FROM issue_card($1, NULL)", user["user_id"])
            for amount in (10_000, 2_500 * number):
                await conn.fetchrow("SELECT * FROM recharge_card($1, $2, 1, NULL, NULL)", card["card_id"], amount)
            first = await conn.fetchrow("SELECT * FROM board_trip($1, 1, 1)", card["card_id"])
            await conn.fetchrow("SELECT * FROM board_trip($1, 3, 3)", card["card_id"])  # a transfer
            await conn.fetchrow("SELECT * FROM end_trip($1, 2)", first["trip_id"])
        await conn.execute(
            "UPDATE cards SET opening_balance = 5000, balance = balance + 5000 WHERE card_id = "
            "(SELECT min(card_id) FROM cards)"
        )
        await conn.fetchrow("SELECT * FROM set_card_status((SELECT max(card_id) FROM cards), 'blocked')")


async def snapshot(url: str) -> dict[str, object]:
    """Every row of every table, and where each identity sequence stands."""
    async with connected(url) as conn:
        tables = [
            row[0] for row in await conn.fetch("SELECT tablename FROM pg_tables WHERE schemaname = 'public' ORDER BY 1")
        ]
        state: dict[str, object] = {table: await table_rows(conn, table) for table in tables}
        for row in await conn.fetch(
            "SELECT sequencename, last_value FROM pg_sequences WHERE schemaname = 'public' ORDER BY 1"
        ):
            state[f"sequence {row[0]}"] = row[1]
    return state


async def test_dump_wipe_restore_reconcile(stack: EmbeddedStack, database_url: str, tmp_path: Path) -> None:
    await make_history(database_url)
    before = await snapshot(database_url)
    assert len(before["trips"]) == 6 and len(before["recharges"]) == 6  # type: ignore[arg-type]

    # The nightly run: dump, check, copy to "another host" (a directory standing in for it).
    remote = tmp_path / "backup-host"
    remote.mkdir()
    done = run(
        "backup.sh", env=pg_environment(database_url, BACKUP_DIR=str(tmp_path / "local"), BACKUP_REMOTE=f"{remote}/")
    )
    assert done.returncode == 0, done.stderr
    dump = Path(done.stdout.strip().splitlines()[-1])
    name = urllib.parse.urlsplit(database_url).path.lstrip("/")
    assert dump.parent == tmp_path / "local" and dump.name.startswith(f"{name}-") and dump.suffix == ".dump"
    assert sorted(path.name for path in remote.iterdir()) == [dump.name, dump.name + ".sha256"]
    assert (remote / dump.name).read_bytes() == dump.read_bytes()
    assert not list((tmp_path / "local").glob(".*partial"))

    # The loss: the database is gone.
    async with connected(stack.postgres.url) as admin:
        await admin.execute(f"DROP DATABASE {name} WITH (FORCE)")

    # The restore, from the copy on the backup host, into a new database.
    restored = f"{name}_restored"
    env = pg_environment(stack.postgres.url, RESTORE_OWNER=urllib.parse.urlsplit(stack.postgres.url).username or "")
    done = run("restore.sh", str(remote / dump.name), restored, env=env)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "3 cards reconcile" in done.stdout
    restored_url = with_database(stack.postgres.url, restored)
    assert await snapshot(restored_url) == before

    async with connected(restored_url) as conn:
        await assert_balances_reconcile(conn)
        await assert_counters_exact(conn)
        # The restored database takes writes: functions, triggers and sequences came back.
        card_id = await conn.fetchval("SELECT min(card_id) FROM cards")
        last_trip = await conn.fetchval("SELECT max(trip_id) FROM trips")
        trip = await conn.fetchrow("SELECT * FROM board_trip($1, 2, 3)", card_id)
        assert trip["trip_id"] > last_trip
        await assert_counters_exact(conn)

    # restore.sh never writes into a database that exists.
    done = run("restore.sh", str(remote / dump.name), restored, env=env)
    assert done.returncode != 0 and "exists" in done.stderr


async def test_restore_fails_when_a_balance_does_not_reconcile(
    stack: EmbeddedStack, database_url: str, tmp_path: Path
) -> None:
    await make_history(database_url)
    async with connected(database_url) as conn:
        # A balance changed behind the write functions' back: money from nowhere.
        await conn.execute("UPDATE cards SET balance = balance + 100 WHERE card_id = (SELECT max(card_id) FROM cards)")
        bad_card = await conn.fetchval("SELECT max(card_id) FROM cards")
    done = run("backup.sh", env=pg_environment(database_url, BACKUP_DIR=str(tmp_path)))
    assert done.returncode == 0, done.stderr
    assert "kept on this host only" in done.stderr
    dump = done.stdout.strip().splitlines()[-1]

    restored = urllib.parse.urlsplit(database_url).path.lstrip("/") + "_check"
    env = pg_environment(stack.postgres.url, RESTORE_OWNER=urllib.parse.urlsplit(stack.postgres.url).username or "")
    done = run("restore.sh", dump, restored, env=env)
    assert done.returncode == 1
    assert "1 of 3 cards do not reconcile" in done.stderr
    assert f"card {bad_card}: balance" in done.stderr


async def test_restore_refuses_a_dump_whose_checksum_does_not_match(
    stack: EmbeddedStack, database_url: str, tmp_path: Path
) -> None:
    done = run("backup.sh", env=pg_environment(database_url, BACKUP_DIR=str(tmp_path)))
    assert done.returncode == 0, done.stderr
    dump = Path(done.stdout.strip().splitlines()[-1])
    with dump.open("ab") as damaged:
        damaged.write(b"\0")
    restored = urllib.parse.urlsplit(database_url).path.lstrip("/") + "_damaged"
    done = run("restore.sh", str(dump), restored, env=pg_environment(stack.postgres.url))
    assert done.returncode != 0
    async with connected(stack.postgres.url) as admin:
        assert not await admin.fetchval("SELECT EXISTS (SELECT FROM pg_database WHERE datname = $1)", restored)


async def test_backup_keeps_only_keep_days_of_dumps(database_url: str, tmp_path: Path) -> None:
    name = urllib.parse.urlsplit(database_url).path.lstrip("/")
    old = tmp_path / f"{name}-20200101T000000Z.dump"
    for path in (old, old.with_name(old.name + ".sha256")):
        path.write_bytes(b"old")
        stamp = (datetime.datetime.now() - datetime.timedelta(days=30)).timestamp()
        os.utime(path, (stamp, stamp))
    done = run("backup.sh", env=pg_environment(database_url, BACKUP_DIR=str(tmp_path), KEEP_DAYS="14"))
    assert done.returncode == 0, done.stderr
    assert sorted(path.suffix for path in tmp_path.iterdir()) == [".dump", ".sha256"]
    assert not old.exists()
