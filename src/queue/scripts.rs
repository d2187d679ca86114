//! Lua scripts: each runs atomically in Redis, so several processes can share the keys.
//! Every script touches only keys of one prefix, which share one hash tag (see `Keys`), so
//! they run unchanged on a Redis Cluster.
//!
//! Acknowledging an entry also deletes it (XACK + XDEL): the stream holds only jobs not yet
//! done, and its length stays near the work in flight however many jobs have passed.

use std::sync::LazyLock;

use redis::Script;

/// KEYS: jobs. ARGV: pairs of photo id and traceparent ('' for none). Adds one entry per
/// photo, with its traceparent when it has one; returns the entry ids in order.
pub static ENQUEUE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local ids = {}
for i = 1, #ARGV, 2 do
  if ARGV[i + 1] == '' then
    ids[#ids + 1] = redis.call('XADD', KEYS[1], '*', 'photo_id', ARGV[i])
  else
    ids[#ids + 1] = redis.call('XADD', KEYS[1], '*', 'photo_id', ARGV[i],
      'traceparent', ARGV[i + 1])
  end
end
return ids
",
    )
});

/// KEYS: jobs. ARGV: group, entry ids. Acknowledges and deletes the entries.
pub static ACK: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local ids = {}
for i = 2, #ARGV do ids[#ids + 1] = ARGV[i] end
if #ids == 0 then return 0 end
redis.call('XACK', KEYS[1], ARGV[1], unpack(ids))
return redis.call('XDEL', KEYS[1], unpack(ids))
",
    )
});

/// KEYS: delayed, jobs. ARGV: now (ms), limit. Moves due retries onto the stream.
pub static PROMOTE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[2]))
for _, id in ipairs(due) do
  redis.call('XADD', KEYS[2], '*', 'photo_id', id)
  redis.call('ZREM', KEYS[1], id)
end
return #due
",
    )
});

/// KEYS: interactive stream, bulk stream. ARGV: group, consumer, bulk entries owed, count,
/// 1 to fill up with bulk entries (0: interactive and owed ones only). Reads up to `count`
/// new entries without blocking: first the bulk entries owed, then interactive ones, then
/// bulk ones with what is left. Returns {lane, entry id, photo id or '', traceparent or
/// ''} for each.
pub static READ: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local out = {}
local count = tonumber(ARGV[4])
local function take(key, lane, n)
  if n <= 0 then return end
  local reply = redis.call('XREADGROUP', 'GROUP', ARGV[1], ARGV[2], 'COUNT', n, 'STREAMS', key, '>')
  if not reply then return end
  for _, entry in ipairs(reply[1][2]) do
    local photo, trace, fields = '', '', entry[2]
    if fields then
      for i = 1, #fields, 2 do
        if fields[i] == 'photo_id' then photo = fields[i + 1] end
        if fields[i] == 'traceparent' then trace = fields[i + 1] end
      end
    end
    out[#out + 1] = {lane, entry[1], photo, trace}
  end
end
take(KEYS[2], 'bulk', math.min(tonumber(ARGV[3]), count))
take(KEYS[1], 'interactive', count - #out)
if ARGV[5] == '1' then take(KEYS[2], 'bulk', count - #out) end
return out
",
    )
});

/// KEYS: jobs. ARGV: group, entry id, photo id. Re-adds the job, acknowledges and deletes
/// the old entry; returns the new entry's id.
pub static HAND_BACK: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local id = redis.call('XADD', KEYS[1], '*', 'photo_id', ARGV[3])
redis.call('XACK', KEYS[1], ARGV[1], ARGV[2])
redis.call('XDEL', KEYS[1], ARGV[2])
return id
",
    )
});

/// KEYS: jobs, dead. ARGV: group, entry id ('' for none), photo id, reason, max length of
/// the dead stream. Records a dead letter, and acknowledges and deletes the entry.
pub static DEAD_LETTER: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[5], '*', 'photo_id', ARGV[3], 'reason', ARGV[4])
if ARGV[2] ~= '' then
  redis.call('XACK', KEYS[1], ARGV[1], ARGV[2])
  redis.call('XDEL', KEYS[1], ARGV[2])
end
return 1
",
    )
});

