//! Property tests of the signature schemes: a signature by any active secret verifies, and
//! no single change to what was signed, or to the signature, is ever accepted. Case counts
//! are kept modest so that the suite stays fast in a debug build; the fuzz targets in
//! `fuzz/` search the same ground for longer.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use proptest::prelude::*;
use proptest::sample::Index;

use super::hmac_sha256::{self, Format};
use super::standard_webhooks::{self, SignedHeaders};
use super::{SignatureError, SigningKey};

/// The server clock of every case.
const NOW: i64 = 1_700_000_000;
/// Timestamp tolerance of every verifier.
const TOLERANCE: u64 = 300;
/// Cases per property.
const CASES: u32 = 256;
/// Largest timestamp shift tried; most shifts also leave the tolerance, and must still be
/// reported as a bad signature, not a stale one.
const MAX_SHIFT: i64 = 100_000;

fn config() -> ProptestConfig {
    ProptestConfig {
        cases: CASES,
        ..ProptestConfig::default()
    }
}

/// The error code of a rejected verification; fails the case if it was accepted.
fn code_of<T: std::fmt::Debug>(result: Result<T, SignatureError>) -> Result<&'static str, String> {
    match result {
        Ok(ok) => Err(format!("accepted: {ok:?}")),
        Err(e) => Ok(e.code()),
    }
}

/// A Standard Webhooks secret: `whsec_` + base64 of 16 to 64 random bytes.
fn whsec_secret() -> impl Strategy<Value = String> {
    prop::collection::vec(any::<u8>(), 16..=64).prop_map(|k| format!("whsec_{}", BASE64.encode(k)))
}

/// A GitHub or Buildium secret: its UTF-8 bytes are the key.
fn text_secret() -> impl Strategy<Value = String> {
    "[!-~]{16,64}"
}

fn body() -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(any::<u8>(), 0..256)
}

/// A timestamp within the tolerance of [`NOW`].
fn fresh_timestamp() -> impl Strategy<Value = i64> {
    NOW - TOLERANCE as i64..=NOW + TOLERANCE as i64
}

/// A non-zero shift of a timestamp.
fn shift() -> impl Strategy<Value = i64> {
    (1..=MAX_SHIFT, any::<bool>()).prop_map(|(d, down)| if down { -d } else { d })
}

fn hmac_verifier(format: Format, keys: Vec<SigningKey>) -> hmac_sha256::Verifier {
    hmac_sha256::Verifier::new(format, keys, TOLERANCE).expect("valid format")
}

fn hmac_keys(secrets: &[String]) -> Vec<SigningKey> {
    secrets
        .iter()
        .map(|s| SigningKey::new(hmac_sha256::key_of(s), None))
        .collect()
}

/// One change to a signed request.
#[derive(Debug, Clone)]
enum Mutation {
    /// Flip one bit of the body (append one byte to an empty body).
    FlipBodyBit(Index, u8),
    /// Append bytes to the body.
    AppendBody(Vec<u8>),
    /// Move the timestamp by a non-zero number of seconds.
    ShiftTimestamp(i64),
    /// Replace one character of the id by another visible ASCII character or a space.
    ChangeIdChar(Index, u8),
    /// Flip one bit of the decoded signature.
    FlipSignatureBit(Index, u8),
    /// Cut the signature header value short (drops at least one tag character).
    TruncateSignature(Index),
}

fn body_mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        (any::<Index>(), 0..8u8).prop_map(|(i, b)| Mutation::FlipBodyBit(i, b)),
        prop::collection::vec(any::<u8>(), 1..16).prop_map(Mutation::AppendBody),
    ]
}

fn signature_mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        (any::<Index>(), 0..8u8).prop_map(|(i, b)| Mutation::FlipSignatureBit(i, b)),
        any::<Index>().prop_map(Mutation::TruncateSignature),
    ]
}

fn timestamp_mutation() -> impl Strategy<Value = Mutation> {
    shift().prop_map(Mutation::ShiftTimestamp)
}

fn id_mutation() -> impl Strategy<Value = Mutation> {
    (any::<Index>(), b' '..=b'~').prop_map(|(i, c)| Mutation::ChangeIdChar(i, c))
}

