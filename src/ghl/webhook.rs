//! Authenticating GHL's webhooks (GHL_API.md §8, ARCHITECTURE.md "Security"): `x-ghl-signature`
//! (Ed25519 over the raw body), the legacy `x-wh-signature` (RSA PKCS#1 v1.5 with SHA-256), or
//! — for deliveries GHL sends unsigned — the shared `?key=` of the webhook URL. A signature that
//! is present but wrong is refused even when the key is right. Pure: no IO.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use ring::signature::{ED25519, RSA_PKCS1_2048_8192_SHA256, UnparsedPublicKey};
use subtle::ConstantTimeEq;

use super::GhlConfig;
use crate::crypto::Secret;

/// A body whose `timestamp` is further than this from now is a replay (or a broken clock).
pub const REPLAY_WINDOW_MS: i64 = 5 * 60 * 1000;

/// Why a webhook was refused; the code is a metric label and the error code of the 401.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Rejection {
    #[error("the x-ghl-signature does not match the body")]
    BadSignature,
    #[error("the x-wh-signature does not match the body")]
    BadLegacySignature,
    #[error("no valid signature and no valid ?key= on the webhook URL")]
    Unauthenticated,
    #[error("the webhook timestamp is not an RFC 3339 time within 5 minutes of now")]
    Stale,
}

impl Rejection {
    pub fn code(self) -> &'static str {
        match self {
            Self::BadSignature => "bad_signature",
            Self::BadLegacySignature => "bad_legacy_signature",
            Self::Unauthenticated => "unauthenticated",
            Self::Stale => "stale_timestamp",
        }
    }
}

/// How a webhook proved it came from GHL.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Proof {
    Ed25519,
    Rsa,
    SharedKey,
}

/// A public key in the form ring verifies with.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct KeyError(String);

pub struct WebhookVerifier {
    /// Raw 32-byte Ed25519 public key.
    ed25519: Vec<u8>,
    /// PKCS#1 `RSAPublicKey` DER (ring does not read SPKI for RSA).
    rsa_pkcs1: Vec<u8>,
    shared_key: Option<Secret>,
}

const ED25519_OID: &[u8] = &[0x06, 0x03, 0x2b, 0x65, 0x70];
const RSA_OID: &[u8] = &[0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01];

impl WebhookVerifier {
    /// Reads both PEM keys; a key that is not what its setting says is an error at start.
    pub fn from_config(config: &GhlConfig) -> Result<Self, KeyError> {
        let ed25519 = spki_key(&config.webhook_public_key, ED25519_OID).map_err(|e| {
            KeyError(format!(
                "GHL_WEBHOOK_PUBLIC_KEY: {e} (expected an Ed25519 public key PEM)"
            ))
        })?;
        if ed25519.len() != 32 {
            return Err(KeyError("GHL_WEBHOOK_PUBLIC_KEY: an Ed25519 key is 32 bytes".into()));
        }
        let rsa_pkcs1 = spki_key(&config.webhook_legacy_public_key, RSA_OID).map_err(|e| {
            KeyError(format!(
                "GHL_WEBHOOK_LEGACY_PUBLIC_KEY: {e} (expected an RSA public key PEM)"
            ))
        })?;
        Ok(Self {
            ed25519,
            rsa_pkcs1,
            shared_key: config.webhook_key.clone(),
        })
    }

    /// Checks the signature headers (or the URL key) against the exact bytes received.
    pub fn verify(
        &self,
        ghl_signature: Option<&[u8]>,
        legacy_signature: Option<&[u8]>,
        url_key: Option<&str>,
        body: &[u8],
    ) -> Result<Proof, Rejection> {
        if let Some(signature) = ghl_signature {
            let valid = decode(signature).is_some_and(|sig| {
                sig.len() == 64
                    && UnparsedPublicKey::new(&ED25519, &self.ed25519)
                        .verify(body, &sig)
                        .is_ok()
            });
            // A present signature decides: no falling back to weaker proofs.
            return if valid {
                Ok(Proof::Ed25519)
            } else {
                Err(Rejection::BadSignature)
            };
        }
        if let Some(signature) = legacy_signature {
            let valid = decode(signature).is_some_and(|sig| {
                UnparsedPublicKey::new(&RSA_PKCS1_2048_8192_SHA256, &self.rsa_pkcs1)
                    .verify(body, &sig)
                    .is_ok()
            });
            return if valid {
                Ok(Proof::Rsa)
            } else {
                Err(Rejection::BadLegacySignature)
            };
        }
        match (url_key, &self.shared_key) {
            (Some(given), Some(expected)) if bool::from(given.as_bytes().ct_eq(expected.expose().as_bytes())) => {
                Ok(Proof::SharedKey)
            }
            _ => Err(Rejection::Unauthenticated),
        }
    }
}

/// The body's `timestamp`, when present, must be an RFC 3339 string within the replay window:
/// a number, `true`, a list or an object cannot be checked, so it is refused like a stale one.
/// (`null` is taken as absent.)
pub fn check_timestamp(body: &serde_json::Value, now_ms: i64) -> Result<(), Rejection> {
    let at = match body.get("timestamp") {
        None | Some(serde_json::Value::Null) => return Ok(()),
        Some(serde_json::Value::String(text)) => crate::time::parse_rfc3339(text),
        Some(_) => None,
    };
    match at {
        Some(at) if (now_ms - at).abs() <= REPLAY_WINDOW_MS => Ok(()),
        _ => Err(Rejection::Stale),
    }
}

fn decode(signature: &[u8]) -> Option<Vec<u8>> {
    BASE64.decode(signature.trim_ascii()).ok()
}

