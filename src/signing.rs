//! Signed URLs: a variant's or an original's URL that opens without an API key until it
//! expires, for `<img src>` in a browser. The query carries the expiry, the signing key's id
//! and an HMAC-SHA256 over the path, the expiry and the key id:
//! `?exp=1767225600&kid=k1&sig=<base64url>`. Several signing keys may be active at once (the
//! first signs, every one verifies), so a key is rotated by putting the new one first and
//! dropping the old one once the URLs it signed have expired. The secrets come from the
//! environment only (`PHOTOQ_SIGNING_KEYS`), never from a file.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use hmac::{Hmac, Mac};
use sha2::Sha256;

/// The environment variable that holds the signing keys: `id:secret` pairs separated by
/// commas, the signing one first.
pub const KEYS_ENV: &str = "PHOTOQ_SIGNING_KEYS";
/// Shortest secret accepted, in bytes.
const MIN_SECRET_BYTES: usize = 32;
/// Expiry times are rounded up to whole multiples of this many seconds, so that URLs made
/// close together are the same URL and browsers can cache what they fetched.
const EXPIRY_STEP_SECS: i64 = 60;

/// One signing key: an id (sent in the URL) and its secret.
#[derive(Clone)]
struct SigningKey {
    id: String,
    secret: Vec<u8>,
}

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SigningKey")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

/// Signs and checks URLs with the configured keys; with none, signs nothing and lets no
/// signed URL in.
#[derive(Debug, Clone, Default)]
pub struct UrlSigner {
    keys: Vec<SigningKey>,
}

/// Why a signed URL was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    #[error("this signed URL has expired")]
    Expired,
    #[error("the URL's signature does not match (altered, or signed by a retired key)")]
    Mismatch,
    #[error("signed URLs are not enabled on this server")]
    Disabled,
}

/// The query parameters of a signed URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Signature<'a> {
    pub expires: i64,
    pub key_id: &'a str,
    pub sig: &'a str,
}

impl UrlSigner {
    /// The keys in `value` (`id:secret,id:secret`); an empty value is no keys.
    pub fn parse(value: &str) -> Result<UrlSigner, String> {
        let mut keys: Vec<SigningKey> = Vec::new();
        for pair in value.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (id, secret) = pair
                .split_once(':')
                .ok_or_else(|| format!("{KEYS_ENV}: write each key as id:secret"))?;
            if id.is_empty() || !id.chars().all(|c| c.is_ascii_alphanumeric() || c == '-') {
                return Err(format!(
                    "{KEYS_ENV}: key ids are letters, digits and '-' ({id:?})"
                ));
            }
            if secret.len() < MIN_SECRET_BYTES {
                return Err(format!(
                    "{KEYS_ENV}: the secret of {id:?} is shorter than {MIN_SECRET_BYTES} bytes"
                ));
            }
            if keys.iter().any(|k| k.id == id) {
                return Err(format!("{KEYS_ENV}: key id {id:?} given twice"));
            }
            keys.push(SigningKey {
                id: id.to_owned(),
                secret: secret.as_bytes().to_vec(),
            });
        }
        Ok(UrlSigner { keys })
    }

    pub fn is_enabled(&self) -> bool {
        !self.keys.is_empty()
    }

    /// The ids of the keys, the signing one first.
    pub fn key_ids(&self) -> Vec<&str> {
        self.keys.iter().map(|k| k.id.as_str()).collect()
    }

    /// `path` signed to open until at least `now + ttl_secs` (rounded up to the minute):
    /// the path with its query. None without keys.
    pub fn sign(&self, path: &str, now: i64, ttl_secs: u64) -> Option<String> {
        let key = self.keys.first()?;
        let ttl = i64::try_from(ttl_secs).unwrap_or(i64::MAX / 2);
        let expires = (now.saturating_add(ttl)).div_euclid(EXPIRY_STEP_SECS) * EXPIRY_STEP_SECS
            + EXPIRY_STEP_SECS;
        let sig = URL_SAFE_NO_PAD.encode(mac(key, path, expires)?.finalize().into_bytes());
        Some(format!("{path}?exp={expires}&kid={}&sig={sig}", key.id))
    }

    /// Checks `signature` for `path` at `now`, in constant time over the MAC.
    pub fn verify(
        &self,
        path: &str,
        signature: &Signature<'_>,
        now: i64,
    ) -> Result<(), SignatureError> {
        if self.keys.is_empty() {
            return Err(SignatureError::Disabled);
        }
        let key = self
            .keys
            .iter()
            .find(|k| k.id == signature.key_id)
            .ok_or(SignatureError::Mismatch)?;
        let sig = URL_SAFE_NO_PAD
            .decode(signature.sig)
            .map_err(|_| SignatureError::Mismatch)?;
        mac(key, path, signature.expires)
            .ok_or(SignatureError::Mismatch)?
            .verify_slice(&sig)
            .map_err(|_| SignatureError::Mismatch)?;
        // Checked after the MAC, so that an altered expiry reads as altered.
        if signature.expires <= now {
            return Err(SignatureError::Expired);
        }
        Ok(())
    }
}

