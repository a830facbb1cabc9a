//! Test support shared by the tests.
#![allow(dead_code)]

#[macro_use]
pub mod forward;

#[cfg(feature = "server")]
pub mod binary;
pub mod etcd;
pub mod pg;
pub mod proxy;
#[cfg(feature = "server")]
pub mod remote;
pub mod rng;
pub mod scratch;
pub mod shared_store;
pub mod slowed;
#[cfg(feature = "server")]
pub mod status_server;
