//! `parse_event` on arbitrary bytes. The input is `<event id>\n<body>`; without a newline
//! the whole input is the body and the id is `evt-1`. Never panics; only a body that is not
//! JSON is `InvalidJson`; an accepted event holds what the validator promises and survives
//! the queue's JSON round trip.

#![no_main]

use lease_sync::event::{EventError, parse_event};
use lease_sync_fuzz::{check_event, is_one_json_text, trace};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let (id, body) = match data.iter().position(|&b| b == b'\n') {
        Some(at) => (String::from_utf8_lossy(&data[..at]), &data[at + 1..]),
        None => ("evt-1".into(), data),
    };
    let parsed = parse_event(body, &id);
    trace(|| format!("event {id:?}: {parsed:?}"));
    match parsed {
        Ok(event) => check_event(&event, &id, body),
        Err(EventError::InvalidJson(message)) => {
            assert!(!message.is_empty());
            assert!(
                serde_json::from_slice::<serde_json::Value>(body).is_err(),
                "valid JSON reported as invalid JSON"
            );
        }
        Err(EventError::Invalid { field, message }) => {
            assert!(!field.is_empty() && !message.is_empty());
            assert!(
                is_one_json_text(body),
                "a body that is not JSON reported as an invalid event"
            );
        }
    }
});
