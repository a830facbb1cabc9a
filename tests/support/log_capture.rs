//! A `tracing` subscriber that records every event as `(target, message)`, for tests
//! that ask what the library logged (`tracing::subscriber::set_default(recorder.clone())`
//! for the current thread, or a current-thread runtime's whole test).
#![allow(dead_code)]

use std::sync::{Arc, Mutex};

use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::{Event, Metadata, Subscriber};

/// Every event as `(target, message)`, in order.
#[derive(Clone, Default)]
pub struct Recorder(Arc<Mutex<Vec<(String, String)>>>);

impl Recorder {
    /// The events so far.
    pub fn events(&self) -> Vec<(String, String)> {
        self.0.lock().unwrap().clone()
    }

    /// How many events so far have a message that contains `text`.
    pub fn count(&self, text: &str) -> usize {
        (self.0.lock().unwrap().iter())
            .filter(|(_, m)| m.contains(text))
            .count()
    }
}

struct Message(String);

impl Visit for Message {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            self.0 = format!("{value:?}");
        }
    }
}

impl Subscriber for Recorder {
    fn enabled(&self, _: &Metadata<'_>) -> bool {
        true
    }
    fn new_span(&self, _: &Attributes<'_>) -> Id {
        Id::from_u64(1)
    }
    fn record(&self, _: &Id, _: &Record<'_>) {}
    fn record_follows_from(&self, _: &Id, _: &Id) {}
    fn event(&self, event: &Event<'_>) {
        let mut message = Message(String::new());
        event.record(&mut message);
        self.0
            .lock()
            .unwrap()
            .push((event.metadata().target().to_string(), message.0));
    }
    fn enter(&self, _: &Id) {}
    fn exit(&self, _: &Id) {}
}