/// The MAC of `path`, `expires` and the key's id (HMAC takes a key of any length: `None`
/// never happens).
fn mac(key: &SigningKey, path: &str, expires: i64) -> Option<Hmac<Sha256>> {
    let mut mac = Hmac::<Sha256>::new_from_slice(&key.secret).ok()?;
    mac.update(format!("{path}\n{expires}\n{}", key.id).as_bytes());
    Some(mac)
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str = "a:0123456789abcdef0123456789abcdef";
    const B: &str = "b:fedcba9876543210fedcba9876543210";

    fn parts(url: &str) -> (String, i64, String, String) {
        let (path, query) = url.split_once('?').expect("query");
        let mut exp = 0;
        let (mut kid, mut sig) = (String::new(), String::new());
        for pair in query.split('&') {
            match pair.split_once('=').expect("pair") {
                ("exp", v) => exp = v.parse().expect("exp"),
                ("kid", v) => kid = v.into(),
                ("sig", v) => sig = v.into(),
                other => panic!("{other:?}"),
            }
        }
        (path.into(), exp, kid, sig)
    }

    #[test]
    fn a_signed_url_opens_until_it_expires_and_not_when_altered() {
        let signer = UrlSigner::parse(A).expect("keys");
        let url = signer
            .sign("/v1/photos/x/variants/thumbnail", 1000, 300)
            .expect("signed");
        let (path, exp, kid, sig) = parts(&url);
        assert!((1300..=1300 + EXPIRY_STEP_SECS).contains(&exp), "{exp}");
        assert_eq!(exp % EXPIRY_STEP_SECS, 0);
        let ok = Signature {
            expires: exp,
            key_id: &kid,
            sig: &sig,
        };
        assert_eq!(signer.verify(&path, &ok, 1000), Ok(()));
        assert_eq!(signer.verify(&path, &ok, exp), Err(SignatureError::Expired));
        let other_path = "/v1/photos/x/variants/preview";
        assert_eq!(
            signer.verify(other_path, &ok, 1000),
            Err(SignatureError::Mismatch)
        );
        let later = Signature {
            expires: exp + 3600,
            ..ok.clone()
        };
        assert_eq!(
            signer.verify(&path, &later, 1000),
            Err(SignatureError::Mismatch)
        );
        let mut flipped = sig.clone().into_bytes();
        flipped[0] = if flipped[0] == b'A' { b'B' } else { b'A' };
        let flipped = String::from_utf8(flipped).expect("ascii");
        let bad = Signature {
            sig: &flipped,
            ..ok.clone()
        };
        assert_eq!(
            signer.verify(&path, &bad, 1000),
            Err(SignatureError::Mismatch)
        );
        // The same minute gives the same URL.
        assert_eq!(signer.sign("/p", 1000, 300), signer.sign("/p", 1001, 300));
    }

    #[test]
    fn rotation_keeps_old_urls_until_the_old_key_goes() {
        let old = UrlSigner::parse(A).expect("keys");
        let url = old.sign("/p", 0, 600).expect("signed");
        let (path, exp, kid, sig) = parts(&url);
        let signature = Signature {
            expires: exp,
            key_id: &kid,
            sig: &sig,
        };
        let both = UrlSigner::parse(&format!("{B},{A}")).expect("keys");
        assert_eq!(both.key_ids(), ["b", "a"]);
        assert_eq!(both.verify(&path, &signature, 1), Ok(()));
        assert!(both.sign("/p", 0, 600).expect("signed").contains("kid=b"));
        let new = UrlSigner::parse(B).expect("keys");
        assert_eq!(
            new.verify(&path, &signature, 1),
            Err(SignatureError::Mismatch)
        );
        let none = UrlSigner::default();
        assert_eq!(none.sign("/p", 0, 600), None);
        assert_eq!(
            none.verify(&path, &signature, 1),
            Err(SignatureError::Disabled)
        );
    }

    #[test]
    fn malformed_keys_are_refused() {
        assert!(UrlSigner::parse("").expect("empty").key_ids().is_empty());
        assert!(UrlSigner::parse("nocolon").is_err());
        assert!(UrlSigner::parse("a:short").is_err());
        assert!(UrlSigner::parse(&format!("{A},{A}")).is_err());
        assert!(UrlSigner::parse("a b:0123456789abcdef0123456789abcdef").is_err());
        // The secret never shows in debug output.
        let signer = UrlSigner::parse(A).expect("keys");
        assert!(!format!("{signer:?}").contains("0123456789"));
    }
}