/// A request as the sender signed it; mutations apply to it.
#[derive(Debug, Clone)]
struct Request {
    id: String,
    timestamp: i64,
    body: Vec<u8>,
    /// The signature header value.
    signature: String,
}

impl Request {
    /// Applies `mutation`. `decode` reads the tag out of a signature header value and
    /// `encode` writes one; a truncation keeps fewer than `truncatable` characters, the
    /// length past which only optional padding is left.
    fn mutate(
        &mut self,
        mutation: &Mutation,
        decode: impl Fn(&str) -> Vec<u8>,
        encode: impl Fn(&[u8]) -> String,
        truncatable: usize,
    ) {
        match mutation {
            Mutation::FlipBodyBit(i, bit) => {
                if self.body.is_empty() {
                    self.body.push(1 << bit);
                } else {
                    let at = i.index(self.body.len());
                    self.body[at] ^= 1 << bit;
                }
            }
            Mutation::AppendBody(extra) => self.body.extend_from_slice(extra),
            Mutation::ShiftTimestamp(delta) => self.timestamp += delta,
            Mutation::ChangeIdChar(i, with) => {
                let mut bytes = self.id.clone().into_bytes();
                let at = i.index(bytes.len());
                bytes[at] = if bytes[at] == *with {
                    if *with == b'~' { b'!' } else { with + 1 }
                } else {
                    *with
                };
                self.id = String::from_utf8(bytes).expect("ids are ASCII");
            }
            Mutation::FlipSignatureBit(i, bit) => {
                let mut tag = decode(&self.signature);
                assert_eq!(tag.len(), 32, "a signature the sender wrote decodes");
                tag[i.index(32)] ^= 1 << bit;
                self.signature = encode(&tag);
            }
            Mutation::TruncateSignature(i) => {
                self.signature.truncate(i.index(truncatable));
            }
        }
    }
}

/// The code a mutated request must be rejected with: `missing_signature` only when a header
/// the scheme needs became empty.
fn expected_code(mutated: &Request, id_signed: bool) -> &'static str {
    if mutated.signature.trim().is_empty() || (id_signed && mutated.id.trim().is_empty()) {
        "missing_signature"
    } else {
        "invalid_signature"
    }
}

// Standard Webhooks.

fn sw_request(secret: &str, id: String, timestamp: i64, body: Vec<u8>) -> Request {
    let signature = standard_webhooks::sign(secret, &id, timestamp, &body).expect("valid secret");
    Request {
        id,
        timestamp,
        body,
        signature,
    }
}

fn sw_verify(
    v: &standard_webhooks::Verifier,
    r: &Request,
) -> Result<standard_webhooks::Verified, SignatureError> {
    let timestamp = r.timestamp.to_string();
    v.verify(
        SignedHeaders {
            id: Some(&r.id),
            timestamp: Some(&timestamp),
            signature: Some(&r.signature),
        },
        &r.body,
        NOW,
    )
}

fn sw_decode(header: &str) -> Vec<u8> {
    BASE64
        .decode(header.strip_prefix("v1,").expect("v1 entry"))
        .expect("base64")
}

fn sw_encode(tag: &[u8]) -> String {
    format!("v1,{}", BASE64.encode(tag))
}

/// Standard base64 is decoded strictly (padding required), so any shorter value is cut.
const SW_SIGNATURE_LEN: usize = "v1,".len() + 44;

