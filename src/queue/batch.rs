//! Many runs of one script as a single script call.
//!
//! A worker claims and finishes jobs from many slots at once. Each of those is a script that
//! writes, and under `appendfsync always` Redis answers a write only after an `fdatasync`;
//! most of Redis's time per job went to the system calls around those (the script calls, the
//! socket reads and writes, the fsyncs). A [`ScriptBatcher`] sends the calls that arrive while
//! earlier ones are in flight as one call of a batch version of the script, which runs the
//! original once per call, each in its own `pcall`: an error in one (a bug) is that call's
//! error, not the others'. Nothing waits to fill a batch: a call goes out at once unless
//! [`MAX_IN_FLIGHT`] batches are already in flight, and then joins the next.
//!
//! Keys and arguments that most calls of a batch pass alike (the in-flight set, the counters,
//! the limits: about half of what a claim and a finish pass) are marked *shared* when a call
//! is built ([`ScriptCall::shared_key`], [`ScriptCall::shared_arg`]) and go once per batch.
//! Redis reads every argument of a script call and copies it into a Lua string: about 15 % of
//! its time per job in a drain's profile (BENCHMARKS.md).
//!
//! The batch script takes `ARGV[1]` = n calls, `ARGV[2]` = s shapes, `ARGV[3]` = the shared
//! keys, `ARGV[4]` = the shared arguments, then the s shapes, then the shared arguments, then
//! per call the number of its shape followed by its own arguments; `KEYS` are the shared keys,
//! then every call's own keys in order. A shape says, for each key and then each argument of a
//! call, where it comes from: `0`, the call's own next one; `i`, the i-th shared one (for
//! example `0,0,1,2;0,1,0`: two own keys then shared keys 1 and 2; an own argument, shared
//! argument 1, an own one). It answers one `{1, answer}` or `{0, error}` per call. Every key
//! carries the namespace's hash tag, so a batch is one slot on a Redis Cluster too.

use std::borrow::Cow;

use futures::StreamExt as _;
use futures::stream::FuturesUnordered;
use redis::ToRedisArgs;
use tokio::sync::{mpsc, oneshot};

use super::QueueError;
use super::connection::RedisConnection;

/// Batches in flight at once per script; the next calls queue up behind them.
const MAX_IN_FLIGHT: usize = 2;

/// Most calls in one batch.
const MAX_BATCH: usize = 64;

/// Helpers the attempt scripts share, as run alone (one script call per call):
/// `hexists_shared(key, field)` is `HEXISTS` as a boolean, `get_shared(key)` is `GET` (`nil`
/// for no key), `redis_now_ms()` is Redis's clock (`TIME`) in ms, and `count(key, field)` adds
/// 1 to a counter at once.
pub const ONE_CALL_HELPERS: &str = r"
local function hexists_shared(key, field)
  return redis.call('HEXISTS', key, field) == 1
end
local function get_shared(key)
  return redis.call('GET', key) or nil
end
local function redis_now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local function count(key, field)
  redis.call('HINCRBY', key, field, 1)
end
";

/// The same helpers within a batch, where they save commands (each costs Redis more in the
/// calling than in the command): `hexists_shared` asks once per key and field for the whole
/// batch — only for fields no call of the batch writes, such as the paused integrations —
/// `get_shared` reads a key once per batch (only keys no call writes, such as the layout
/// marker), `redis_now_ms` reads the clock once per batch (a batch runs in milliseconds; its
/// users compare it with lock expiries of seconds), and `count` adds up the batch's increments,
/// which the driver writes at the end, one `HINCRBY` per counter (whether or not the call that
/// counted failed later, as its other writes stay).
const BATCH_HELPERS: &str = r"
local hexists_seen = {}
local function hexists_shared(key, field)
  local fields = hexists_seen[key]
  if not fields then
    fields = {}
    hexists_seen[key] = fields
  end
  local seen = fields[field]
  if seen == nil then
    seen = redis.call('HEXISTS', key, field) == 1
    fields[field] = seen
  end
  return seen
end
local got_seen = {}
local function get_shared(key)
  local got = got_seen[key]
  if got == nil then
    got = redis.call('GET', key)
    got_seen[key] = got
  end
  return got or nil
end
local now_seen
local function redis_now_ms()
  if not now_seen then
    local t = redis.call('TIME')
    now_seen = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
  end
  return now_seen
end
local counted = {}
local function count(key, field)
  local fields = counted[key]
  if not fields then
    fields = {}
    counted[key] = fields
  end
  fields[field] = (fields[field] or 0) + 1
end
";

