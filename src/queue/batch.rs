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
//! The batch script takes `ARGV[1]` = n calls, then each call's number of keys and of
//! arguments (`ARGV[2i]`, `ARGV[2i+1]`), then every call's arguments in order; `KEYS` are
//! every call's keys in order. It answers one `{1, answer}` or `{0, error}` per call. Every key
//! carries the namespace's hash tag, so a batch is one slot on a Redis Cluster too.

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
/// `hexists_shared(key, field)` is `HEXISTS` as a boolean, and `count(key, field)` adds 1 to a
/// counter at once.
pub const ONE_CALL_HELPERS: &str = r"
local function hexists_shared(key, field)
  return redis.call('HEXISTS', key, field) == 1
end
local function count(key, field)
  redis.call('HINCRBY', key, field, 1)
end
";

/// The same helpers within a batch, where they save commands (each costs Redis more in the
/// calling than in the command): `hexists_shared` asks once per key and field for the whole
/// batch — only for fields no call of the batch writes, such as the paused integrations — and
/// `count` adds up the batch's increments, which the driver writes at the end, one `HINCRBY`
/// per counter (whether or not the call that counted failed later, as its other writes stay).
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
local n = tonumber(ARGV[1])
local out = {}
local k, a = 1, 2 + 2 * n
for i = 1, n do
  local nk, na = tonumber(ARGV[2 * i]), tonumber(ARGV[2 * i + 1])
  local keys, args = {}, {}
  for j = 1, nk do keys[j] = KEYS[k + j - 1] end
  for j = 1, na do args[j] = ARGV[a + j - 1] end
  k, a = k + nk, a + na
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

/// One call of a script: its keys and arguments.
#[derive(Debug, Default, Clone)]
pub struct ScriptCall {
    keys: Vec<String>,
    args: Vec<Vec<u8>>,
}

impl ScriptCall {
    /// Adds a key.
    pub fn key(&mut self, key: impl Into<String>) -> &mut Self {
        self.keys.push(key.into());
        self
    }

    /// Adds an argument.
    pub fn arg(&mut self, arg: impl ToRedisArgs) -> &mut Self {
        self.args.extend(arg.to_redis_args());
        self
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
    invocation.arg(batch.len());
    for (call, _) in &batch {
        invocation.arg(call.keys.len()).arg(call.args.len());
    }
    for (call, _) in &batch {
        for key in &call.keys {
            invocation.key(key);
        }
        for arg in &call.args {
            invocation.arg(arg.as_slice());
        }
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
        call.key("{ns}:a").arg("x").arg(7).key("{ns}:b");
        assert_eq!(call.keys, ["{ns}:a", "{ns}:b"]);
        assert_eq!(call.args, [b"x".to_vec(), b"7".to_vec()]);
    }
}