proptest! {
    #![proptest_config(config())]

    #[test]
    fn standard_webhooks_any_active_secret_verifies(
        secrets in prop::collection::vec(whsec_secret(), 1..=3),
        signer in any::<Index>(),
        id in "[!-~]{1,64}",
        timestamp in fresh_timestamp(),
        body in body(),
    ) {
        let v = standard_webhooks::Verifier::new(secrets.iter().map(String::as_str), TOLERANCE)
            .expect("valid secrets");
        let r = sw_request(&secrets[signer.index(secrets.len())], id.clone(), timestamp, body);
        let ok = sw_verify(&v, &r).map_err(|e| TestCaseError::fail(format!("{e:?}")))?;
        prop_assert_eq!(ok.id, id);
        prop_assert_eq!(ok.timestamp, timestamp);
    }

    #[test]
    fn standard_webhooks_any_single_mutation_is_rejected(
        secrets in prop::collection::vec(whsec_secret(), 1..=3),
        signer in any::<Index>(),
        id in "[!-~]{1,64}",
        timestamp in fresh_timestamp(),
        body in body(),
        mutation in prop_oneof![
            body_mutation(),
            timestamp_mutation(),
            id_mutation(),
            signature_mutation(),
        ],
    ) {
        let v = standard_webhooks::Verifier::new(secrets.iter().map(String::as_str), TOLERANCE)
            .expect("valid secrets");
        let mut r = sw_request(&secrets[signer.index(secrets.len())], id, timestamp, body);
        prop_assert_eq!(r.signature.len(), SW_SIGNATURE_LEN);
        r.mutate(&mutation, sw_decode, sw_encode, SW_SIGNATURE_LEN);
        let code = code_of(sw_verify(&v, &r)).map_err(TestCaseError::fail)?;
        prop_assert_eq!(code, expected_code(&r, true), "{:?} → {:?}", mutation, r);
    }
}

// GitHub style: hex with `sha256=`, over the body only.

fn github_request(secret: &str, body: Vec<u8>) -> Request {
    let signature = hmac_sha256::sign(&Format::github(), secret, None, &body);
    Request {
        id: String::new(),
        timestamp: 0,
        body,
        signature,
    }
}

fn github_verify(
    v: &hmac_sha256::Verifier,
    r: &Request,
) -> Result<super::Verified, SignatureError> {
    v.verify(
        &[("x-hub-signature-256", r.signature.as_str())],
        &r.body,
        NOW,
    )
}

fn github_decode(header: &str) -> Vec<u8> {
    hex::decode(header.strip_prefix("sha256=").expect("prefix")).expect("sign writes hex")
}

fn github_encode(tag: &[u8]) -> String {
    format!("sha256={}", hex::encode(tag))
}

const GITHUB_SIGNATURE_LEN: usize = "sha256=".len() + 64;

proptest! {
    #![proptest_config(config())]

    #[test]
    fn github_style_any_active_secret_verifies(
        secrets in prop::collection::vec(text_secret(), 1..=3),
        signer in any::<Index>(),
        body in body(),
        upper_case in any::<bool>(),
    ) {
        let v = hmac_verifier(Format::github(), hmac_keys(&secrets));
        let mut r = github_request(&secrets[signer.index(secrets.len())], body);
        if upper_case {
            // The same tag in upper-case hex.
            r.signature = format!("sha256={}", r.signature[7..].to_ascii_uppercase());
        }
        let ok = github_verify(&v, &r).map_err(|e| TestCaseError::fail(format!("{e:?}")))?;
        prop_assert_eq!(ok, super::Verified { id: None, timestamp: None });
    }

    #[test]
    fn github_style_any_single_mutation_is_rejected(
        secrets in prop::collection::vec(text_secret(), 1..=3),
        signer in any::<Index>(),
        body in body(),
        mutation in prop_oneof![body_mutation(), signature_mutation()],
    ) {
        let v = hmac_verifier(Format::github(), hmac_keys(&secrets));
        let mut r = github_request(&secrets[signer.index(secrets.len())], body);
        prop_assert_eq!(r.signature.len(), GITHUB_SIGNATURE_LEN);
        r.mutate(&mutation, github_decode, github_encode, GITHUB_SIGNATURE_LEN);
        let code = code_of(github_verify(&v, &r)).map_err(TestCaseError::fail)?;
        prop_assert_eq!(code, expected_code(&r, false), "{:?} → {:?}", mutation, r);
    }
}

// Buildium style: base64 without prefix, over `{timestamp}.{body}`.

fn buildium_request(secret: &str, timestamp: i64, body: Vec<u8>) -> Request {
    let signature = hmac_sha256::sign(
        &Format::buildium(),
        secret,
        Some(&timestamp.to_string()),
        &body,
    );
    Request {
        id: String::new(),
        timestamp,
        body,
        signature,
    }
}

