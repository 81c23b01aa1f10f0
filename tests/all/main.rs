//! tern's end-to-end tests, in one binary.

mod bad_input;
mod c_guest;
mod differential;
mod examples;
mod faults;
mod invariants;
mod limits;
mod nodes;
mod support;
