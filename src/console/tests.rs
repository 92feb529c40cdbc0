//! HTTP-level tests of the console (see below).