fn buildium_verify(
    v: &hmac_sha256::Verifier,
    r: &Request,
) -> Result<super::Verified, SignatureError> {
    let timestamp = r.timestamp.to_string();
    let headers = [
        ("buildium-webhook-signature", r.signature.as_str()),
        ("buildium-webhook-timestamp", timestamp.as_str()),
    ];
    v.verify(&headers, &r.body, NOW)
}

fn buildium_decode(header: &str) -> Vec<u8> {
    BASE64.decode(header).expect("base64")
}

fn buildium_encode(tag: &[u8]) -> String {
    BASE64.encode(tag)
}

/// 32 bytes are 43 base64 characters and one `=`. Padding is optional for this scheme (some
/// senders strip it), so dropping only the `=` leaves the same tag; a truncation must cut
/// into the 43 characters to change it.
const BUILDIUM_TAG_CHARS: usize = 43;

proptest! {
    #![proptest_config(config())]

    #[test]
    fn buildium_style_any_active_secret_verifies(
        secrets in prop::collection::vec(text_secret(), 1..=3),
        signer in any::<Index>(),
        timestamp in fresh_timestamp(),
        body in body(),
        strip_padding in any::<bool>(),
    ) {
        let v = hmac_verifier(Format::buildium(), hmac_keys(&secrets));
        let mut r = buildium_request(&secrets[signer.index(secrets.len())], timestamp, body);
        if strip_padding {
            r.signature = r.signature.trim_end_matches('=').to_owned();
        }
        let ok = buildium_verify(&v, &r).map_err(|e| TestCaseError::fail(format!("{e:?}")))?;
        prop_assert_eq!(ok, super::Verified { id: None, timestamp: Some(timestamp) });
    }

    #[test]
    fn buildium_style_any_single_mutation_is_rejected(
        secrets in prop::collection::vec(text_secret(), 1..=3),
        signer in any::<Index>(),
        timestamp in fresh_timestamp(),
        body in body(),
        mutation in prop_oneof![body_mutation(), timestamp_mutation(), signature_mutation()],
    ) {
        let v = hmac_verifier(Format::buildium(), hmac_keys(&secrets));
        let mut r = buildium_request(&secrets[signer.index(secrets.len())], timestamp, body);
        prop_assert_eq!(r.signature.len(), BUILDIUM_TAG_CHARS + 1);
        r.mutate(&mutation, buildium_decode, buildium_encode, BUILDIUM_TAG_CHARS);
        let code = code_of(buildium_verify(&v, &r)).map_err(TestCaseError::fail)?;
        prop_assert_eq!(code, expected_code(&r, false), "{:?} → {:?}", mutation, r);
    }
}

// Rotation and wrong lengths, for all three schemes.

/// A tag of a wrong length: random bytes, or the correct tag cut short or extended, so that
/// a comparison of only the common prefix would accept it.
fn wrong_length_tag(correct: &[u8], len: usize, fill: &[u8], from_correct: bool) -> Vec<u8> {
    let mut tag = if from_correct {
        correct.to_vec()
    } else {
        Vec::new()
    };
    tag.extend_from_slice(fill);
    tag.truncate(len);
    tag
}

