//! Small helpers every room of the house uses, with one way to do each thing: atomic file
//! writes ([`fs`]), bounded reads, CSV cells ([`csv`]), the clock ([`clock`]).
//!
//! Must not import: any other module of the gateway.

pub mod clock;
pub mod csv;
pub mod fs;

/// The SHA-256 of some bytes, lower-case hex: a message's proof of sending, what a form
/// remembers of the text it was opened on.
pub fn sha256_hex(bytes: &[u8]) -> String {
    data_encoding::HEXLOWER.encode(ring::digest::digest(&ring::digest::SHA256, bytes).as_ref())
}

/// The OS user running this process, from the kernel's uid (not `$USER`, which whoever runs
/// the command sets): its name in the password database, else `uid N`; under sudo, who ran
/// it too (`root (sudo by alice)`). The audit trail's "who" for the CLI.
pub fn os_user() -> String {
    // SAFETY: getuid has no preconditions and cannot fail.
    let uid = unsafe { libc::getuid() };
    let name = uid_name(uid).unwrap_or_else(|| format!("uid {uid}"));
    match std::env::var("SUDO_USER") {
        Ok(s) if uid == 0 && !s.is_empty() => {
            let s: String = s.chars().filter(|c| !c.is_control()).take(64).collect();
            format!("{name} (sudo by {s})")
        }
        _ => name,
    }
}

/// `name (uid N)`, or `uid N` when the password database does not know it.
pub fn uid_name_or_number(uid: u32) -> String {
    match uid_name(uid) {
        Some(n) => format!("{n} (uid {uid})"),
        None => format!("uid {uid}"),
    }
}

/// The password database's name of `uid`.
fn uid_name(uid: libc::uid_t) -> Option<String> {
    let mut buf = vec![0u8; 4096];
    // SAFETY: an all-zero passwd is a valid value for getpwuid_r to fill.
    let mut pw: libc::passwd = unsafe { std::mem::zeroed() };
    let mut out: *mut libc::passwd = std::ptr::null_mut();
    // SAFETY: buf outlives the call and its length is passed; pw and out are valid pointers.
    let rc =
        unsafe { libc::getpwuid_r(uid, &mut pw, buf.as_mut_ptr().cast(), buf.len(), &mut out) };
    if rc != 0 || out.is_null() || pw.pw_name.is_null() {
        return None;
    }
    // SAFETY: pw_name points into buf, NUL-terminated by getpwuid_r.
    let name = unsafe { std::ffi::CStr::from_ptr(pw.pw_name) };
    Some(name.to_string_lossy().into_owned())
}

#[cfg(test)]
mod os_user_tests {
    #[test]
    fn the_os_user_is_named_from_the_uid() {
        // SAFETY: getuid has no preconditions.
        let uid = unsafe { libc::getuid() };
        let u = super::os_user();
        assert!(!u.is_empty());
        if uid == 0 {
            assert!(u.starts_with("root"), "{u}");
        }
    }
}
