//! The Lua scripts of the Redis store. Each one runs atomically on the server, is sent by
//! `EVALSHA` (redis-rs loads it again on `NOSCRIPT`) and costs one round trip.
//!
//! Layout of one lock (see the [module docs](super)): a hash at the lock key with the fields
//! `tok` (absent once released under `min_hold`), `owner`, `host`, `pid`, `fence`, `at`
//! (grant time, µs since the Unix epoch on the server's clock), `mh` (`min_hold` in µs,
//! empty when none) and `w` (set by a try that found the lock held: the release that frees
//! the lock publishes a wake-up only then; a hand-over keeps it, for waiters not queued);
//! its lease is the key's own TTL (`PEXPIRE`), so Redis drops the key
//! when the lease ends. The fence key (`…}f`) keeps the name's last fence for a while after
//! the lock is gone, so fences keep increasing when the server's clock steps back.
//!
//! Waiters that will take a pushed grant (`Claim::queue`) are queued when they find the lock
//! held: the queue key (`…}q`, a sorted set of tokens by first try) keeps their order, the
//! entries key (`…}e`, a hash by token) what a grant needs — `stamp ttl min_hold pid id
//! inbox owner_len owner host`, where `stamp` is the server's time of the waiter's last try
//! (µs), `id` the token's public grant id and `inbox` its process's subscription. A release
//! hands the lock to the first entry tried within the stale limit whose process still
//! listens: it publishes `id fence µs-since-stamp` on the name's channel suffixed with
//! `:<inbox>`, and only if a subscriber got it does the lock take the waiter's fields and a
//! `pg` flag (a grant not yet confirmed by a try). A waiter whose process died is skipped.
//! Both queue keys expire [`QUEUE_LIFE`](super::QUEUE_LIFE) after the last waiter joined.
//!
//! Numbers cross the Lua boundary as strings formatted with `%.0f` (Lua 5.1 numbers are
//! doubles; `tostring` would print a fence in exponent form).

use std::sync::LazyLock;

use redis::Script;

/// Shared helpers prepended to every script.
const PRELUDE: &str = r#"
local function now_us()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000000 + tonumber(t[2])
end
local function num(x) return string.format('%.0f', x) end
-- PEXPIRE counts from the server's time truncated to the millisecond (in a script: the
-- script's start), so a lease of `ms` could end up to 1 ms before `ms` after the grant;
-- one more millisecond keeps every lease at least as long as the guard believes.
local function lease(key, ms) redis.call('PEXPIRE', key, num(tonumber(ms) + 1)) end
local function info(key, now)
  local v = redis.call('HMGET', key, 'owner', 'host', 'pid', 'fence', 'at', 'mh', 'tok')
  if not v[4] then return nil end
  local released = '0'
  if not v[7] then released = '1' end
  local pttl = redis.call('PTTL', key)
  return {v[1] or '', v[2] or '', v[3] or '0', v[4], v[5] or num(now), v[6] or '', released,
          tostring(pttl), num(now)}
end
local function publish(channel, sharded, message)
  if sharded == '1' then return redis.call('SPUBLISH', channel, message) end
  return redis.call('PUBLISH', channel, message)
end
local function wake(channel, sharded) publish(channel, sharded, '') end
"#;

