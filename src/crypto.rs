//! AES-256-GCM sealing of secrets at rest (OAuth tokens and anything else secret in the
//! database). Each sealed value is bound to a context string (for example the column and the
//! location it belongs to), so a sealed token copied into another row does not open.
//!
//! Format: `0x01 ‖ nonce (12 bytes) ‖ ciphertext ‖ tag (16 bytes)`. The leading version byte
//! leaves room for a key rotation later.

use std::fmt;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use ring::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use ring::hmac;
use ring::rand::{SecureRandom, SystemRandom};

const FORMAT_V1: u8 = 1;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CryptoError {
    #[error("expected base64 of exactly 32 bytes (`openssl rand -base64 32`)")]
    BadKey,
    /// The value was sealed with another key or for another context, or was altered.
    #[error("a sealed value does not open with this key")]
    WrongKeyOrTampered,
}

/// The 32-byte key behind every sealed value, and the keys derived from it.
pub struct SecretKey {
    key: LessSafeKey,
    /// Signs pairing links (HMAC-SHA256), derived so that it differs from the sealing key.
    links: hmac::Key,
    /// Signs the console's session cookies and CSRF tokens and the GHL page's tokens; its own
    /// derivation, so that nothing signed for a browser can pass as a pairing link.
    sessions: hmac::Key,
    rng: SystemRandom,
}

impl SecretKey {
    pub fn from_base64(text: &str) -> Result<Self, CryptoError> {
        let bytes = BASE64.decode(text.trim()).map_err(|_| CryptoError::BadKey)?;
        Self::from_bytes(&bytes)
    }

    pub fn from_bytes(bytes: &[u8]) -> Result<Self, CryptoError> {
        if bytes.len() != 32 {
            return Err(CryptoError::BadKey);
        }
        let key = UnboundKey::new(&AES_256_GCM, bytes).map_err(|_| CryptoError::BadKey)?;
        let derive = |label: &[u8]| {
            let derived = hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, bytes), label);
            hmac::Key::new(hmac::HMAC_SHA256, derived.as_ref())
        };
        Ok(Self {
            key: LessSafeKey::new(key),
            links: derive(b"waghl pairing links v1"),
            sessions: derive(b"waghl browser sessions v1"),
            rng: SystemRandom::new(),
        })
    }

    /// A fresh random key, base64-encoded, for first runs that have none.
    pub fn generate_base64() -> String {
        let mut bytes = [0u8; 32];
        SystemRandom::new()
            .fill(&mut bytes)
            .expect("the operating system's random source failed");
        BASE64.encode(bytes)
    }

    pub fn seal(&self, context: &str, plaintext: &[u8]) -> Vec<u8> {
        let mut nonce = [0u8; NONCE_LEN];
        self.rng
            .fill(&mut nonce)
            .expect("the operating system's random source failed");
        let mut in_out = plaintext.to_vec();
        self.key
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(context.as_bytes()),
                &mut in_out,
            )
            .expect("AES-GCM sealing cannot fail for in-memory buffers");
        let mut sealed = Vec::with_capacity(1 + NONCE_LEN + in_out.len());
        sealed.push(FORMAT_V1);
        sealed.extend_from_slice(&nonce);
        sealed.extend_from_slice(&in_out);
        sealed
    }

    pub fn open(&self, context: &str, sealed: &[u8]) -> Result<Vec<u8>, CryptoError> {
        let (&version, rest) = sealed.split_first().ok_or(CryptoError::WrongKeyOrTampered)?;
        if version != FORMAT_V1 || rest.len() < NONCE_LEN {
            return Err(CryptoError::WrongKeyOrTampered);
        }
        let (nonce, ciphertext) = rest.split_at(NONCE_LEN);
        let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| CryptoError::WrongKeyOrTampered)?;
        let mut in_out = ciphertext.to_vec();
        let plaintext = self
            .key
            .open_in_place(nonce, Aad::from(context.as_bytes()), &mut in_out)
            .map_err(|_| CryptoError::WrongKeyOrTampered)?;
        Ok(plaintext.to_vec())
    }

    /// A signature of `message` for a link (hex).
    pub fn sign_link(&self, message: &str) -> String {
        sign_hex(&self.links, message)
    }

    /// Checks a link signature in constant time.
    pub fn verify_link(&self, message: &str, signature_hex: &str) -> bool {
        verify_hex(&self.links, message, signature_hex)
    }

    /// A signature of `message` for a browser session token (hex). Callers prefix the message
    /// with what it is for (`console:`, `csrf:`, `ghl:`), so one kind never passes for another.
    pub fn sign_session(&self, message: &str) -> String {
        sign_hex(&self.sessions, message)
    }

    /// Checks a session token signature in constant time.
    pub fn verify_session(&self, message: &str, signature_hex: &str) -> bool {
        verify_hex(&self.sessions, message, signature_hex)
    }

    pub fn seal_str(&self, context: &str, plaintext: &str) -> Vec<u8> {
        self.seal(context, plaintext.as_bytes())
    }

    pub fn open_str(&self, context: &str, sealed: &[u8]) -> Result<String, CryptoError> {
        String::from_utf8(self.open(context, sealed)?).map_err(|_| CryptoError::WrongKeyOrTampered)
    }
}

