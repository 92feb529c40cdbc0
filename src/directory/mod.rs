//! The national directory: the ANS extract (`extract`), an establishment's LDAP (`ldap`),
//! the LDIF written from the extract (`ldif`) and the sync that keeps an LDAP in step with the
//! extract (`sync`). The RCPT-time lookup trait they serve is `policy::directory`.
//!
//! Must not import: intake, queue, delivery, console, cli, admin.

pub mod extract;
pub mod ldap;
pub mod ldif;
pub mod lookup;
pub mod sync;
