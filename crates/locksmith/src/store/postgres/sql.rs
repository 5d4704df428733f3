//! The SQL of the PostgreSQL store: the schema, its functions, and the statements the store
//! sends, built once per table (the table's name is a validated identifier, never input).

/// The schema version this build writes (in the meta table).
pub(crate) const SCHEMA_VERSION: i32 = 4;

/// How long after its last try a queued waiter may still be handed the lock, in µs: waiters
/// try again at least once a second, so an older entry is a waiter that went away without
/// leaving the queue.
const QUEUE_STALE_US: i64 = 5_000_000;

/// How long a queue entry outlives its waiter's last try before the garbage sweep removes
/// it, in µs.
const QUEUE_LIFE_US: i64 = 10_000_000;

/// The store's clock: microseconds since the Unix epoch on the server's clock
/// (`clock_timestamp()`, not the transaction's start), plus the test offset bound as `$N`.
pub(crate) fn now_expr(offset_param: &str) -> String {
    format!("(floor(extract(epoch FROM clock_timestamp()) * 1000000)::int8 + {offset_param})")
}

/// The parameters every version of the acquire function starts with (version 1's are these
/// alone), spliced into the schema's SQL.
const ACQUIRE_PARAMS: &str =
    "    p_ns text, p_name text, p_token text, p_owner text, p_host text, p_pid int8,
    p_ttl int8, p_min_hold int8, p_offset int8";

/// What every version of the acquire function returns.
const ACQUIRE_RETURNS: &str =
    "RETURNS TABLE (o_status int4, o_fence int8, o_now int8, o_released bool, o_owner text,
               o_host text, o_pid int8, o_acquired_at int8, o_expires_at int8,
               o_min_hold int8)";

/// Every statement of one table, with its names spliced in.
#[derive(Debug)]
pub(crate) struct Statements {
    /// `"schema"."table"`.
    pub(crate) table: String,
    /// `"schema"."table_meta"`.
    pub(crate) meta: String,
    /// `"schema"."table_queue"`: the waiters queued for pushed grants.
    pub(crate) queue: String,
    /// The `LISTEN`/`NOTIFY` channel.
    pub(crate) channel: String,
    pub(crate) acquire: String,
    pub(crate) release: String,
    pub(crate) extend: String,
    pub(crate) inspect: String,
    pub(crate) list: String,
    pub(crate) force_release: String,
    pub(crate) reset_all: String,
    pub(crate) purge_expired: String,
    pub(crate) sweep: String,
    pub(crate) lock_rows: String,
    pub(crate) placeholders: String,
    pub(crate) write_row: String,
    pub(crate) free_row: String,
    pub(crate) notify: String,
    /// Marks rows watched (`$1` namespace, `$2` names): a multi-lock try found them held.
    pub(crate) watch: String,
}

/// The first key of the advisory lock a listener holds while it listens (the second is its
/// backend pid): 31 bits of the channel's hash. A release tells whether a queued waiter's
/// process still listens by trying that lock (a shared, transaction-scoped try: it fails
/// while the listener holds it), which costs a lock-table probe where reading
/// `pg_stat_activity` copies every backend's status (about 50 µs).
pub(crate) fn inbox_key(channel: &str) -> i32 {
    let hex = &channel[channel.len().saturating_sub(8)..];
    i32::try_from(u32::from_str_radix(hex, 16).unwrap_or(0) & 0x7fff_ffff).unwrap_or(0)
}

/// The holder columns every read returns, in this order, after which comes the clock.
pub(crate) const COLUMNS: &str =
    "l.token IS NULL, l.owner, l.host, l.pid, l.fence, l.acquired_at, l.expires_at, l.min_hold";

/// The payload of a wake-up: the namespace's length, `:`, the namespace, then the name
/// (empty: every name of the namespace).
fn payload(ns: &str, name: &str) -> String {
    format!("length({ns})::text || ':' || {ns} || {name}")
}

