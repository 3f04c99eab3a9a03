//! Script calls sent in batches (`lease_sync::queue::batch`), as the worker sends its claims
//! and finishes: against a real redis-server.

use std::time::Duration;

use lease_sync::queue::batch::{ScriptBatcher, ScriptCall, batch_script};

use crate::support::*;

/// Calls sent at once go out as a few script calls, each call answered on its own; a call
/// that fails (a Redis error inside the script) fails alone, and the others take effect.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_calls_share_script_calls_and_a_failing_call_fails_alone() {
    const CALLS: usize = 30;
    const FAILING: usize = 7;
    let redis = RedisServer::start().await;
    let config = test_config(&redis.url(), &namespace(), "http://127.0.0.1:1");
    let conn = lease_sync::queue::connect(&config.redis).expect("a connection");
    let body = r"
if ARGV[1] == 'boom' then return redis.call('NO-SUCH-COMMAND') end
redis.call('INCR', KEYS[1])
return {ARGV[1], #KEYS, #ARGV}";
    let batcher = ScriptBatcher::spawn(conn, batch_script("", body));
    let calls = (0..CALLS).map(|i| {
        let mut call = ScriptCall::default();
        call.key("{t}:count")
            .arg(if i == FAILING {
                "boom".to_owned()
            } else {
                format!("call-{i}")
            })
            .arg(i);
        batcher.call(call)
    });
    let answers = tokio::time::timeout(Duration::from_secs(20), futures::future::join_all(calls))
        .await
        .expect("every call answered");

    for (i, answer) in answers.into_iter().enumerate() {
        if i == FAILING {
            let e = answer.expect_err("the failing call fails");
            assert!(e.to_string().contains("Unknown Redis command"), "{e}");
            continue;
        }
        let (arg, keys, args): (String, i64, i64) =
            ::redis::from_redis_value(answer.expect("an answer")).expect("its own answer");
        assert_eq!((arg, keys, args), (format!("call-{i}"), 1, 2));
    }
    assert_eq!(
        redis.command(&["GET", "{t}:count"]).await,
        (CALLS - 1).to_string(),
        "every call but the failing one took effect"
    );
    // At most two batches are in flight; the rest wait and go out together.
    let stats = redis.command(&["INFO", "commandstats"]).await;
    let script_calls: u64 = stats
        .lines()
        .filter(|l| l.starts_with("cmdstat_evalsha:") || l.starts_with("cmdstat_eval:"))
        .filter_map(|l| {
            l.split(['=', ','])
                .nth(1)
                .and_then(|n| n.parse::<u64>().ok())
        })
        .sum();
    assert!(
        (1..=10).contains(&script_calls),
        "{CALLS} calls took {script_calls} script calls:\n{stats}"
    );
}

/// The helpers a batch gives its calls: `count` adds up the calls' increments and the batch
/// writes each counter once (one `HINCRBY` per counter and script call), a failing call's
/// count included (its other writes stay too); `hexists_shared` asks Redis once per key and
/// field for the whole batch.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_writes_each_counter_once_and_asks_a_shared_field_once() {
    const CALLS: usize = 40;
    let redis = RedisServer::start().await;
    redis.command(&["HSET", "{t}:paused", "int-1", "x"]).await;
    let config = test_config(&redis.url(), &namespace(), "http://127.0.0.1:1");
    let conn = lease_sync::queue::connect(&config.redis).expect("a connection");
    let body = r"
