//! The console's second factor: TOTP (RFC 6238: HMAC-SHA-1, 6 digits, 30-second steps, one
//! step either side), what every authenticator application and `oathtool` compute.
//!
//! Written here over ring's HMAC (already the gateway's crypto) and data-encoding's base32:
//! the algorithm is ten lines; the crates of the field bring their own HMAC, base32 and QR
//! stacks for it.

use std::collections::HashMap;
use std::sync::Mutex;

/// Bytes of a new secret (160 bits, RFC 4226's recommendation).
pub const SECRET_LEN: usize = 20;
const STEP: u64 = 30;
const DIGITS: u32 = 6;

/// A new random secret, as base32 (what the users file keeps and the URI carries).
pub fn new_secret() -> Result<String, String> {
    use ring::rand::SecureRandom;
    let mut b = [0u8; SECRET_LEN];
    ring::rand::SystemRandom::new()
        .fill(&mut b)
        .map_err(|_| "no randomness for a second-factor secret".to_string())?;
    Ok(data_encoding::BASE32_NOPAD.encode(&b))
}

/// The secret's bytes; `None` when it is not base32 of a sensible length.
pub fn secret_bytes(b32: &str) -> Option<Vec<u8>> {
    let clean: String = b32
        .chars()
        .filter(|c| !c.is_whitespace() && *c != '=')
        .map(|c| c.to_ascii_uppercase())
        .collect();
    let b = data_encoding::BASE32_NOPAD.decode(clean.as_bytes()).ok()?;
    (10..=64).contains(&b.len()).then_some(b)
}

/// The code of time step `step` (RFC 4226 §5.3 truncation).
pub fn code_at(secret: &[u8], step: u64) -> u32 {
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY, secret);
    let mac = ring::hmac::sign(&key, &step.to_be_bytes());
    let h = mac.as_ref();
    let off = (h[h.len() - 1] & 0x0f) as usize;
    let bin = u32::from_be_bytes([h[off] & 0x7f, h[off + 1], h[off + 2], h[off + 3]]);
    bin % 10u32.pow(DIGITS)
}

/// The step `code` matches at `now` (one step either side), if any.
pub fn matching_step(secret: &[u8], code: &str, now_unix: u64) -> Option<u64> {
    let code = code.trim();
    if code.len() != DIGITS as usize || !code.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let want: u32 = code.parse().ok()?;
    let now = now_unix / STEP;
    [now.saturating_sub(1), now, now + 1]
        .into_iter()
        // Integers compared whole: no early exit on a first wrong digit.
        .find(|&s| code_at(secret, s) == want)
}

/// `otpauth://totp/passerelle:NAME?secret=...&issuer=passerelle&...`: what an authenticator
/// application scans.
pub fn uri(issuer: &str, account: &str, secret_b32: &str) -> String {
    let enc = |s: &str| {
        s.bytes()
            .map(|b| match b {
                b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                    (b as char).to_string()
                }
                _ => format!("%{b:02X}"),
            })
            .collect::<String>()
    };
    format!(
        "otpauth://totp/{}:{}?secret={secret_b32}&issuer={}&algorithm=SHA1&digits={DIGITS}&period={STEP}",
        enc(issuer),
        enc(account),
        enc(issuer)
    )
}

/// The last step accepted per user: a code is good once (no replay within its window).
#[derive(Default)]
pub struct Used(Mutex<HashMap<String, u64>>);

impl Used {
    /// Accepts `step` for `user` unless that step, or a later one, was already used.
    pub fn take(&self, user: &str, step: u64) -> bool {
        let mut m = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if m.get(user).is_some_and(|&last| step <= last) {
            return false;
        }
        // Old entries are of no use once their window passed: bounded by the users' count.
        m.insert(user.to_string(), step);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 6238 appendix B, SHA-1 (its 8-digit codes, of which ours are the last 6).
    #[test]
    fn rfc_6238_vectors() {
        let secret = b"12345678901234567890";
        for (t, code) in [
            (59u64, 94287082u32),
            (1111111109, 7081804),
            (1111111111, 14050471),
            (1234567890, 89005924),
            (2000000000, 69279037),
        ] {
            assert_eq!(code_at(secret, t / 30), code % 1_000_000, "t={t}");
        }
    }

    #[test]
    fn a_code_matches_one_step_either_side_and_is_good_once() {
        let b32 = new_secret().unwrap();
        let s = secret_bytes(&b32).unwrap();
        assert_eq!(s.len(), SECRET_LEN);
        let now = 1_700_000_015;
        let code = |step: u64| format!("{:06}", code_at(&s, step));
        let st = now / 30;
        assert_eq!(matching_step(&s, &code(st), now), Some(st));
        assert_eq!(matching_step(&s, &code(st - 1), now), Some(st - 1));
        assert_eq!(matching_step(&s, &code(st + 1), now), Some(st + 1));
        assert_eq!(matching_step(&s, &code(st - 2), now), None);
        for bad in ["", "12345", "1234567", "12a456", " 12345"] {
            assert_eq!(matching_step(&s, bad, now), None, "{bad:?}");
        }
        let used = Used::default();
        assert!(used.take("alice", st));
        assert!(!used.take("alice", st), "replayed");
        assert!(
            !used.take("alice", st - 1),
            "an older code after a newer one"
        );
        assert!(used.take("bob", st));
        assert!(used.take("alice", st + 1));
    }

    #[test]
    fn secrets_and_uris() {
        assert_eq!(secret_bytes("not base32!"), None);
        assert_eq!(secret_bytes("AAAA"), None, "too short");
        let b32 = "GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQ";
        assert_eq!(
            secret_bytes(&b32.to_lowercase()).unwrap(),
            b"12345678901234567890"
        );
        assert_eq!(
            uri("passerelle", "dr alice@chu", b32),
            "otpauth://totp/passerelle:dr%20alice%40chu?secret=GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQ&issuer=passerelle&algorithm=SHA1&digits=6&period=30"
        );
    }
}