/// PL/pgSQL that queues a claim whose fields are `{claim}token`, `{claim}ttl`, … (the
/// parameters `p_…` of a try, or `p_next_…` of a release), with the time `v_now` and the
/// inbox `p_inbox`; a claim queued already keeps its place.
fn queue_claim(q: &str, claim: &str) -> String {
    format!(
        "INSERT INTO {q} AS e (namespace, name, token, first_try, last_try, ttl, min_hold,
                              owner, host, pid, grant_id, inbox)
        VALUES (p_ns, p_name, {claim}token, v_now, v_now, {claim}ttl, {claim}min_hold,
                {claim}owner, {claim}host, {claim}pid, {claim}grant_id, p_inbox)
        ON CONFLICT (namespace, name, token) DO UPDATE
        SET last_try = v_now, inbox = p_inbox, grant_id = {claim}grant_id;"
    )
}

/// PL/pgSQL that hands the row to a queued claim (fields `{claim}token`, …: an entry `e.`
/// of the queue, or the release's `p_next_…`) with fence `v_fence`, as a grant not yet
/// confirmed by a try.
fn hand_row(t: &str, claim: &str) -> String {
    format!(
        "UPDATE {t} l SET token = {claim}token, owner = {claim}owner, host = {claim}host,
            pid = {claim}pid, fence = v_fence, acquired_at = v_now,
            expires_at = v_now + {claim}ttl, min_hold = {claim}min_hold, freed = false,
            pushed = true
        WHERE l.namespace = p_ns AND l.name = p_name;"
    )
}

/// PL/pgSQL that both schema versions' functions share, over `r` (the row), `v_now` and the
/// parameters `p_…`.
struct Fragments {
    /// Locks the name's row into `r`, creating a free placeholder first if the name has none.
    lock_row: String,
    /// Returns the holder found in `r` (status 2 when it is the claimant's own token, else 1).
    held: &'static str,
    /// Returns the grant just written for the claimant.
    granted: &'static str,
    /// A release before `min_hold` has passed: keeps the lock until then, wakes the name.
    kept: String,
    /// Frees the row (kept for its fence) and wakes the name.
    freed: String,
}

/// Whom a release's wake-up is for.
#[derive(Clone, Copy)]
enum Wake {
    /// Always notify the table's channel (schema versions 1 and 2).
    Always,
    /// Only when a waiter that no pushed grant will reach marked the row `watched`
    /// (version 3): PostgreSQL up to version 18 signals every listening backend of the
    /// database at each commit that notifies, so a release nobody waits for should not.
    /// The release that frees the row clears the mark.
    Watched,
}

impl Fragments {
    /// `acquired`: the expression of the holder's grant time; `when`: whether every release
    /// notifies, or only one of a watched row (`r` then holds the row).
    fn new(t: &str, channel: &str, wake: &str, acquired: &str, when: Wake) -> Fragments {
        let notify = match when {
            Wake::Always => format!("PERFORM pg_notify('{channel}', {wake});"),
            Wake::Watched => {
                format!("IF r.watched THEN PERFORM pg_notify('{channel}', {wake}); END IF;")
            }
        };
        let unwatch = match when {
            Wake::Always => "",
            Wake::Watched => ", watched = false",
        };
        Fragments {
            lock_row: format!(
                r#"    LOOP
        SELECT * INTO r FROM {t} l WHERE l.namespace = p_ns AND l.name = p_name FOR UPDATE;
        EXIT WHEN FOUND;
        INSERT INTO {t} (namespace, name, token, owner, host, pid, fence, acquired_at,
                         expires_at, min_hold, freed)
        VALUES (p_ns, p_name, NULL, '', '', 0, 0, 0, 0, NULL, true)
        ON CONFLICT DO NOTHING;
    END LOOP;"#
            ),
            held: "        o_status := CASE WHEN r.token = p_token THEN 2 ELSE 1 END;
        o_fence := r.fence; o_now := v_now; o_released := r.token IS NULL;
        o_owner := r.owner; o_host := r.host; o_pid := r.pid;
        o_acquired_at := r.acquired_at; o_expires_at := r.expires_at;
        o_min_hold := r.min_hold;
        RETURN NEXT;
        RETURN;",
            granted: "    o_status := 0; o_fence := v_fence; o_now := v_now; o_released := false;
    o_owner := p_owner; o_host := p_host; o_pid := p_pid; o_acquired_at := v_now;
    o_expires_at := v_now + p_ttl; o_min_hold := p_min_hold;
    RETURN NEXT;",
            kept: format!(
                "    IF p_min_hold IS NOT NULL AND {acquired} + p_min_hold > v_now THEN
        UPDATE {t} l SET token = NULL, expires_at = {acquired} + p_min_hold
        WHERE l.namespace = p_ns AND l.name = p_name;
        {notify}
        RETURN 1;
    END IF;"
            ),
            freed: format!(
                "    UPDATE {t} l SET token = NULL, freed = true, expires_at = v_now{unwatch}
    WHERE l.namespace = p_ns AND l.name = p_name;
    {notify}
    RETURN 0;"
            ),
        }
    }
}

