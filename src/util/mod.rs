//! Small helpers every room of the house uses, with one way to do each thing: atomic file
//! writes ([`fs`]). Imports nothing above it.

pub mod fs;