fn sign_hex(key: &hmac::Key, message: &str) -> String {
    hmac::sign(key, message.as_bytes())
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn verify_hex(key: &hmac::Key, message: &str, signature_hex: &str) -> bool {
    decode_hex(signature_hex).is_some_and(|tag| hmac::verify(key, message.as_bytes(), &tag).is_ok())
}

fn decode_hex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) || !text.is_ascii() {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&text[i..i + 2], 16).ok())
        .collect()
}

/// A random number in [0, 1), for jitter.
pub fn random_fraction() -> f64 {
    let mut buf = [0u8; 4];
    SystemRandom::new()
        .fill(&mut buf)
        .expect("the operating system's random source failed");
    f64::from(u32::from_le_bytes(buf)) / (f64::from(u32::MAX) + 1.0)
}

/// `bytes` random bytes as lowercase hex, for ids that must not be guessed or collide.
pub fn random_hex(bytes: usize) -> String {
    let mut buf = vec![0u8; bytes];
    SystemRandom::new()
        .fill(&mut buf)
        .expect("the operating system's random source failed");
    buf.iter().map(|b| format!("{b:02x}")).collect()
}

/// A value that must never reach a log line: `Debug` and `Display` print `[redacted]`.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> SecretKey {
        SecretKey::from_base64(&SecretKey::generate_base64()).unwrap()
    }

    #[test]
    fn a_sealed_value_opens_with_the_same_key_and_context() {
        let key = key();
        let sealed = key.seal_str("locations.access_token:loc1", "tok-123");
        assert!(!sealed.windows(7).any(|w| w == b"tok-123"));
        assert_eq!(key.open_str("locations.access_token:loc1", &sealed).unwrap(), "tok-123");
    }

    #[test]
    fn another_key_another_context_or_a_flipped_bit_is_refused() {
        let (a, b) = (key(), key());
        let mut sealed = a.seal_str("ctx", "secret");
        assert_eq!(b.open_str("ctx", &sealed), Err(CryptoError::WrongKeyOrTampered));
        assert_eq!(a.open_str("other", &sealed), Err(CryptoError::WrongKeyOrTampered));
        let last = sealed.len() - 1;
        sealed[last] ^= 1;
        assert_eq!(a.open_str("ctx", &sealed), Err(CryptoError::WrongKeyOrTampered));
        assert_eq!(a.open_str("ctx", &[]), Err(CryptoError::WrongKeyOrTampered));
    }

    #[test]
    fn keys_that_are_not_32_bytes_of_base64_are_refused() {
        assert!(SecretKey::from_base64("not base64!").is_err());
        assert!(SecretKey::from_base64("MDEyMzQ1Njc4OQ==").is_err());
    }

    #[test]
    fn link_signatures_verify_only_for_the_same_message_and_key() {
        let (a, b) = (key(), key());
        let signature = a.sign_link("pair:loc1:1790000000");
        assert!(a.verify_link("pair:loc1:1790000000", &signature));
        assert!(!a.verify_link("pair:loc2:1790000000", &signature));
        assert!(!b.verify_link("pair:loc1:1790000000", &signature));
        assert!(!a.verify_link("pair:loc1:1790000000", "zz"));
    }

    #[test]
    fn session_and_link_signatures_never_pass_for_each_other() {
        let key = key();
        let link = key.sign_link("pair:loc1:1790000000");
        let session = key.sign_session("pair:loc1:1790000000");
        assert_ne!(link, session);
        assert!(!key.verify_session("pair:loc1:1790000000", &link));
        assert!(!key.verify_link("pair:loc1:1790000000", &session));
        assert!(key.verify_session("pair:loc1:1790000000", &session));
    }

    #[test]
    fn two_seals_of_the_same_value_differ() {
        let key = key();
        assert_ne!(key.seal_str("c", "x"), key.seal_str("c", "x"));
    }
}
