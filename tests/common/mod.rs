//! The fixture module of the command's tests: the workspace's
//! (`messenger-testkit`: bounded waits, transports, raw peers, pyzmq
//! peers, memory readings); `serve`, which runs this package's `messenger
//! serve` as a child process; and `netns`, hosts of network namespaces on
//! a bridge whose links can be cut (the network test bed, tests/netns.rs).
#![allow(dead_code, unused_imports)]

pub use messenger_testkit::*;

pub mod netns;
pub mod serve;