impl Statements {
    pub(crate) fn new(schema: &str, table: &str, channel: &str) -> Statements {
        let t = format!("\"{schema}\".\"{table}\"");
        let meta = format!("\"{schema}\".\"{table}_meta\"");
        let f = |suffix: &str| format!("\"{schema}\".\"{table}_{suffix}\"");
        let now2 = now_expr("$2");
        let now1 = now_expr("$1");
        let wake = payload("$1", "g.name");
        let queue = f("queue");
        Statements {
            acquire: format!(
                "SELECT * FROM {}($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)",
                f("acquire")
            ),
            release: format!(
                "SELECT {}($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)",
                f("release")
            ),
            extend: format!("SELECT * FROM {}($1, $2, $3, $4, $5, $6)", f("extend")),
            inspect: format!(
                "SELECT {COLUMNS}, l.token, {now} FROM {t} l
                 WHERE l.namespace = $1 AND l.name = $2 AND NOT l.freed",
                now = now_expr("$3")
            ),
            // The page starts after the cursor or at the prefix (one range bound either way),
            // and keeps to the prefix with starts_with: no LIKE pattern to escape.
            list: format!(
                "SELECT l.name, {COLUMNS}, c.now FROM {t} l, (SELECT {now} AS now) c
                 WHERE l.namespace = $1 AND NOT l.freed
                   AND l.name >= $2 AND starts_with(l.name, $2)
                   AND ($3::text IS NULL OR l.name > $3)
                   AND CASE $4::int4
                         WHEN 0 THEN l.expires_at IS NULL OR l.expires_at > c.now
                         WHEN 1 THEN true
                         ELSE l.expires_at IS NOT NULL AND l.expires_at <= c.now
                       END
                 ORDER BY l.name LIMIT $5",
                now = now_expr("$6")
            ),
            force_release: format!(
                "WITH g AS (DELETE FROM {t} l WHERE l.namespace = $1 AND l.name = ANY($2)
                    RETURNING l.name, l.fence,
                      NOT l.freed AND (l.expires_at IS NULL OR l.expires_at > {now}) AS live),
                 f AS (UPDATE {meta} SET fence_floor = GREATEST(fence_floor,
                         (SELECT max(g.fence) FROM g))
                       WHERE id = 0 AND EXISTS (SELECT 1 FROM g))
                 SELECT g.name, g.live, pg_notify('{channel}', {wake})::text FROM g",
                now = now_expr("$3")
            ),
            reset_all: format!(
                "WITH g AS (DELETE FROM {t} l WHERE l.namespace = $1 RETURNING l.fence, l.freed),
                 f AS (UPDATE {meta} SET fence_floor = GREATEST(fence_floor,
                         (SELECT max(g.fence) FROM g))
                       WHERE id = 0 AND EXISTS (SELECT 1 FROM g))
                 SELECT (SELECT count(*) FROM g WHERE NOT g.freed),
                        pg_notify('{channel}', {ns_wake})::text",
                ns_wake = payload("$1", "''")
            ),
            purge_expired: format!(
                "WITH g AS (DELETE FROM {t} l WHERE l.namespace = $1
                      AND l.expires_at IS NOT NULL AND l.expires_at <= (SELECT {now2})
                    RETURNING l.fence, l.freed),
                 f AS (UPDATE {meta} SET fence_floor = GREATEST(fence_floor,
                         (SELECT max(g.fence) FROM g))
                       WHERE id = 0 AND EXISTS (SELECT 1 FROM g))
                 SELECT count(*) FILTER (WHERE NOT g.freed) FROM g"
            ),
            // Garbage: rows (of any namespace) that expired or were released more than
            // `retain` ago, at most 64 per sweep, skipping rows a grant holds locked. Their
            // fences raise the table's floor, so a name's next fence stays above them.
            //
            // The bound is a subquery (evaluated once, then a parameter of the plan) and the
            // rows are taken in expiry order: `clock_timestamp()` is volatile, so a bare
            // `expires_at <= clock_timestamp()…` cannot bound an index scan, and each sweep
            // read the whole table — retained freed rows included — to find nothing.
            sweep: format!(
                "WITH q AS (DELETE FROM {queue} e WHERE e.last_try < {now1} - {QUEUE_LIFE_US}),
                 g AS (DELETE FROM {t} l WHERE l.ctid = ANY(ARRAY(
                     SELECT s.ctid FROM {t} s
                     WHERE s.expires_at IS NOT NULL AND s.expires_at <= (SELECT {now1} - $2)
                     ORDER BY s.expires_at LIMIT 64 FOR UPDATE SKIP LOCKED))
                   RETURNING l.fence)
                 UPDATE {meta} SET fence_floor = GREATEST(fence_floor, (SELECT max(g.fence) FROM g))
                 WHERE id = 0 AND EXISTS (SELECT 1 FROM g)"
            ),
            placeholders: format!(
                "INSERT INTO {t} (namespace, name, token, owner, host, pid, fence, acquired_at,
                                  expires_at, min_hold, freed)
                 SELECT $1, n, NULL, '', '', 0, 0, 0, 0, NULL, true FROM unnest($2::text[]) n
                 ON CONFLICT DO NOTHING"
            ),
            lock_rows: format!(
                "SELECT l.name, l.freed, {COLUMNS}, l.token, {now2},
                        (SELECT m.fence_floor FROM {meta} m WHERE m.id = 0)
                 FROM {t} l WHERE l.namespace = $1 AND l.name = ANY($3)
                 ORDER BY l.name FOR UPDATE OF l"
            ),
            write_row: format!(
                "UPDATE {t} SET token = $3, owner = $4, host = $5, pid = $6, fence = $7,
                   acquired_at = $8, expires_at = $9, min_hold = $10, freed = false,
                   pushed = false
                 WHERE namespace = $1 AND name = $2"
            ),
            free_row: format!(
                "UPDATE {t} SET token = NULL, freed = true, expires_at = $3
                 WHERE namespace = $1 AND name = $2"
            ),
            notify: format!(
                "SELECT pg_notify('{channel}', {})::text",
                payload("$1", "$2")
            ),
            watch: format!(
                "UPDATE {t} SET watched = true
                 WHERE namespace = $1 AND name = ANY($2) AND NOT watched"
            ),
            table: t,
            meta,
            queue,
            channel: channel.to_string(),
        }
    }

    /// The migration to version 1: the table, its index, and its functions. Run inside the
    /// migration's transaction.
    pub(crate) fn schema_v1(&self, schema: &str, table: &str) -> String {
        let t = &self.table;
        let meta = &self.meta;
        let channel = &self.channel;
        let f = |suffix: &str| format!("\"{schema}\".\"{table}_{suffix}\"");
        let now = now_expr("p_offset");
        let wake = payload("p_ns", "p_name");
        let acquire = f("acquire");
        let release = f("release");
        let extend = f("extend");
        let index = format!("\"{table}_expires_at\"");
        let Fragments {
            lock_row,
            held,
            granted,
            kept,
            freed,
        } = Fragments::new(t, channel, &wake, "v_acquired", Wake::Always);
        format!(
            r#"
CREATE TABLE IF NOT EXISTS {t} (
    namespace   text COLLATE "C" NOT NULL,
    name        text COLLATE "C" NOT NULL,
    token       text,
    owner       text NOT NULL,
    host        text NOT NULL,
    pid         int8 NOT NULL,
    fence       int8 NOT NULL,
    acquired_at int8 NOT NULL,
    expires_at  int8,
    min_hold    int8,
    freed       boolean NOT NULL DEFAULT false,
    PRIMARY KEY (namespace, name)
);
COMMENT ON TABLE {t} IS 'locksmith locks: times are microseconds since the Unix epoch on this server''s clock; freed rows are released locks kept for their fence until swept';
CREATE INDEX IF NOT EXISTS {index} ON {t} (expires_at) WHERE expires_at IS NOT NULL;

CREATE OR REPLACE FUNCTION {acquire}(
{ACQUIRE_PARAMS})
{ACQUIRE_RETURNS}
LANGUAGE plpgsql AS $fn$
DECLARE
    r {t}%ROWTYPE;
    v_now int8;
    v_floor int8;
    v_fence int8;
BEGIN
    -- Lock the row first (creating a free placeholder if the name has none), so the fence
    -- below is minted only once this grant is serialised after every earlier one.
{lock_row}
    v_now := {now};
    IF NOT r.freed AND (r.expires_at IS NULL OR r.expires_at > v_now) THEN
{held}
    END IF;
    SELECT m.fence_floor INTO v_floor FROM {meta} m WHERE m.id = 0;
    v_fence := GREATEST(r.fence + 1, v_now, COALESCE(v_floor, 0) + 1);
    UPDATE {t} l SET token = p_token, owner = p_owner, host = p_host, pid = p_pid,
        fence = v_fence, acquired_at = v_now, expires_at = v_now + p_ttl,
        min_hold = p_min_hold, freed = false
    WHERE l.namespace = p_ns AND l.name = p_name;
{granted}
END
$fn$;

CREATE OR REPLACE FUNCTION {release}(
    p_ns text, p_name text, p_token text, p_min_hold int8, p_offset int8)
RETURNS int4
LANGUAGE plpgsql AS $fn$
DECLARE
    v_acquired int8;
    v_expires int8;
    v_now int8;
BEGIN
    SELECT l.acquired_at, l.expires_at INTO v_acquired, v_expires FROM {t} l
    WHERE l.namespace = p_ns AND l.name = p_name AND l.token = p_token AND NOT l.freed
    FOR UPDATE;
    IF NOT FOUND THEN
        RETURN 2;
    END IF;
    v_now := {now};
    IF v_expires IS NOT NULL AND v_expires <= v_now THEN
        RETURN 2;
    END IF;
{kept}
{freed}
END
$fn$;

CREATE OR REPLACE FUNCTION {extend}(
    p_ns text, p_name text, p_token text, p_mode int4, p_by int8, p_offset int8)
RETURNS TABLE (o_status int4, o_expires_in int8)
LANGUAGE plpgsql AS $fn$
DECLARE
    v_expires int8;
    v_end int8;
    v_now int8;
BEGIN
    SELECT l.expires_at INTO v_expires FROM {t} l
    WHERE l.namespace = p_ns AND l.name = p_name AND l.token = p_token AND NOT l.freed
    FOR UPDATE;
    IF NOT FOUND THEN
        o_status := 1; RETURN NEXT; RETURN;
    END IF;
    v_now := {now};
    IF v_expires IS NOT NULL AND v_expires <= v_now THEN
        o_status := 1; RETURN NEXT; RETURN;
    END IF;
    IF v_expires IS NULL THEN
        o_status := 2; RETURN NEXT; RETURN;
    END IF;
    v_end := CASE p_mode
        WHEN 0 THEN v_now + p_by
        WHEN 1 THEN GREATEST(v_expires, v_now) + p_by
        ELSE GREATEST(v_expires, v_now + p_by)
    END;
    UPDATE {t} l SET expires_at = v_end WHERE l.namespace = p_ns AND l.name = p_name;
    IF v_end < v_expires THEN
        PERFORM pg_notify('{channel}', {wake});
    END IF;
    o_status := 0; o_expires_in := v_end - v_now;
    RETURN NEXT;
END
$fn$;

UPDATE {meta} SET version = 1 WHERE id = 0;
"#
        )
    }

    /// The migration to version 2: pushed grants. A queue table of waiters, and a `pushed`
    /// column on the lock table (a grant handed over and not yet confirmed by a try). Its
    /// functions (an acquire that queues a waiting claim, a release that hands the lock to
    /// the first live waiter queued) are version 3's, created by the next step of the same
    /// migration. Run inside the migration's transaction, after version 1.
    pub(crate) fn schema_v2(&self) -> String {
        let t = &self.table;
        let q = &self.queue;
        let meta = &self.meta;
        let key = inbox_key(&self.channel);
        format!(
            r#"
ALTER TABLE {t} ADD COLUMN IF NOT EXISTS pushed boolean NOT NULL DEFAULT false;
CREATE TABLE IF NOT EXISTS {q} (
    namespace text COLLATE "C" NOT NULL,
    name      text COLLATE "C" NOT NULL,
    token     text NOT NULL,
    first_try int8 NOT NULL,
    last_try  int8 NOT NULL,
    ttl       int8,
    min_hold  int8,
    owner     text NOT NULL,
    host      text NOT NULL,
    pid       int8 NOT NULL,
    grant_id  text NOT NULL,
    inbox     int4 NOT NULL,
    PRIMARY KEY (namespace, name, token)
);
COMMENT ON TABLE {q} IS 'locksmith waiters queued for a lock: a release hands the lock to the first one tried within 5 s whose listener (backend pid inbox, holding advisory lock ({key}, inbox)) still listens, and notifies <channel>_<inbox>';

UPDATE {meta} SET version = 2 WHERE id = 0;
"#
        )
    }

    /// The migration to version 3: a release notifies the table's channel only when a
    /// waiter that no pushed grant reaches watches the lock. A `watched` column set by such a
    /// waiter's failed try (and by version 1's acquire, which clients not yet upgraded
    /// still call: it is now a wrapper of the current one, queueing nothing) and cleared by
    /// the release that frees the row. Version 2's acquire, with the mark; the release that
    /// clears it is version 4's, created by the next step of the same migration. Run inside
    /// the migration's transaction, after version 2.
    pub(crate) fn schema_v3(&self, schema: &str, table: &str) -> String {
        let t = &self.table;
        let q = &self.queue;
        let meta = &self.meta;
        let channel = &self.channel;
        let f = |suffix: &str| format!("\"{schema}\".\"{table}_{suffix}\"");
        let now = now_expr("p_offset");
        let wake = payload("p_ns", "p_name");
        let acquire = f("acquire");
        let queue = queue_claim(q, "p_");
        let Fragments {
            lock_row,
            held,
            granted,
            ..
        } = Fragments::new(t, channel, &wake, "r.acquired_at", Wake::Watched);
        format!(
            r#"
ALTER TABLE {t} ADD COLUMN IF NOT EXISTS watched boolean NOT NULL DEFAULT false;

-- p_mode: 0 does not queue; 1 queues the claim if the lock is held; 2 does too, and the
-- claim may be queued already (it takes a grant pushed to its token, and leaves the queue
-- when granted). p_inbox: the backend pid of the claimant's listener (0: not listening,
-- so not queued).
CREATE OR REPLACE FUNCTION {acquire}(
{ACQUIRE_PARAMS}, p_mode int4, p_grant_id text, p_inbox int4)
{ACQUIRE_RETURNS}
LANGUAGE plpgsql AS $fn$
DECLARE
    r {t}%ROWTYPE;
    v_now int8;
    v_floor int8;
    v_fence int8;
BEGIN
{lock_row}
    v_now := {now};
    IF NOT r.freed AND (r.expires_at IS NULL OR r.expires_at > v_now) THEN
        IF r.token = p_token AND p_mode = 2 AND r.pushed THEN
            -- A grant a release pushed to this claim: confirmed, with a lease from now.
            UPDATE {t} l SET pushed = false,
                expires_at = CASE WHEN p_ttl IS NULL THEN NULL ELSE v_now + p_ttl END
            WHERE l.namespace = p_ns AND l.name = p_name;
            o_status := 0; o_fence := r.fence; o_now := v_now; o_released := false;
            o_owner := r.owner; o_host := r.host; o_pid := r.pid;
            o_acquired_at := r.acquired_at; o_expires_at := v_now + p_ttl;
            o_min_hold := r.min_hold;
            RETURN NEXT;
            RETURN;
        END IF;
        IF r.token IS DISTINCT FROM p_token AND p_mode > 0 AND p_inbox <> 0 THEN
            {queue}
        END IF;
        -- A waiter watches the lock: the release that frees it notifies the table's channel
        -- (for a waiter not queued, or queued and skipped).
        IF r.token IS DISTINCT FROM p_token AND p_mode > 0 AND NOT r.watched THEN
            UPDATE {t} l SET watched = true WHERE l.namespace = p_ns AND l.name = p_name;
        END IF;
{held}
    END IF;
    SELECT m.fence_floor INTO v_floor FROM {meta} m WHERE m.id = 0;
    v_fence := GREATEST(r.fence + 1, v_now, COALESCE(v_floor, 0) + 1);
    UPDATE {t} l SET token = p_token, owner = p_owner, host = p_host, pid = p_pid,
        fence = v_fence, acquired_at = v_now, expires_at = v_now + p_ttl,
        min_hold = p_min_hold, freed = false, pushed = false
    WHERE l.namespace = p_ns AND l.name = p_name;
    IF p_mode = 2 THEN
        DELETE FROM {q} e WHERE e.namespace = p_ns AND e.name = p_name AND e.token = p_token;
    END IF;
{granted}
END
$fn$;

-- Version 1's acquire, which clients not yet upgraded call: a claim never queued, which
-- watches the lock when it finds it held (such a client may wait for the wake-up).
CREATE OR REPLACE FUNCTION {acquire}(
{ACQUIRE_PARAMS})
{ACQUIRE_RETURNS}
LANGUAGE sql AS $fn$
    SELECT * FROM {acquire}(p_ns, p_name, p_token, p_owner, p_host, p_pid, p_ttl,
                            p_min_hold, p_offset, 1, '', 0)
$fn$;

UPDATE {meta} SET version = 3 WHERE id = 0;
"#
        )
    }

    /// The migration to version 4: a release that takes the releasing process's inbox and
    /// a claim of that process waiting for the lock, and answers with the grant it handed
    /// (the message its notification carries). So a waiter of the releasing process takes
    /// its grant at once, with no notification and no hop through its listener, and tasks
    /// taking turns on a lock need no try of their own. Version 3's release, which clients
    /// not yet upgraded call, becomes a wrapper answering the status alone. Run inside the
    /// migration's transaction, after version 3.
    pub(crate) fn schema_v4(&self, schema: &str, table: &str) -> String {
        let t = &self.table;
        let q = &self.queue;
        let meta = &self.meta;
        let channel = &self.channel;
        let f = |suffix: &str| format!("\"{schema}\".\"{table}_{suffix}\"");
        let now = now_expr("p_offset");
        let wake = payload("p_ns", "p_name");
        let release = f("release");
        let key = inbox_key(channel);
        let (hand_next, hand_queued) = (hand_row(t, "p_next_"), hand_row(t, "e."));
        let queue_next = queue_claim(q, "p_next_");
        let Fragments { kept, freed, .. } =
            Fragments::new(t, channel, &wake, "r.acquired_at", Wake::Watched);
        format!(
            r#"
-- p_inbox: the backend pid of the releasing process's listener (0: not listening).
-- p_next_…: a claim of the releasing process that waits for the lock (p_next_token NULL:
-- none), queued in this step behind the waiters queued already, so the lock is handed to
-- it at once if nobody came first.
-- Answers '0' (released), '1' (kept until acquired_at + min_hold), '2' (the token did not
-- hold the lock; it leaves the queue) or '3 <grant id> <fence> <µs since the waiter's last
-- try>' (handed to the first live waiter queued: the grant its notification carries). A
-- waiter of the releasing process (its inbox is p_inbox) takes the grant from the answer,
-- and is not notified.
CREATE OR REPLACE FUNCTION {release}(
    p_ns text, p_name text, p_token text, p_min_hold int8, p_offset int8, p_inbox int4,
    p_next_token text, p_next_owner text, p_next_host text, p_next_pid int8,
    p_next_ttl int8, p_next_min_hold int8, p_next_grant_id text)
RETURNS text
LANGUAGE plpgsql AS $fn$
DECLARE
    r {t}%ROWTYPE;
    e {q}%ROWTYPE;
    v_now int8;
    v_fence int8;
    v_grant text;
BEGIN
    -- The row is locked by name, not by token: a release racing one that hands the lock to
    -- this token then sees the handed-over row (and releases it), never the old holder's.
    SELECT * INTO r FROM {t} l WHERE l.namespace = p_ns AND l.name = p_name FOR UPDATE;
    IF NOT FOUND OR r.freed OR r.token IS DISTINCT FROM p_token THEN
        DELETE FROM {q} q WHERE q.namespace = p_ns AND q.name = p_name AND q.token = p_token;
        RETURN 2;
    END IF;
    v_now := {now};
    IF r.expires_at IS NOT NULL AND r.expires_at <= v_now THEN
        RETURN 2;
    END IF;
{kept}
    -- The releasing process's claim takes the lock at once when nobody is queued; it is
    -- queued behind the waiters queued otherwise.
    IF p_next_token IS NOT NULL THEN
        IF NOT EXISTS (SELECT 1 FROM {q} q WHERE q.namespace = p_ns AND q.name = p_name) THEN
            v_fence := GREATEST(r.fence + 1, v_now);
            {hand_next}
            RETURN '3 ' || p_next_grant_id || ' ' || v_fence || ' 0';
        END IF;
        {queue_next}
    END IF;
    -- At most a few dead or stale entries are skipped per release; the rest wait for the
    -- next one (or the garbage sweep).
    FOR e IN SELECT * FROM {q} q WHERE q.namespace = p_ns AND q.name = p_name
             ORDER BY q.first_try LIMIT 8
    LOOP
        DELETE FROM {q} q WHERE q.namespace = p_ns AND q.name = p_name AND q.token = e.token;
        -- Only a waiter that tried lately and whose process still listens can take it.
        CONTINUE WHEN v_now - e.last_try > {QUEUE_STALE_US}
            OR pg_try_advisory_xact_lock_shared({key}, e.inbox);
        v_fence := GREATEST(r.fence + 1, v_now);
        {hand_queued}
        v_grant := e.grant_id || ' ' || v_fence || ' ' || (v_now - e.last_try);
        IF e.inbox <> p_inbox THEN
            PERFORM pg_notify('{channel}_' || e.inbox, v_grant || ' ' || {wake});
        END IF;
        RETURN '3 ' || v_grant;
    END LOOP;
{freed}
END
$fn$;

-- Version 3's release, as clients not yet upgraded call it: the status alone, and every
-- grant notified.
CREATE OR REPLACE FUNCTION {release}(
    p_ns text, p_name text, p_token text, p_min_hold int8, p_offset int8)
RETURNS int4
LANGUAGE sql AS $fn$
    SELECT split_part({release}(p_ns, p_name, p_token, p_min_hold, p_offset, 0,
                                NULL, NULL, NULL, NULL, NULL, NULL, NULL), ' ', 1)::int4
$fn$;

UPDATE {meta} SET version = 4 WHERE id = 0;
"#
        )
    }
}
