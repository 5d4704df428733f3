# A django-lockmgr peer for locksmith's interop tests: a configured Django (INSTALLED_APPS =
# ["lockmgr"], USE_TZ = True) on the database named by argv[1], driven by one JSON array per
# line on stdin and answering one JSON object per line on stdout.
#
#   python django_peer.py sqlite:///path/db.sqlite3
#   python django_peer.py postgres://user:pw@127.0.0.1:5432/db
#   python django_peer.py mysql://user:pw@127.0.0.1:3306/db
#
# Commands (see the `run` table at the end): migrate, get, unlock, is_locked, renew, set_lock,
# list, count, clock, quit. Errors are answered as {"error": "<ExceptionClass>", "message": ...}.
import json
import os
import sys
import time
from datetime import datetime, timedelta, timezone as dt_timezone
from urllib.parse import unquote, urlparse

import django
from django.conf import settings

url = urlparse(sys.argv[1])
if url.scheme == "sqlite":
    db = {"ENGINE": "django.db.backends.sqlite3", "NAME": unquote(url.path)}
elif url.scheme in ("postgres", "postgresql"):
    db = {"ENGINE": "django.db.backends.postgresql"}
elif url.scheme == "mysql":
    import pymysql

    pymysql.install_as_MySQLdb()
    db = {"ENGINE": "django.db.backends.mysql"}
else:
    sys.exit(f"unknown database URL scheme {url.scheme!r}")
if url.scheme != "sqlite":
    db.update(
        NAME=unquote(url.path.lstrip("/")),
        USER=unquote(url.username or ""),
        PASSWORD=unquote(url.password or ""),
        HOST=url.hostname or "127.0.0.1",
        PORT=str(url.port or ""),
    )
settings.configure(
    INSTALLED_APPS=["lockmgr"],
    DATABASES={"default": db},
    USE_TZ=True,
    TIME_ZONE="UTC",
)
django.setup()

from django.core.management import call_command  # noqa: E402
from django.db import connection, IntegrityError, OperationalError  # noqa: E402
from django.utils import timezone  # noqa: E402
from lockmgr import lockmgr  # noqa: E402
from lockmgr.models import Lock  # noqa: E402

real_now = timezone.now


def db_now():
    """The database's clock, as an aware UTC datetime."""
    with connection.cursor() as c:
        if connection.vendor == "postgresql":
            c.execute("SELECT clock_timestamp()")
        elif connection.vendor == "mysql":
            c.execute("SELECT UTC_TIMESTAMP(6)")
        else:
            return real_now()
        t = c.fetchone()[0]
    if t.tzinfo is None:
        t = t.replace(tzinfo=dt_timezone.utc)
    return t


def iso(t):
    return None if t is None else t.isoformat()


def row(lk):
    return {
        "name": lk.name,
        "locked_by": lk.locked_by,
        "lock_process": lk.lock_process,
        "locked_until": iso(lk.locked_until),
        "created_at": iso(lk.created_at),
        "updated_at": iso(lk.updated_at),
        "expires_seconds": lk.expires_seconds,
    }


def get(name, expires, locked_by=None, lock_process=None):
    return row(lockmgr.get_lock(name, expires=expires, locked_by=locked_by, lock_process=lock_process))


def count(name, n, expires, counter, inside):
    """n times: take the lock (retrying every 5 ms on Locked, and on the IntegrityError or
    'database is locked' a lost race gives), then a read-modify-write of the counter file
    that is not atomic on its own, with an O_EXCL marker to catch an overlapping holder."""
    overlaps = 0
    waited = 0.0
    for _ in range(n):
        start = time.monotonic()
        while True:
            try:
                lk = lockmgr.get_lock(name, expires=expires)
                break
            except (lockmgr.Locked, IntegrityError, OperationalError):
                time.sleep(0.005)
        waited = max(waited, time.monotonic() - start)
        try:
            fd = os.open(inside, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            os.close(fd)
            mine = True
        except FileExistsError:
            overlaps += 1
            mine = False
        with open(counter) as f:
            v = int(f.read() or "0")
        time.sleep(0.002)
        with open(counter, "w") as f:
            f.write(str(v + 1))
        if mine:
            os.unlink(inside)
        lockmgr.unlock(lk)
    return {"overlaps": overlaps, "longest_wait": waited}


def clock(mode, offset=0):
    """'real', 'offset' (this process's clock runs `offset` seconds off) or 'db' (now is the
    database's clock, whatever this process's own clock says)."""
    if mode == "real":
        timezone.now = real_now
    elif mode == "offset":
        timezone.now = lambda: real_now() + timedelta(seconds=offset)
    elif mode == "db":
        timezone.now = db_now
    else:
        raise ValueError(mode)
    return {"now": iso(timezone.now())}


def set_lock(names, timeout, renew=True, create=True, fail=False):
    res = lockmgr.set_lock(*names, timeout=timeout, renew=renew, create=create, fail=fail)
    return {
        "counts": dict(res.counts),
        "statuses": [[n, s.status] for n, s in res.statuses],
    }


run = {
    "migrate": lambda: call_command("migrate", "lockmgr", verbosity=0) or {"ok": True},
    "get": get,
    "unlock": lambda name: {"ok": lockmgr.unlock(name)},
    "is_locked": lambda name: {"locked": lockmgr.is_locked(name)},
    "renew": lambda name, expires, add_time=False: row(
        lockmgr.renew_lock(name, expires=expires, add_time=add_time)
    ),
    "set_lock": set_lock,
    "list": lambda: {"locks": [row(lk) for lk in Lock.objects.order_by("name")]},
    "count": count,
    "clock": clock,
    "now": lambda: {"now": iso(timezone.now())},
}

print(json.dumps({"ready": True, "vendor": connection.vendor}), flush=True)
for line in sys.stdin:
    cmd = json.loads(line)
    if cmd[0] == "quit":
        break
    try:
        answer = run[cmd[0]](*cmd[1:])
    except Exception as e:  # answered, not raised: the test decides what an error means
        answer = {"error": type(e).__name__, "message": str(e)}
    print(json.dumps(answer, default=str), flush=True)
