//! Small helpers every room of the house uses, with one way to do each thing: atomic file
//! writes ([`fs`]), CSV cells ([`csv`]). Imports nothing above it.

pub mod clock;
pub mod csv;
pub mod fs;
