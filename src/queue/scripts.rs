//! Lua scripts: each runs atomically in Redis, so several processes can share the keys.

use std::sync::LazyLock;

use redis::Script;

/// Reads the epoch from KEYS[1], writing ARGV[1] there first if there is none.
const EPOCH_PRELUDE: &str = r"
local epoch = redis.call('GET', KEYS[1])
if not epoch then
  redis.call('SET', KEYS[1], ARGV[1])
  epoch = ARGV[1]
end
";

/// KEYS: epoch. ARGV: a fresh id. Returns the epoch, writing the fresh id if there is none.
pub static EPOCH: LazyLock<Script> =
    LazyLock::new(|| Script::new(&format!("{EPOCH_PRELUDE}return epoch")));

/// KEYS: epoch, jobs. ARGV: a fresh id, then photo ids. Adds one entry per photo and returns
/// the epoch they were published in.
pub static ENQUEUE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(&format!(
        r"{EPOCH_PRELUDE}
for i = 2, #ARGV do
  redis.call('XADD', KEYS[2], '*', 'photo_id', ARGV[i])
end
return epoch"
    ))
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

/// KEYS: jobs. ARGV: group, entry id, photo id. Re-adds the job and acknowledges the entry.
pub static HAND_BACK: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
redis.call('XADD', KEYS[1], '*', 'photo_id', ARGV[3])
return redis.call('XACK', KEYS[1], ARGV[1], ARGV[2])
",
    )
});

/// KEYS: jobs, dead. ARGV: group, entry id, photo id, reason, max length of the dead stream.
pub static DEAD_LETTER: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[5], '*', 'photo_id', ARGV[3], 'reason', ARGV[4])
return redis.call('XACK', KEYS[1], ARGV[1], ARGV[2])
",
    )
});
