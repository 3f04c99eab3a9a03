//! Signature-header parsing: Standard Webhooks and the GitHub-, Buildium- and custom-style
//! hmac-sha256 verifiers with arbitrary header values (see `src/lib.rs` for the input
//! layout), plus `EventIdSource` and `SignedContent` parsing. Never panics; never accepts a
//! request the independent oracle does not find correctly signed by an active key, and
//! always accepts one it does (unless stale or malformed elsewhere).

#![no_main]

use lease_sync::signature::KeyStatus;
use lease_sync::signature::hmac_sha256::SignedContent;
use lease_sync_fuzz::{NOW, Request, check_event_id_source, template_is_valid};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let request = Request::decode(data);

    if let Some(template) = &request.settings.template {
        let parsed = template.parse::<SignedContent>();
        assert_eq!(parsed.is_ok(), template_is_valid(template), "{template:?}");
        if let Ok(content) = parsed {
            assert_eq!(content.uses_timestamp(), template.contains("{timestamp}"));
        }
    }
    if let Some(text) = &request.settings.event_id {
        check_event_id_source(text, &request);
    }

    let Some(verifier) = request.verifier() else {
        return;
    };
    assert_eq!(
        verifier.key_status(NOW),
        KeyStatus {
            active: 2,
            total: 3
        }
    );
    if let Ok(verified) = request.verify_and_check(&verifier) {
        let pairs = request.header_pairs();
        let id = verifier.event_id(&verified, pairs.as_slice(), &request.body);
        if let Some(signed) = &verified.id {
            assert_eq!(id.as_ref(), Ok(signed));
        }
        if let Ok(id) = id {
            assert!(!id.trim().is_empty());
        }
    }
});
