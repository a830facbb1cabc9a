#![cfg(feature = "etcd")]