proptest! {
    #![proptest_config(config())]

    /// A key past its `not_after` never verifies, while an active one in the same verifier
    /// (no end, or an end at or after now) does.
    #[test]
    fn expired_secrets_never_verify_while_active_ones_do(
        expired_key in prop::collection::vec(any::<u8>(), 16..=64),
        active_key in prop::collection::vec(any::<u8>(), 16..=64),
        // Biased to the boundary: `not_after` is inclusive.
        expired_ago in prop_oneof![Just(1i64), 1..=10i64, 1..=1_000_000i64],
        active_for in prop::option::of(prop_oneof![Just(0i64), 0..=10i64, 0..=1_000_000i64]),
        id in "[!-~]{1,64}",
        timestamp in fresh_timestamp(),
        body in body(),
    ) {
        prop_assume!(expired_key != active_key);
        let expired_end = Some(NOW - expired_ago);
        let active_end = active_for.map(|d| NOW + d);

        // Standard Webhooks: the key is the base64 in the secret.
        let v = standard_webhooks::Verifier::with_keys(
            vec![
                SigningKey::new(expired_key.clone(), expired_end),
                SigningKey::new(active_key.clone(), active_end),
            ],
            TOLERANCE,
        );
        let whsec = |k: &[u8]| format!("whsec_{}", BASE64.encode(k));
        let expired = sw_request(&whsec(&expired_key), id.clone(), timestamp, body.clone());
        let active = sw_request(&whsec(&active_key), id, timestamp, body.clone());
        prop_assert_eq!(code_of(sw_verify(&v, &expired)).map_err(TestCaseError::fail)?, "invalid_signature");
        prop_assert!(sw_verify(&v, &active).is_ok());

        // GitHub and Buildium: the key is the secret's UTF-8 bytes; here hex text.
        let (expired_secret, active_secret) = (hex::encode(&expired_key), hex::encode(&active_key));
        let keys = || vec![
            SigningKey::new(hmac_sha256::key_of(&expired_secret), expired_end),
            SigningKey::new(hmac_sha256::key_of(&active_secret), active_end),
        ];
        let v = hmac_verifier(Format::github(), keys());
        let expired = github_request(&expired_secret, body.clone());
        let active = github_request(&active_secret, body.clone());
        prop_assert_eq!(code_of(github_verify(&v, &expired)).map_err(TestCaseError::fail)?, "invalid_signature");
        prop_assert!(github_verify(&v, &active).is_ok());

        let v = hmac_verifier(Format::buildium(), keys());
        let expired = buildium_request(&expired_secret, timestamp, body.clone());
        let active = buildium_request(&active_secret, timestamp, body);
        prop_assert_eq!(code_of(buildium_verify(&v, &expired)).map_err(TestCaseError::fail)?, "invalid_signature");
        prop_assert!(buildium_verify(&v, &active).is_ok());
    }

    /// Tags of 0 to 31 or 33 to 64 bytes never verify in any scheme, whatever their content,
    /// including a prefix of the correct tag or the correct tag with bytes appended.
    #[test]
    fn wrong_length_signatures_never_verify(
        len in prop_oneof![0..=31usize, 33..=64usize],
        fill in prop::collection::vec(any::<u8>(), 64),
        from_correct in any::<bool>(),
        secret in text_secret(),
        id in "[!-~]{1,64}",
        timestamp in fresh_timestamp(),
        body in body(),
    ) {
        let whsec = format!("whsec_{}", BASE64.encode(secret.as_bytes()));
        let v = standard_webhooks::Verifier::new([whsec.as_str()], TOLERANCE).expect("valid secret");
        let mut r = sw_request(&whsec, id, timestamp, body.clone());
        r.signature = sw_encode(&wrong_length_tag(&sw_decode(&r.signature), len, &fill, from_correct));
        prop_assert_eq!(code_of(sw_verify(&v, &r)).map_err(TestCaseError::fail)?, "invalid_signature");

        let v = hmac_verifier(Format::github(), hmac_keys(std::slice::from_ref(&secret)));
        let mut r = github_request(&secret, body.clone());
        r.signature = github_encode(&wrong_length_tag(&github_decode(&r.signature), len, &fill, from_correct));
        prop_assert_eq!(code_of(github_verify(&v, &r)).map_err(TestCaseError::fail)?, "invalid_signature");

        let v = hmac_verifier(Format::buildium(), hmac_keys(std::slice::from_ref(&secret)));
        let mut r = buildium_request(&secret, timestamp, body);
        r.signature = buildium_encode(&wrong_length_tag(&buildium_decode(&r.signature), len, &fill, from_correct));
        // An empty tag is an empty header value: missing, not invalid.
        let expected = if len == 0 { "missing_signature" } else { "invalid_signature" };
        prop_assert_eq!(code_of(buildium_verify(&v, &r)).map_err(TestCaseError::fail)?, expected);
    }
}
