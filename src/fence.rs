//! Fencing on the resource side (feature `postgres`). Being written.
