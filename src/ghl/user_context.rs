//! The user context GHL hands a marketplace Custom Page (`REQUEST_USER_DATA_RESPONSE`): who is
//! looking, from which sub-account. GHL encrypts it with the app's Shared Secret the way
//! CryptoJS's `AES.encrypt(text, passphrase)` does, which is OpenSSL's `enc -aes-256-cbc -md md5`
//! format: base64 of `"Salted__" ‖ salt (8 bytes) ‖ AES-256-CBC ciphertext (PKCS#7)`, with key
//! and IV drawn from the passphrase and salt by EVP_BytesToKey (one round of MD5).
//!
//! Decrypting proves the context came from GHL (only GHL and this app know the secret); the
//! location it names is the only one its page may show. The context carries no time, so a
//! captured payload stays valid as long as the secret: GHL's design, noted in the README.

use aes::Aes256;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use cbc::cipher::block_padding::Pkcs7;
use cbc::cipher::{BlockModeDecrypt, KeyIvInit};
use md5::{Digest, Md5};
use serde::Deserialize;

use crate::domain::LocationId;

const MAGIC: &[u8] = b"Salted__";

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ContextError {
    /// Not base64, not salted, cut short, or not opened by this secret.
    #[error("the user context does not decrypt with GHL_APP_SHARED_SECRET")]
    Undecryptable,
    #[error("the user context is not the JSON GHL sends")]
    Malformed,
    /// An agency-level view (no `activeLocation`): the page belongs in a sub-account.
    #[error("open this page from a sub-account (location), not from the agency view")]
    NoLocation,
}

/// The fields of GHL's decrypted user context that waghl uses.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UserContext {
    pub location: LocationId,
    pub company_id: Option<String>,
    pub user_id: Option<String>,
    pub user_name: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Wire {
    active_location: Option<String>,
    company_id: Option<String>,
    user_id: Option<String>,
    user_name: Option<String>,
}

/// Decrypts and reads a user context payload.
pub fn decrypt_user_context(payload: &str, shared_secret: &str) -> Result<UserContext, ContextError> {
    let plaintext = decrypt_passphrase(payload, shared_secret)?;
    let wire: Wire = serde_json::from_slice(&plaintext).map_err(|_| ContextError::Malformed)?;
    let location = wire.active_location.ok_or(ContextError::NoLocation)?;
    Ok(UserContext {
        location: LocationId::parse(&location).map_err(|_| ContextError::Malformed)?,
        company_id: wire.company_id,
        user_id: wire.user_id,
        user_name: wire.user_name,
    })
}

/// CryptoJS `AES.decrypt(payload, passphrase)` / `openssl enc -d -aes-256-cbc -md md5 -a`.
fn decrypt_passphrase(payload: &str, passphrase: &str) -> Result<Vec<u8>, ContextError> {
    let compact: String = payload.chars().filter(|c| !c.is_ascii_whitespace()).collect();
    let raw = BASE64.decode(compact).map_err(|_| ContextError::Undecryptable)?;
    let rest = raw.strip_prefix(MAGIC).ok_or(ContextError::Undecryptable)?;
    if rest.len() < 8 + 16 || !(rest.len() - 8).is_multiple_of(16) {
        return Err(ContextError::Undecryptable);
    }
    let (salt, ciphertext) = rest.split_at(8);
    let (key, iv) = bytes_to_key(passphrase.as_bytes(), salt);
    cbc::Decryptor::<Aes256>::new(&key.into(), &iv.into())
        .decrypt_padded_vec::<Pkcs7>(ciphertext)
        .map_err(|_| ContextError::Undecryptable)
}

/// OpenSSL's EVP_BytesToKey with MD5 and one iteration: `D_i = MD5(D_{i-1} ‖ pass ‖ salt)`,
/// concatenated until there are 32 key bytes and 16 IV bytes.
fn bytes_to_key(passphrase: &[u8], salt: &[u8]) -> ([u8; 32], [u8; 16]) {
    let mut derived = Vec::with_capacity(48);
    let mut previous: Vec<u8> = Vec::new();
    while derived.len() < 48 {
        let mut md5 = Md5::new();
        md5.update(&previous);
        md5.update(passphrase);
        md5.update(salt);
        previous = md5.finalize().to_vec();
        derived.extend_from_slice(&previous);
    }
    let mut key = [0u8; 32];
    let mut iv = [0u8; 16];
    key.copy_from_slice(&derived[..32]);
    iv.copy_from_slice(&derived[32..48]);
    (key, iv)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Made with `printf '%s' '{"userId":"u1","companyId":"c1","role":"admin","type":"location",
    /// "activeLocation":"locFixture1","userName":"Ana"}' | openssl enc -aes-256-cbc -md md5 -a -A
    /// -pass pass:fixture-shared-secret` (OpenSSL 3.0); the integration tests make fresh ones
    /// with the `openssl` command when it is installed.
    const FIXTURE: &str = include_str!("../../tests/fixtures/ghl_user_context.txt");

    #[test]
    fn a_payload_made_by_openssl_decrypts_to_its_location() {
        let context = decrypt_user_context(FIXTURE, "fixture-shared-secret").unwrap();
        assert_eq!(context.location.as_str(), "locFixture1");
        assert_eq!(context.company_id.as_deref(), Some("c1"));
        assert_eq!(context.user_name.as_deref(), Some("Ana"));
    }

    #[test]
    fn another_secret_or_an_altered_payload_is_refused() {
        assert_eq!(
            decrypt_user_context(FIXTURE, "another-secret"),
            Err(ContextError::Undecryptable)
        );
        assert_eq!(
            decrypt_user_context("bm90IHNhbHRlZA==", "fixture-shared-secret"),
            Err(ContextError::Undecryptable)
        );
        assert_eq!(
            decrypt_user_context("%%%", "fixture-shared-secret"),
            Err(ContextError::Undecryptable)
        );
        let mut raw = BASE64.decode(FIXTURE.trim()).unwrap();
        raw.truncate(raw.len() - 3);
        assert_eq!(
            decrypt_user_context(&BASE64.encode(raw), "fixture-shared-secret"),
            Err(ContextError::Undecryptable)
        );
    }

    #[test]
    fn the_key_derivation_matches_openssl() {
        // `openssl enc -aes-256-cbc -md md5 -P -S 0102030405060708 -pass pass:secret`
        let (key, iv) = bytes_to_key(b"secret", &[1, 2, 3, 4, 5, 6, 7, 8]);
        let hex = |b: &[u8]| b.iter().map(|x| format!("{x:02X}")).collect::<String>();
        assert_eq!(
            hex(&key),
            "C9E5A1BD216DBE1317E230CEF48F38EE7F0E17AD64022144BCCEC4A1AA2879AB"
        );
        assert_eq!(hex(&iv), "E24B32BBBC4EF02ECBCB6576523AD893");
    }
}