/// Runs the calls of the batch script one by one (see the module documentation).
const DRIVER: &str = r"
local n, nshapes, nkeys, nargs = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local function positions(list)
  local out = {}
  for p in string.gmatch(list, '%d+') do out[#out + 1] = tonumber(p) end
  return out
end
local shapes = {}
for i = 1, nshapes do
  local shape = ARGV[4 + i]
  local split = string.find(shape, ';', 1, true)
  shapes[i] = {positions(string.sub(shape, 1, split - 1)), positions(string.sub(shape, split + 1))}
end
local shared = 4 + nshapes
local k, a = nkeys + 1, shared + nargs + 1
local out = {}
for i = 1, n do
  local shape = shapes[tonumber(ARGV[a])]
  a = a + 1
  -- Numeric loops: Lua 5.1's ipairs costs a function call per element. The tables start as
  -- copies of the shape's lists, so each is allocated once at its size instead of growing
  -- (and rehashing) four or five times: 0.9 µs less per call in a Lua micro-benchmark.
  local from_keys, from_args = shape[1], shape[2]
  local keys, args = {unpack(from_keys)}, {unpack(from_args)}
  for j = 1, #from_keys do
    local from = from_keys[j]
    if from == 0 then
      keys[j] = KEYS[k]
      k = k + 1
    else
      keys[j] = KEYS[from]
    end
  end
  for j = 1, #from_args do
    local from = from_args[j]
    if from == 0 then
      args[j] = ARGV[a]
      a = a + 1
    else
      args[j] = ARGV[shared + from]
    end
  end
  local ok, answer = pcall(run_one, keys, args)
  if ok then
    out[i] = {1, answer}
  elseif type(answer) == 'table' then
    out[i] = {0, tostring(answer.err)}
  else
    out[i] = {0, tostring(answer)}
  end
end
for key, fields in pairs(counted) do
  for field, by in pairs(fields) do
    redis.call('HINCRBY', key, field, by)
  end
end
return out
";

/// The batch version of a script: the batch's helpers (see [`ONE_CALL_HELPERS`]), `prelude`
/// (more shared functions), then `body` as a function of its own `KEYS` and `ARGV`, then the
/// driver.
pub fn batch_script(prelude: &str, body: &str) -> redis::Script {
    redis::Script::new(&format!(
        "{BATCH_HELPERS}\n{prelude}\nlocal function run_one(KEYS, ARGV)\n{body}\nend\n{DRIVER}"
    ))
}

/// One call of a script: its keys and arguments, each the call's own or shared (see the
/// module documentation).
#[derive(Debug, Default, Clone)]
pub struct ScriptCall {
    keys: Vec<(String, Sharing)>,
    args: Vec<(Vec<u8>, Sharing)>,
}

/// Whether a key or argument goes with its call or once per batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Sharing {
    Own,
    Shared,
}

impl ScriptCall {
    /// Adds a key of this call's own.
    pub fn key(&mut self, key: impl Into<String>) -> &mut Self {
        self.keys.push((key.into(), Sharing::Own));
        self
    }

    /// Adds a key that other calls of the batch likely pass too: sent once per batch.
    pub fn shared_key(&mut self, key: impl Into<String>) -> &mut Self {
        self.keys.push((key.into(), Sharing::Shared));
        self
    }

    /// Adds an argument of this call's own.
    pub fn arg(&mut self, arg: impl ToRedisArgs) -> &mut Self {
        self.args
            .extend(arg.to_redis_args().into_iter().map(|a| (a, Sharing::Own)));
        self
    }

    /// Adds an argument that other calls of the batch likely pass too (a constant, a limit):
    /// sent once per batch.
    pub fn shared_arg(&mut self, arg: impl ToRedisArgs) -> &mut Self {
        self.args.extend(
            arg.to_redis_args()
                .into_iter()
                .map(|a| (a, Sharing::Shared)),
        );
        self
    }
}

/// The `KEYS` and `ARGV` of one call of the batch script (see the module documentation).
#[derive(Debug, Default, PartialEq, Eq)]
struct BatchInvocation<'a> {
    keys: Vec<&'a str>,
    args: Vec<Cow<'a, [u8]>>,
}