count(KEYS[1], 'calls')
if ARGV[1] == 'boom' then return redis.call('NO-SUCH-COMMAND') end
if hexists_shared(KEYS[2], 'int-1') then count(KEYS[1], 'paused') end
if hexists_shared(KEYS[2], 'int-2') then count(KEYS[1], 'wrong') end
return 1";
    let batcher = ScriptBatcher::spawn(conn, batch_script("", body));
    let calls = (0..CALLS).map(|i| {
        let mut call = ScriptCall::default();
        call.key("{t}:stats")
            .key("{t}:paused")
            .arg(if i == 3 { "boom" } else { "ok" });
        batcher.call(call)
    });
    let answers = tokio::time::timeout(Duration::from_secs(20), futures::future::join_all(calls))
        .await
        .expect("every call answered");
    assert_eq!(answers.iter().filter(|a| a.is_err()).count(), 1);

    assert_eq!(
        redis.command(&["HGET", "{t}:stats", "calls"]).await,
        CALLS.to_string()
    );
    assert_eq!(
        redis.command(&["HGET", "{t}:stats", "paused"]).await,
        (CALLS - 1).to_string()
    );
    assert_eq!(
        redis.command(&["HEXISTS", "{t}:stats", "wrong"]).await,
        "int(0)"
    );
    let stats = redis.command(&["INFO", "commandstats"]).await;
    let calls_of = |command: &str| -> u64 {
        stats
            .lines()
            .find(|l| l.starts_with(&format!("cmdstat_{command}:")))
            .and_then(|l| l.split(['=', ',']).nth(1)?.parse().ok())
            .unwrap_or(0)
    };
    let script_calls = calls_of("evalsha") + calls_of("eval");
    // Two counters per script call at most; two fields asked per script call at most.
    assert!(
        calls_of("hincrby") <= 2 * script_calls && calls_of("hexists") <= 2 * script_calls,
        "{CALLS} calls in {script_calls} script calls:\n{stats}"
    );
    // At most two batches are in flight; the rest wait and go out together.
    assert!(
        (1..=10).contains(&script_calls),
        "{CALLS} calls took {script_calls} script calls"
    );
}

/// Keys and arguments marked shared go once per batch, yet every call sees exactly the keys
/// and arguments it was given, in its order: shared values that differ between calls, calls
/// of different shapes (an optional key and argument more), empty arguments and binary ones.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_call_sees_its_own_and_shared_values_in_its_order() {
    const CALLS: usize = 50;
    let redis = RedisServer::start().await;
    let config = test_config(&redis.url(), &namespace(), "http://127.0.0.1:1");
    let conn = lease_sync::queue::connect(&config.redis).expect("a connection");
    let body = r"return {KEYS, ARGV}";
    let batcher = ScriptBatcher::spawn(conn, batch_script("", body));
    let expected = |i: usize| -> (Vec<String>, Vec<Vec<u8>>) {
        let mut keys = vec![
            format!("{{t}}:own:{i}"),
            "{t}:shared".to_owned(),
            format!("{{t}}:group:{}", i % 3),
        ];
        let mut args = vec![
            format!("arg-{i}").into_bytes(),
            (i % 2).to_string().into_bytes(),
            Vec::new(),
            vec![0, 255, b';', b','],
        ];
        if i.is_multiple_of(4) {
            keys.push(format!("{{t}}:extra:{i}"));
            args.push(b"extra".to_vec());
        }
        (keys, args)
    };
    let calls = (0..CALLS).map(|i| {
        let mut call = ScriptCall::default();
        call.key(format!("{{t}}:own:{i}"))
            .shared_key("{t}:shared")
            .shared_key(format!("{{t}}:group:{}", i % 3))
            .arg(format!("arg-{i}"))
            .shared_arg(i % 2)
            .shared_arg("")
            .arg(&[0_u8, 255, b';', b','][..]);
        if i.is_multiple_of(4) {
            call.key(format!("{{t}}:extra:{i}")).shared_arg("extra");
        }
        batcher.call(call)
    });
    let answers = tokio::time::timeout(Duration::from_secs(20), futures::future::join_all(calls))
        .await
        .expect("every call answered");
    for (i, answer) in answers.into_iter().enumerate() {
        let (keys, args): (Vec<String>, Vec<Vec<u8>>) =
            ::redis::from_redis_value(answer.expect("an answer")).expect("keys and arguments");
        assert_eq!((keys, args), expected(i), "call {i}");
    }
}
