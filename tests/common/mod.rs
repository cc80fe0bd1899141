//! The fixture module of the command's tests: the workspace's
//! (`messenger-testkit`: bounded waits, transports, raw peers, pyzmq
//! peers, memory readings), and `serve`, which runs this package's
//! `messenger serve` as a child process.
#![allow(dead_code, unused_imports)]

pub use messenger_testkit::*;

pub mod serve;
