//! Reading a stored message's body is recorded: a body is health data, and whoever reads one
//! (through the CLI, the admin endpoint or on a stopped server's spool) is named in a warn line
//! with the message and the way it was read.

/// Who runs this command, for the log line of a body read: the login behind sudo, the user,
/// and the real uid (which cannot be set from the environment).
pub fn os_reader() -> String {
    let var = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
    // SAFETY: getuid has no preconditions and cannot fail.
    let uid = unsafe { libc::getuid() };
    let user = var("USER")
        .or_else(|| var("LOGNAME"))
        .unwrap_or_else(|| "?".into());
    match var("SUDO_USER") {
        Some(s) => format!("{s} (sudo as {user}, uid {uid})"),
        None => format!("{user} (uid {uid})"),
    }
}

/// Logs the reading of a message's body: who, which message, from where.
pub fn log_body_read(id: &str, reader: &str, via: &str) {
    // One line each: the reader comes from the client, keep it printable.
    let reader: String = reader
        .chars()
        .take(200)
        .map(|c| if c.is_control() { '?' } else { c })
        .collect();
    tracing::warn!(queue_id = %id, reader = %reader, via = %via, "message body read by an administrator");
}