/// Grants every claim or none. KEYS: lock and fence key of each claim, in pairs; with a
/// queue mode, one claim and then its queue and entries keys. ARGV: fence-key lifetime (ms),
/// queue mode ('': none; '1': queue the claim if held; '2': the same, and it may be queued
/// already), grant id, queue lifetime (ms), inbox, then per claim: token, owner, host, pid, ttl
/// (ms, empty: never expires), min_hold (µs or empty). Returns `{'ok', fence…}`,
/// `{'mine', i}` or `{'held', i, info…}` (1-based claim index); a claim found held marks the
/// lock watched (`w`). A claim that finds a grant pushed to its token takes it:
/// `{'ok', fence}`, its lease set anew from now.
const ACQUIRE: &str = r#"
local now = now_us()
local at = num(now)
local mode = ARGV[2]
local n = #KEYS / 2
if mode ~= '' then n = 1 end
for i = 1, n do
  local key = KEYS[2 * i - 1]
  if redis.call('EXISTS', key) == 1 then
    local base = 5 + (i - 1) * 6
    if redis.call('HGET', key, 'tok') == ARGV[base + 1] then
      -- Only a wait that has tried before (and so may have been queued) takes a grant
      -- pushed to its token; a new acquire with the holder's own token is told 'mine'.
      if mode == '2' and redis.call('HGET', key, 'pg') == '1' then
        redis.call('HDEL', key, 'pg')
        if ARGV[base + 5] ~= '' then lease(key, ARGV[base + 5]) end
        return {'ok', redis.call('HGET', key, 'fence')}
      end
      return {'mine', tostring(i)}
    end
    local r = info(key, now)
    if r then
      -- Whoever found the lock held may wait for the wake-up of the release that frees it.
      redis.call('HSETNX', key, 'w', '1')
      if mode ~= '' then
        local owner = ARGV[base + 2]
        redis.call('HSET', KEYS[4], ARGV[base + 1], at .. ' ' .. ARGV[base + 5] .. ' ' ..
                   ARGV[base + 6] .. ' ' .. ARGV[base + 4] .. ' ' .. ARGV[3] .. ' ' .. ARGV[5] ..
                   ' ' .. #owner .. ' ' .. owner .. ARGV[base + 3])
        redis.call('ZADD', KEYS[3], 'NX', at, ARGV[base + 1])
        redis.call('PEXPIRE', KEYS[3], ARGV[4])
        redis.call('PEXPIRE', KEYS[4], ARGV[4])
      end
      table.insert(r, 1, tostring(i))
      table.insert(r, 1, 'held')
      return r
    end
    -- A hash without a fence is no lock of ours (a partial write by someone else): take
    -- it over.
    redis.call('DEL', key)
  end
end
local fences = {'ok'}
for i = 1, n do
  local key, fkey = KEYS[2 * i - 1], KEYS[2 * i]
  local base = 5 + (i - 1) * 6
  local last = tonumber(redis.call('GET', fkey) or '0') or 0
  -- `now + i - 1`: the locks of one call get distinct fences too.
  local fence = math.max(last + 1, now + i - 1)
  local f = num(fence)
  redis.call('HSET', key, 'tok', ARGV[base + 1], 'owner', ARGV[base + 2], 'host', ARGV[base + 3],
             'pid', ARGV[base + 4], 'fence', f, 'at', at, 'mh', ARGV[base + 6])
  if ARGV[base + 5] ~= '' then lease(key, ARGV[base + 5]) end
  redis.call('SET', fkey, f, 'PX', ARGV[1])
  table.insert(fences, f)
end
if mode == '2' and redis.call('HDEL', KEYS[4], ARGV[6]) == 1 then
  redis.call('ZREM', KEYS[3], ARGV[6])
end
return fences
"#;

/// Releases, hands the lock to the first queued waiter, or keeps it until `at + min_hold`.
/// KEYS: lock, fence, queue and entries key. ARGV: token, min_hold (µs or empty), wake
/// channel, sharded ('1'/'0'), fence-key lifetime (ms), stale limit (µs), the releasing
/// process's inbox, then a claim of the releasing process that waits for the lock, queued
/// in this step ('' when none: its token, then its queue entry without the leading stamp),
/// and the queue lifetime (ms). A release that frees the lock, or keeps it for `min_hold`,
/// publishes a wake-up on the wake channel only if the lock is marked watched (`w`).
/// Returns 'released', 'handed <grant>' (the grant's message,
/// published to the new holder unless it waits in the releasing process), 'kept' or
/// 'nothere'; 'nothere' takes the token off the queue.
const RELEASE: &str = r#"
local function last_fence() return tonumber(redis.call('GET', KEYS[2]) or '0') or 0 end
-- Grants the lock to a queued claim (its entry's fields; `rest` is owner then host) with
-- fence `f` (minted now if nil), as a grant not yet confirmed by a try; returns the fence.
local function hand(tok, ttl, mh, pid, olen, rest, now, f)
  f = f or num(math.max(last_fence() + 1, now))
  local ol = tonumber(olen)
  redis.call('HSET', KEYS[1], 'tok', tok, 'owner', string.sub(rest, 1, ol),
             'host', string.sub(rest, ol + 1), 'pid', pid, 'fence', f, 'at', num(now),
             'mh', mh, 'pg', '1')
  if ttl == '' then redis.call('PERSIST', KEYS[1]) else lease(KEYS[1], ttl) end
  redis.call('SET', KEYS[2], f, 'PX', ARGV[5])
  return f
end
local held = redis.call('HMGET', KEYS[1], 'tok', 'w')
if held[1] ~= ARGV[1] then
  if redis.call('HDEL', KEYS[4], ARGV[1]) == 1 then redis.call('ZREM', KEYS[3], ARGV[1]) end
  return 'nothere'
end
-- Nobody found the lock held since it was granted: nobody waits for a wake-up.
local watched = held[2] == '1'

local now = nil
if ARGV[2] ~= '' then
  now = now_us()
  local at = tonumber(redis.call('HGET', KEYS[1], 'at') or '0') or 0
  local keep = at + tonumber(ARGV[2])
  if keep > now then
    redis.call('HDEL', KEYS[1], 'tok')
    lease(KEYS[1], math.ceil((keep - now) / 1000))
    if watched then wake(ARGV[3], ARGV[4]) end
    return 'kept'
  end
end
-- A claim of the releasing process that waits for the lock takes it at once when nobody is
-- queued, and is queued behind the others otherwise.
if ARGV[8] ~= '' and redis.call('EXISTS', KEYS[3]) == 0 then
  now = now or now_us()
  local ttl, mh, pid, id, _, olen, rest =
    string.match(ARGV[9], '^(%d*) (%d*) (%d+) (%x+) (%x+) (%d+) (.*)$')
  return 'handed ' .. id .. ' ' .. hand(ARGV[8], ttl, mh, pid, olen, rest, now) .. ' 0'
end
if ARGV[8] ~= '' then
  now = now or now_us()
  redis.call('HSET', KEYS[4], ARGV[8], num(now) .. ' ' .. ARGV[9])
  redis.call('ZADD', KEYS[3], 'NX', num(now), ARGV[8])
  redis.call('PEXPIRE', KEYS[3], ARGV[10])
  redis.call('PEXPIRE', KEYS[4], ARGV[10])
end
-- At most a few stale entries are skipped per release; the rest wait for the next one.
for _ = 1, 8 do
  local head = redis.call('ZRANGE', KEYS[3], 0, 0)[1]
  if not head then break end
  redis.call('ZREM', KEYS[3], head)
  local e = redis.call('HGET', KEYS[4], head)
  if e then
    redis.call('HDEL', KEYS[4], head)
    now = now or now_us()
    local stamp, ttl, mh, pid, id, inbox, olen, rest =
      string.match(e, '^(%d+) (%d*) (%d*) (%d+) (%x+) (%x+) (%d+) (.*)$')
    if stamp and now - tonumber(stamp) <= tonumber(ARGV[6]) then
      local f = num(math.max(last_fence() + 1, now))
      local message = id .. ' ' .. f .. ' ' .. num(now - tonumber(stamp))
      -- Only a process that still listens can take the grant. The releasing process (its
      -- inbox is ARGV[7]) does, and takes it from the answer: nothing is published.
      if inbox == ARGV[7] or publish(ARGV[3] .. ':' .. inbox, ARGV[4], message) > 0 then
        hand(head, ttl, mh, pid, olen, rest, now, f)
        return 'handed ' .. message
      end
    end
  end
end
redis.call('DEL', KEYS[1])
if watched then wake(ARGV[3], ARGV[4]) end
return 'released'
"#;

/// Moves the lease. KEYS: lock key. ARGV: token, mode ('set', 'add', 'atleast'), duration
/// (ms), wake channel, sharded. Returns `{'ok', ttl_ms}`, `{'nothere'}` or `{'forever'}`.
const EXTEND: &str = r#"
if redis.call('HGET', KEYS[1], 'tok') ~= ARGV[1] then return {'nothere'} end
local pttl = redis.call('PTTL', KEYS[1])
if pttl == -1 then return {'forever'} end
if pttl < 0 then return {'nothere'} end
local d = tonumber(ARGV[3])
local new
if ARGV[2] == 'set' then new = d
elseif ARGV[2] == 'add' then new = pttl + d
else new = math.max(pttl, d) end
lease(KEYS[1], new)
if new < pttl then wake(ARGV[4], ARGV[5]) end
return {'ok', num(new)}
"#;

/// What anyone may see of locks. KEYS: lock keys. ARGV: a token (empty: anyone's). Returns,
/// per key, `{info…}` or `{}` (no lock, or not held by the token).
const INFO: &str = r#"
local now = now_us()
local out = {}
for i = 1, #KEYS do
  local r = nil
  if ARGV[1] == '' or redis.call('HGET', KEYS[i], 'tok') == ARGV[1] then r = info(KEYS[i], now) end
  out[i] = r or {}
end
return out
"#;

/// Removes locks whoever holds them and wakes their waiters. KEYS: lock keys. ARGV: sharded,
/// then the wake channel of each key. Returns, per key, 1 if a lock was there.
const CLEAR: &str = r#"
local out = {}
for i = 1, #KEYS do
  out[i] = redis.call('DEL', KEYS[i])
  if out[i] == 1 then wake(ARGV[i + 1], ARGV[1]) end
end
return out
"#;

/// django-lockmgr's set/renew. KEYS: lock and fence key of each claim, in pairs. ARGV:
/// create, renew, fail ('1'/'0'), ttl (ms, empty: never expires), fence-key lifetime (ms),
/// then per claim: token, owner, host, pid, min_hold. Returns `{'locked', i, info…}` when
/// `fail` and claim i is held (nothing changed), else per claim
/// `{action, info…}` flattened with a leading count of info fields: for each claim
/// `action` ('created', 'renewed', 'skip_renew', 'skip_create') then 9 info fields (empty
/// strings when there is no lock).
const SET_LOCKS: &str = r#"
local now = now_us()
local n = #KEYS / 2
local create, renew, fail, ttl = ARGV[1] == '1', ARGV[2] == '1', ARGV[3] == '1', ARGV[4]
local held = {}
for i = 1, n do
  held[i] = redis.call('EXISTS', KEYS[2 * i - 1]) == 1
  if held[i] and fail then
    local r = info(KEYS[2 * i - 1], now) or {'', '', '0', '0', num(now), '', '0', '-1', num(now)}
    table.insert(r, 1, tostring(i))
    table.insert(r, 1, 'locked')
    return r
  end
end
local out = {'done'}
for i = 1, n do
  local key, fkey = KEYS[2 * i - 1], KEYS[2 * i]
  local base = 5 + (i - 1) * 5
  local action
  if held[i] and renew then
    action = 'renewed'
    if ttl == '' then
      redis.call('PERSIST', key)
    else
      local pttl = redis.call('PTTL', key)
      if pttl >= 0 and pttl < tonumber(ttl) then lease(key, ttl) end
    end
  elseif held[i] then
    action = 'skip_renew'
  elseif create then
    action = 'created'
    local last = tonumber(redis.call('GET', fkey) or '0') or 0
    local f = num(math.max(last + 1, now))
    redis.call('HSET', key, 'tok', ARGV[base + 1], 'owner', ARGV[base + 2], 'host', ARGV[base + 3],
               'pid', ARGV[base + 4], 'fence', f, 'at', num(now), 'mh', ARGV[base + 5])
    if ttl ~= '' then lease(key, ttl) end
    redis.call('SET', fkey, f, 'PX', ARGV[5])
  else
    action = 'skip_create'
  end
  table.insert(out, action)
  local r = info(key, now) or {'', '', '', '', '', '', '', '', ''}
  for j = 1, 9 do table.insert(out, r[j]) end
end
return out
"#;

fn script(body: &str) -> Script {
    Script::new(&format!("{PRELUDE}{body}"))
}

pub(super) static ACQUIRE_SCRIPT: LazyLock<Script> = LazyLock::new(|| script(ACQUIRE));
pub(super) static RELEASE_SCRIPT: LazyLock<Script> = LazyLock::new(|| script(RELEASE));
pub(super) static EXTEND_SCRIPT: LazyLock<Script> = LazyLock::new(|| script(EXTEND));
pub(super) static INFO_SCRIPT: LazyLock<Script> = LazyLock::new(|| script(INFO));
pub(super) static CLEAR_SCRIPT: LazyLock<Script> = LazyLock::new(|| script(CLEAR));
pub(super) static SET_LOCKS_SCRIPT: LazyLock<Script> = LazyLock::new(|| script(SET_LOCKS));
