//! Small helpers every room of the house uses, with one way to do each thing: atomic file
//! writes ([`fs`]), bounded reads, CSV cells ([`csv`]), the clock ([`clock`]).
//!
//! Must not import: any other module of the gateway.

pub mod clock;
pub mod csv;
pub mod fs;
