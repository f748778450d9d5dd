"""The README's curl walk-through and "a secretary's morning" run as written (their ``sh`` blocks,
in order, in one bash) against the app on a real port with the worker running: every curl must
get a 2xx answer. Only the address and the admin token are the test's."""

from __future__ import annotations

import asyncio
import re
import shutil
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from aiohttp.test_utils import TestClient

from tests.conftest import ADMIN_TOKEN

README = Path(__file__).resolve().parents[1] / "README.md"
SECTIONS = (
    "## Walk-through with curl",
    "## A secretary's morning",
    "## Study points",
    "## Quizzes",
    "## A month of study: the monthly test, its rankings and the CSV",
    "## Meetings (三会一课): check-in by place and time",
    "## A 党小组会: the notice, check-ins, the record and the committee's report",
)


def readme_script() -> str:
    text = README.read_text(encoding="utf-8")
    blocks = []
    for title in SECTIONS:
        start = text.index(title + "\n")
        end = text.find("\n## ", start + len(title))
        section = text[start : end if end != -1 else len(text)]
        blocks += re.findall(r"^```sh\n(.*?)^```$", section, flags=re.S | re.M)
    assert len(blocks) >= 2, "the README's curl blocks moved"
    return "\n".join(blocks)


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
async def test_the_readme_walk_through_and_a_secretarys_morning_work_as_written(
    client: TestClient[Any, Any], db: asyncpg.Connection, worker: None, tmp_path: Path
) -> None:
    script = readme_script()
    base = str(client.make_url("")).rstrip("/")
    assert "B=http://127.0.0.1:8080;" in script and "Bearer devtoken" in script
    script = script.replace("B=http://127.0.0.1:8080;", f"B={base};").replace("devtoken", ADMIN_TOKEN)
    # Any answer >= 400 or an unset variable stops the script with the answer shown.
    prelude = 'set -eu\ncurl() { command curl --fail-with-body --max-time 20 "$@"; }\n'
    proc = await asyncio.create_subprocess_exec(
        "bash",
        "-c",
        prelude + script,
        cwd=tmp_path,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), timeout=90)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.returncode == 0, out.decode(errors="replace")[-3000:]
    # The morning's DING reached officer-17, who has not read it: on the roll-call, in the CSV,
    # reminded, and in the branch's report of this month.
    roll = (tmp_path / "roll-call.csv").read_bytes()
    assert roll.startswith(b"\xef\xbb\xbf") and b"officer-17" in roll
    night = await db.fetchval("SELECT id FROM notices WHERE title = 'Night muster'")
    steps = await db.fetch(
        "SELECT channel FROM deliveries WHERE notice_id = $1 AND step > 0 ORDER BY 1", night
    )
    assert [s["channel"] for s in steps] == ["inapp", "webhook"]
    assert '"unit_id":"branch-3","name":"Branch 3 (Patrol)","own":true,"notices":2' in out.decode()
    # The month's test: Li Wei took it (100 of 100, rank 1), branch 4's two officers did not; the
    # appraisal CSV lists all three, Li Wei first.
    ranking = (tmp_path / "ranking.csv").read_bytes().decode("utf-8")
    assert ranking.startswith("\ufeffrank,member_id,name,units,taken,score")
    assert ranking.splitlines()[1].startswith("1,officer-17,Li Wei,branch-3,yes,100,100,100.0,yes,")
    assert sorted(line.split(",")[1] for line in ranking.splitlines()[2:]) == ["officer-41", "officer-42"]
    # The meeting: refused 1.2 km away, accepted 250 m away (its venue in GCJ-02, the phone in WGS-84).
    verdicts = await db.fetch(
        "SELECT verdict, round(distance_m) AS d FROM meeting_checkins ORDER BY id LIMIT 2"
    )
    assert [(v["verdict"], v["d"]) for v in verdicts] == [("outside", 1200), ("ok", 250)]
    # The 党小组会: Zhang checked in (late), Wang was outside; the photo from the office was
    # refused and the one from the venue kept; liu is excused; the group's meeting is held.
    text = out.decode()
    group = await db.fetch(
        "SELECT member_id, verdict FROM meeting_checkins WHERE member_id IN ('zhang', 'wang')"
    )
    assert {r["member_id"]: r["verdict"] for r in group} == {"zhang": "ok", "wang": "outside"}
    assert "/outside-venue" in text
    assert await db.fetchval("SELECT count(*) FROM meeting_photos WHERE kind = 'site'") == 1
    # Li Wei's photo taken at check-in: linked to his accepted check-in, not a site photo.
    assert (
        await db.fetchval(
            "SELECT count(*) FROM meeting_photos p JOIN meeting_checkins k ON k.photo_id = p.id"
            " WHERE p.kind = 'checkin' AND k.member_id = 'officer-17' AND k.verdict = 'ok'"
        )
        == 1
    )
    assert await db.fetchval("SELECT array_agg(member_id) FROM meeting_absences") == ["liu"]
    assert '"excused":1,"absent":1,"rate":0.5' in text
    assert re.search(r'"unit_id":"pc-b1-g1".*"schedule":\[\{[^]]*"held":true', text)
