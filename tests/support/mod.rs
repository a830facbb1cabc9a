//! Test support shared by the PostgreSQL tests.
#![allow(dead_code)]

pub mod etcd;
pub mod pg;
pub mod proxy;
pub mod rng;