/// KEYS: jobs. ARGV: group, consumer, min idle (ms), count. Takes over entries idle that
/// long (XAUTOCLAIM, which also drops entries deleted from the stream from the pending
/// list) and returns {entry id, photo id or '', deliveries, traceparent or ''} for each.
pub static TAKE_OVER: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local reply = redis.call('XAUTOCLAIM', KEYS[1], ARGV[1], ARGV[2], ARGV[3], '0-0', 'COUNT', ARGV[4])
local out = {}
for _, entry in ipairs(reply[2]) do
  local id, fields, photo, trace = entry[1], entry[2], '', ''
  if fields then
    for i = 1, #fields, 2 do
      if fields[i] == 'photo_id' then photo = fields[i + 1] end
      if fields[i] == 'traceparent' then trace = fields[i + 1] end
    end
  end
  local p = redis.call('XPENDING', KEYS[1], ARGV[1], id, id, 1)
  local n = 1
  if p[1] then n = p[1][4] end
  out[#out + 1] = {id, photo, n, trace}
end
return out
",
    )
});

/// KEYS: jobs. ARGV: group, consumer, entry id. Renews the consumer's claim on the entry if
/// it still holds it; returns 1, or 0 when another consumer has taken it over (or it is
/// no longer pending).
pub static HEARTBEAT: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local p = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[3], ARGV[3], 1)
if not p[1] or p[1][2] ~= ARGV[2] then return 0 end
redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[2], 0, ARGV[3], 'JUSTID')
return 1
",
    )
});

/// KEYS: jobs. ARGV: group, idle (ms). Removes consumers that hold no entries and have
/// been idle that long (workers that are gone); returns how many.
pub static PRUNE_CONSUMERS: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local ok, consumers = pcall(redis.call, 'XINFO', 'CONSUMERS', KEYS[1], ARGV[1])
if not ok then return 0 end
local removed = 0
for _, c in ipairs(consumers) do
  local info = {}
  for i = 1, #c, 2 do info[c[i]] = c[i + 1] end
  if tonumber(info['pending']) == 0 and tonumber(info['idle']) >= tonumber(ARGV[2]) then
    redis.call('XGROUP', 'DELCONSUMER', KEYS[1], ARGV[1], info['name'])
    removed = removed + 1
  end
end
return removed
",
    )
});

/// KEYS: jobs. ARGV: group, entry ids. For each entry: 3 when it is pending with a
/// consumer, 1 when it waits in the stream to be delivered, 2 when it is in the stream,
/// was delivered and is pending with nobody, 0 when it is gone. One XPENDING and at most
/// one XRANGE per entry: never a scan.
pub static ENTRY_STATUS: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local last = nil
local ok, groups = pcall(redis.call, 'XINFO', 'GROUPS', KEYS[1])
if ok then
  for _, g in ipairs(groups) do
    local info = {}
    for i = 1, #g, 2 do info[g[i]] = g[i + 1] end
    if info['name'] == ARGV[1] then last = info['last-delivered-id'] end
  end
end
local function seq(id)
  local ms, n = string.match(id, '^(%d+)-(%d+)$')
  return tonumber(ms), tonumber(n)
end
local out = {}
for i = 2, #ARGV do
  local id = ARGV[i]
  local status = 0
  local pending = false
  if last then
    local p = redis.call('XPENDING', KEYS[1], ARGV[1], id, id, 1)
    pending = p[1] ~= nil
  end
  if pending then
    status = 3
  elseif #redis.call('XRANGE', KEYS[1], id, id) > 0 then
    status = 1
    if last then
      local a1, a2 = seq(id)
      local b1, b2 = seq(last)
      if a1 < b1 or (a1 == b1 and a2 <= b2) then status = 2 end
    end
  end
  out[#out + 1] = status
end
return out
",
    )
});

/// KEYS: jobs. ARGV: group, consumer, entry ids. Acknowledges and deletes those of the
/// entries this consumer still holds (a stale attempt must not acknowledge an entry that
/// another consumer has taken over). Returns how many.
pub static RELEASE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local released = 0
for i = 3, #ARGV do
  local p = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[i], ARGV[i], 1)
  if p[1] and p[1][2] == ARGV[2] then
    redis.call('XACK', KEYS[1], ARGV[1], ARGV[i])
    redis.call('XDEL', KEYS[1], ARGV[i])
    released = released + 1
  end
end
return released
",
    )
});

/// KEYS: the lease. ARGV: holder, ttl ms. Takes the lease if free, renews it if `holder`
/// has it; returns 1 while `holder` holds it, else 0.
pub static LEASE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local held = redis.call('GET', KEYS[1])
if not held then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 1
end
if held == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
return 0
",
    )
});