/// Lays out `calls` as one call of the batch script.
fn encode<'a>(calls: impl Iterator<Item = &'a ScriptCall> + Clone) -> BatchInvocation<'a> {
    // Few distinct shared values and shapes per batch: a linear search beats hashing here.
    let mut shared_keys: Vec<&str> = Vec::new();
    let mut shared_args: Vec<&[u8]> = Vec::new();
    let mut shapes: Vec<String> = Vec::new();
    let mut own_keys: Vec<&str> = Vec::new();
    let mut per_call: Vec<Cow<'a, [u8]>> = Vec::new();
    let mut n = 0_usize;
    for call in calls {
        n += 1;
        let mut shape = String::new();
        for (i, (key, sharing)) in call.keys.iter().enumerate() {
            if i > 0 {
                shape.push(',');
            }
            let from = match sharing {
                Sharing::Own => {
                    own_keys.push(key);
                    0
                }
                Sharing::Shared => position(&mut shared_keys, key.as_str()),
            };
            shape.push_str(&from.to_string());
        }
        shape.push(';');
        let mut own_args = Vec::new();
        for (i, (arg, sharing)) in call.args.iter().enumerate() {
            if i > 0 {
                shape.push(',');
            }
            let from = match sharing {
                Sharing::Own => {
                    own_args.push(Cow::Borrowed(arg.as_slice()));
                    0
                }
                Sharing::Shared => position(&mut shared_args, arg.as_slice()),
            };
            shape.push_str(&from.to_string());
        }
        let shape_number = match shapes.iter().position(|s| *s == shape) {
            Some(i) => i + 1,
            None => {
                shapes.push(shape);
                shapes.len()
            }
        };
        per_call.push(Cow::Owned(shape_number.to_string().into_bytes()));
        per_call.extend(own_args);
    }
    let mut args: Vec<Cow<'a, [u8]>> = [n, shapes.len(), shared_keys.len(), shared_args.len()]
        .iter()
        .map(|count| Cow::Owned(count.to_string().into_bytes()))
        .collect();
    args.extend(shapes.into_iter().map(|s| Cow::Owned(s.into_bytes())));
    args.extend(shared_args.into_iter().map(Cow::Borrowed));
    args.extend(per_call);
    shared_keys.extend(own_keys);
    BatchInvocation {
        keys: shared_keys,
        args,
    }
}

/// The 1-based position of `value` in `list`, added at the end if absent.
fn position<'a, T: PartialEq + ?Sized>(list: &mut Vec<&'a T>, value: &'a T) -> usize {
    match list.iter().position(|v| *v == value) {
        Some(i) => i + 1,
        None => {
            list.push(value);
            list.len()
        }
    }
}

type Reply = oneshot::Sender<Result<redis::Value, QueueError>>;

/// Sends the calls of one script in batches (see the module documentation). Cheap to clone;
/// the task behind it ends once every clone is gone.
#[derive(Debug, Clone)]
pub struct ScriptBatcher {
    calls: mpsc::UnboundedSender<(ScriptCall, Reply)>,
}

impl ScriptBatcher {
    /// A batcher running `batch` (made by [`batch_script`]) over `conn`. Must be called
    /// within a tokio runtime: it spawns the task that sends the batches.
    pub fn spawn(conn: RedisConnection, batch: redis::Script) -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(send_batches(conn, batch, rx));
        Self { calls: tx }
    }

    /// Runs `call` in the next batch and returns its answer.
    pub async fn call(&self, call: ScriptCall) -> Result<redis::Value, QueueError> {
        let (tx, rx) = oneshot::channel();
        let gone = || QueueError::Protocol("the script batcher stopped".into());
        self.calls.send((call, tx)).map_err(|_| gone())?;
        rx.await.map_err(|_| gone())?
    }
}

async fn send_batches(
    conn: RedisConnection,
    script: redis::Script,
    mut calls: mpsc::UnboundedReceiver<(ScriptCall, Reply)>,
) {
    let mut in_flight = FuturesUnordered::new();
    loop {
        tokio::select! {
            Some(()) = in_flight.next(), if !in_flight.is_empty() => {}
            first = calls.recv(), if in_flight.len() < MAX_IN_FLIGHT => {
                let Some(first) = first else { break };
                let mut batch = vec![first];
                while batch.len() < MAX_BATCH {
                    match calls.try_recv() {
                        Ok(call) => batch.push(call),
                        Err(_) => break,
                    }
                }
                in_flight.push(send_batch(conn.clone(), &script, batch));
            }
        }
    }
    while in_flight.next().await.is_some() {}
}

