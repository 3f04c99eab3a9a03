//! A keyspace snapshot as reviewable JSON: every key of a namespace with its type, value and
//! time to live, written by one release and loaded into a fresh `redis-server` to test that
//! the next release upgrades that data in place.

use anyhow::{Context as _, bail};
use redis::AsyncCommands as _;
use serde_json::{Map, Value, json};

/// Every key matching `pattern` (a `SCAN MATCH` pattern), sorted by name: `{"key", "type",
/// "pttl", "value"}` each, where a hash is an object, a list an array in order, a set a
/// sorted array and a sorted set an array of `[member, score]` by score.
///
/// # Errors
/// Redis failed, or a value is not UTF-8 (lease-sync stores text only).
pub async fn dump_keys(
    conn: &mut redis::aio::MultiplexedConnection,
    pattern: &str,
) -> anyhow::Result<Value> {
    let mut names: Vec<String> = Vec::new();
    {
        let mut iter: redis::AsyncIter<'_, String> = conn.scan_match(pattern).await?;
        while let Some(name) = iter.next_item().await {
            names.push(name?);
        }
    }
    names.sort();
    let mut keys = Vec::with_capacity(names.len());
    for name in names {
        let kind: String = redis::cmd("TYPE").arg(&name).query_async(conn).await?;
        let pttl: i64 = conn.pttl(&name).await?;
        let value = match kind.as_str() {
            "string" => Value::String(conn.get(&name).await?),
            "hash" => {
                let fields: std::collections::BTreeMap<String, String> =
                    conn.hgetall(&name).await?;
                Value::Object(
                    fields
                        .into_iter()
                        .map(|(k, v)| (k, Value::String(v)))
                        .collect(),
                )
            }
            "list" => json!(conn.lrange::<_, Vec<String>>(&name, 0, -1).await?),
            "set" => {
                let mut members: Vec<String> = conn.smembers(&name).await?;
                members.sort();
                json!(members)
            }
            "zset" => json!(
                conn.zrange_withscores::<_, Vec<(String, f64)>>(&name, 0, -1)
                    .await?
            ),
            other => bail!("key {name} has type {other}, which snapshots do not hold"),
        };
        keys.push(json!({"key": name, "type": kind, "pttl": pttl, "value": value}));
    }
    Ok(json!({ "keys": keys }))
}

/// Writes every key of `snapshot` (as [`dump_keys`] returns it) with its time to live; keys
/// that had expired by then are skipped.
///
/// # Errors
/// Redis failed, or the snapshot is malformed.
pub async fn load_keys(
    conn: &mut redis::aio::MultiplexedConnection,
    snapshot: &Value,
) -> anyhow::Result<usize> {
    let keys = snapshot["keys"]
        .as_array()
        .context("snapshot has no keys")?;
    for entry in keys {
        let name = entry["key"].as_str().context("key without a name")?;
        let value = &entry["value"];
        let mut pipe = redis::pipe();
        pipe.atomic().del(name).ignore();
        match entry["type"].as_str() {
            Some("string") => {
                pipe.set(name, value.as_str().context("string value")?)
                    .ignore();
            }
            Some("hash") => {
                let fields: &Map<String, Value> = value.as_object().context("hash value")?;
                let pairs: Vec<(&str, &str)> = fields
                    .iter()
                    .map(|(k, v)| Ok((k.as_str(), v.as_str().context("hash field")?)))
                    .collect::<anyhow::Result<_>>()?;
                pipe.hset_multiple(name, &pairs).ignore();
            }
            Some("list") => {
                let items = strings(value)?;
                pipe.rpush(name, items).ignore();
            }
            Some("set") => {
                let items = strings(value)?;
                pipe.sadd(name, items).ignore();
            }
            Some("zset") => {
                let mut items: Vec<(f64, String)> = Vec::new();
                for pair in value.as_array().context("zset value")? {
                    let member = pair[0].as_str().context("zset member")?;
                    let score = pair[1].as_f64().context("zset score")?;
                    items.push((score, member.to_owned()));
                }
                pipe.zadd_multiple(name, &items).ignore();
            }
            other => bail!("key {name} has type {other:?}"),
        }
        if let Some(pttl) = entry["pttl"].as_i64().filter(|ms| *ms > 0) {
            pipe.pexpire(name, pttl).ignore();
        }
        pipe.query_async::<()>(conn).await?;
    }
    Ok(keys.len())
}

fn strings(value: &Value) -> anyhow::Result<Vec<&str>> {
    value
        .as_array()
        .context("array value")?
        .iter()
        .map(|v| v.as_str().context("text item"))
        .collect()
}