/// The key bytes inside a PEM `SubjectPublicKeyInfo`, after checking its algorithm: for
/// Ed25519 the raw 32 bytes, for RSA the PKCS#1 `RSAPublicKey` DER.
fn spki_key(pem: &str, algorithm_oid: &[u8]) -> Result<Vec<u8>, String> {
    let body: String = pem
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with("-----"))
        .collect();
    let der = BASE64
        .decode(body)
        .map_err(|_| "the PEM body is not base64".to_owned())?;
    let (spki, _) = der_element(&der, 0x30).ok_or("not a DER SubjectPublicKeyInfo")?;
    let (algorithm, rest) = der_element(spki, 0x30).ok_or("no algorithm identifier")?;
    if !algorithm.starts_with(algorithm_oid) {
        return Err("the key is of another algorithm".into());
    }
    let (bits, _) = der_element(rest, 0x03).ok_or("no public key bit string")?;
    match bits.split_first() {
        Some((0, key)) => Ok(key.to_vec()),
        _ => Err("malformed public key bit string".into()),
    }
}

/// Splits one DER element with `tag` off the front: `(contents, rest)`.
fn der_element(input: &[u8], tag: u8) -> Option<(&[u8], &[u8])> {
    let (&first, rest) = input.split_first()?;
    if first != tag {
        return None;
    }
    let (&len_byte, rest) = rest.split_first()?;
    let (len, rest) = if len_byte < 0x80 {
        (len_byte as usize, rest)
    } else {
        let count = (len_byte & 0x7f) as usize;
        if count == 0 || count > 4 || rest.len() < count {
            return None;
        }
        let len = rest[..count].iter().fold(0usize, |acc, b| (acc << 8) | *b as usize);
        (len, &rest[count..])
    };
    (rest.len() >= len).then(|| rest.split_at(len))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    fn verifier(key: Option<&str>) -> WebhookVerifier {
        let mut config = Config::from_lookup(|_| None).unwrap().ghl;
        config.webhook_key = key.map(Secret::new);
        WebhookVerifier::from_config(&config).unwrap()
    }

    #[test]
    fn ghl_published_keys_parse() {
        let verifier = verifier(None);
        assert_eq!(
            verifier.ed25519,
            hex("8b61d1d6cacbe28d7c3bc0516bb815258ec6edbba96cddc7f40c09ac708388e8"),
            "GHL_API.md §8.2 gives this raw key"
        );
        // A 4096-bit modulus (512 bytes, plus a sign byte) inside the PKCS#1 structure.
        assert!(verifier.rsa_pkcs1.len() > 512 && verifier.rsa_pkcs1[0] == 0x30);
    }

    #[test]
    fn a_key_of_the_wrong_algorithm_is_refused_naming_the_setting() {
        let mut config = Config::from_lookup(|_| None).unwrap().ghl;
        config.webhook_public_key = config.webhook_legacy_public_key.clone();
        let err = WebhookVerifier::from_config(&config).err().unwrap();
        assert!(err.to_string().starts_with("GHL_WEBHOOK_PUBLIC_KEY"), "{err}");
    }

    #[test]
    fn the_shared_key_authenticates_only_unsigned_requests() {
        let verifier = verifier(Some("s3cret-key"));
        assert_eq!(
            verifier.verify(None, None, Some("s3cret-key"), b"{}"),
            Ok(Proof::SharedKey)
        );
        assert_eq!(
            verifier.verify(None, None, Some("wrong"), b"{}"),
            Err(Rejection::Unauthenticated)
        );
        assert_eq!(
            verifier.verify(None, None, None, b"{}"),
            Err(Rejection::Unauthenticated)
        );
        // A present but invalid signature is refused even with the right key, whatever it holds.
        let bad = BASE64.encode([0u8; 64]);
        for signature in [bad.as_bytes(), "Ωsig".as_bytes(), &b""[..], &b"\xff\xfe"[..]] {
            assert_eq!(
                verifier.verify(Some(signature), None, Some("s3cret-key"), b"{}"),
                Err(Rejection::BadSignature)
            );
            assert_eq!(
                verifier.verify(None, Some(signature), Some("s3cret-key"), b"{}"),
                Err(Rejection::BadLegacySignature)
            );
        }
    }

    #[test]
    fn timestamps_outside_five_minutes_or_not_strings_are_stale() {
        use serde_json::json;
        let now = crate::time::parse_rfc3339("2026-07-01T12:00:00Z").unwrap();
        let body = |t: &str| serde_json::json!({ "timestamp": t });
        assert_eq!(check_timestamp(&body("2026-07-01T11:56:00Z"), now), Ok(()));
        assert_eq!(
            check_timestamp(&body("2026-07-01T11:54:00Z"), now),
            Err(Rejection::Stale)
        );
        assert_eq!(
            check_timestamp(&body("2026-07-01T12:06:00Z"), now),
            Err(Rejection::Stale)
        );
        assert_eq!(check_timestamp(&body("not a time"), now), Err(Rejection::Stale));
        assert_eq!(check_timestamp(&serde_json::json!({}), now), Ok(()));
        assert_eq!(check_timestamp(&serde_json::json!({ "timestamp": null }), now), Ok(()));
        for not_a_string in [
            json!(0),
            json!(-1),
            json!(u64::MAX),
            json!(1e18),
            json!(true),
            json!([]),
            json!({}),
        ] {
            let body = json!({ "timestamp": not_a_string });
            assert_eq!(check_timestamp(&body, now), Err(Rejection::Stale), "{body}");
        }
    }

    fn hex(text: &str) -> Vec<u8> {
        (0..text.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&text[i..i + 2], 16).unwrap())
            .collect()
    }
}