async fn send_batch(
    mut conn: RedisConnection,
    script: &redis::Script,
    batch: Vec<(ScriptCall, Reply)>,
) {
    let mut invocation = script.prepare_invoke();
    let encoded = encode(batch.iter().map(|(call, _)| call));
    for key in &encoded.keys {
        invocation.key(*key);
    }
    for arg in &encoded.args {
        invocation.arg(arg.as_ref());
    }
    let answer: Result<Vec<redis::Value>, QueueError> = invocation
        .invoke_async(&mut conn)
        .await
        .map_err(QueueError::from);
    match answer {
        Ok(answers) if answers.len() == batch.len() => {
            for ((_, reply), answer) in batch.into_iter().zip(answers) {
                let _ = reply.send(one_answer(answer));
            }
        }
        Ok(answers) => {
            let e = QueueError::Protocol(format!(
                "a batch of {} script calls got {} answers",
                batch.len(),
                answers.len()
            ));
            for (_, reply) in batch {
                let _ = reply.send(Err(QueueError::Protocol(e.to_string())));
            }
        }
        Err(QueueError::Redis(e)) => {
            for (_, reply) in batch {
                let _ = reply.send(Err(QueueError::Redis(e.clone())));
            }
        }
        Err(e) => {
            for (_, reply) in batch {
                let _ = reply.send(Err(QueueError::Protocol(e.to_string())));
            }
        }
    }
}

/// One call's `{1, answer}` or `{0, error}`.
fn one_answer(answer: redis::Value) -> Result<redis::Value, QueueError> {
    let redis::Value::Array(mut parts) = answer else {
        return Err(QueueError::Protocol(format!(
            "a batched script call answered {answer:?}"
        )));
    };
    let value = if parts.len() > 1 {
        parts.swap_remove(1)
    } else {
        redis::Value::Nil
    };
    match parts.first() {
        Some(redis::Value::Int(1)) => Ok(value),
        _ => Err(QueueError::Protocol(format!(
            "a batched script call failed: {}",
            match value {
                redis::Value::BulkString(bytes) => String::from_utf8_lossy(&bytes).into_owned(),
                other => format!("{other:?}"),
            }
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_call_answer_is_unwrapped_or_its_error_reported() {
        let ok = redis::Value::Array(vec![
            redis::Value::Int(1),
            redis::Value::BulkString(b"delivered".to_vec()),
        ]);
        assert_eq!(
            one_answer(ok).expect("an answer"),
            redis::Value::BulkString(b"delivered".to_vec())
        );
        // A Lua nil answer drops out of the pair.
        let nil = redis::Value::Array(vec![redis::Value::Int(1)]);
        assert_eq!(one_answer(nil).expect("an answer"), redis::Value::Nil);
        let failed = redis::Value::Array(vec![
            redis::Value::Int(0),
            redis::Value::BulkString(b"ERR boom".to_vec()),
        ]);
        let e = one_answer(failed).expect_err("an error");
        assert!(e.to_string().contains("ERR boom"), "{e}");
        assert!(one_answer(redis::Value::Int(3)).is_err());
    }

    #[test]
    fn a_call_keeps_its_keys_and_arguments_in_order() {
        let mut call = ScriptCall::default();
        call.key("{ns}:a")
            .arg("x")
            .shared_arg(7)
            .shared_key("{ns}:b");
        assert_eq!(
            call.keys,
            [
                ("{ns}:a".to_owned(), Sharing::Own),
                ("{ns}:b".to_owned(), Sharing::Shared)
            ]
        );
        assert_eq!(
            call.args,
            [
                (b"x".to_vec(), Sharing::Own),
                (b"7".to_vec(), Sharing::Shared)
            ]
        );
    }

    fn text(args: &[Cow<'_, [u8]>]) -> Vec<String> {
        args.iter()
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect()
    }

    #[test]
    fn shared_values_go_once_per_batch_and_calls_alike_share_a_shape() {
        let call = |own: &str, limit: u64| {
            let mut call = ScriptCall::default();
            call.key(format!("{{ns}}:{own}"))
                .shared_key("{ns}:stats")
                .arg(own)
                .shared_arg(limit)
                .shared_arg("")
                .arg("");
            call
        };
        let calls = [call("a", 5), call("b", 5), call("c", 9)];
        let encoded = encode(calls.iter());
        assert_eq!(encoded.keys, ["{ns}:stats", "{ns}:a", "{ns}:b", "{ns}:c"]);
        assert_eq!(
            text(&encoded.args),
            [
                // 3 calls, 2 shapes, 1 shared key, 3 shared arguments
                "3",
                "2",
                "1",
                "3", //
                "0,1;0,1,2,0",
                "0,1;0,3,2,0", // the shapes
                "5",
                "",
                "9", // the shared arguments
                "1",
                "a",
                "", // call 1: shape 1, own arguments
                "1",
                "b",
                "", //
                "2",
                "c",
                "",
            ]
        );
    }

    #[test]
    fn a_call_without_keys_or_arguments_has_an_empty_shape() {
        let calls = [ScriptCall::default()];
        let encoded = encode(calls.iter());
        assert!(encoded.keys.is_empty());
        assert_eq!(text(&encoded.args), ["1", "1", "0", "0", ";", "1"]);
    }
}
