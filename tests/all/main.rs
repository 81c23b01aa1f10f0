//! tern's end-to-end tests, in one binary.

mod bad_input;
mod browser;
mod c_guest;
mod caller_gone;
mod checkpoint_age;
mod dashboard;
mod differential;
mod etcd;
mod examples;
mod faults;
mod hardening;
mod hardening_local;
mod hybrid;
mod invariants;
mod lazy;
mod lease;
mod limits;
mod nodes;
mod postcopy;
mod postcopy_link;
mod predictive;
mod rebalance;
mod relay;
mod security;
mod support;
