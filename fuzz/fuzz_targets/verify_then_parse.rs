//! The ingest path without HTTP: verify the signature, take the event id, check it as
//! ingest does, parse the event. The harness can sign the fuzzed request correctly with a
//! test secret (the schemes' own `sign` functions) so that the fuzzer reaches the parser;
//! see `src/lib.rs` for the input layout. Never panics; an edited signature never verifies.

#![no_main]

use lease_sync::event::{is_valid_event_id, parse_event};
use lease_sync_fuzz::{Request, check_event, trace};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let request = Request::decode(data);
    let Some(verifier) = request.verifier() else {
        return;
    };
    let Ok(verified) = request.verify_and_check(&verifier) else {
        return;
    };
    let pairs = request.header_pairs();
    let Ok(event_id) = verifier.event_id(&verified, pairs.as_slice(), &request.body) else {
        return;
    };
    assert!(!event_id.trim().is_empty());
    if !is_valid_event_id(&event_id) {
        return;
    }
    let parsed = parse_event(&request.body, &event_id);
    trace(|| {
        format!(
            "event {event_id:?}: {:?}",
            parsed.as_ref().map(|e| e.residents.len())
        )
    });
    if let Ok(event) = parsed {
        check_event(&event, &event_id, &request.body);
    }
});
