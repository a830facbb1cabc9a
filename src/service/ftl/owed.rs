//! The answers an FTL stream owes its client, in request order, while acquires run
//! concurrently with the reading of later requests.

use std::collections::VecDeque;

use tonic::Status;

use crate::Key;

/// The answers a stream owes, in request order: runs of empty answers, acquires still
/// running, and failures. After the first failure nothing new is started: the stream
/// ends with it when its turn comes.
#[derive(Default)]
pub(super) struct Owed {
    queue: VecDeque<Answer>,
    pub(super) failing: bool,
}

enum Answer {
    /// This many empty answers.
    Ok(u64),
    /// The acquire of this key is still running.
    Acquire(Key),
    /// The status that ends the stream.
    Failed(Status),
}

impl Owed {
    pub(super) fn ok(&mut self) {
        match self.queue.back_mut() {
            Some(Answer::Ok(n)) => *n += 1,
            _ => self.queue.push_back(Answer::Ok(1)),
        }
    }

    pub(super) fn fail(&mut self, status: Status) {
        self.failing = true;
        self.queue.push_back(Answer::Failed(status));
    }

    pub(super) fn acquire(&mut self, key: Key) {
        self.queue.push_back(Answer::Acquire(key));
    }

    /// The keys whose acquires are running.
    pub(super) fn acquiring(&self) -> Vec<Key> {
        self.queue
            .iter()
            .filter_map(|a| match a {
                Answer::Acquire(k) => Some(k.clone()),
                _ => None,
            })
            .collect()
    }

    /// The acquire of `key` has answered.
    pub(super) fn resolve(&mut self, key: &Key, answer: Result<(), Status>) {
        if let Some(slot) = self
            .queue
            .iter_mut()
            .find(|a| matches!(a, Answer::Acquire(k) if k == key))
        {
            *slot = match answer {
                Ok(()) => Answer::Ok(1),
                Err(status) => {
                    self.failing = true;
                    Answer::Failed(status)
                }
            };
        }
    }

    /// Takes what can be handed out now: a number of empty answers, then the status
    /// that ends the stream if it is next.
    pub(super) fn take_ready(&mut self) -> (u64, Option<Status>) {
        let mut answers = 0;
        loop {
            match self.queue.front() {
                Some(Answer::Ok(n)) => {
                    answers += n;
                    self.queue.pop_front();
                }
                Some(Answer::Failed(_)) => match self.queue.pop_front() {
                    Some(Answer::Failed(status)) => return (answers, Some(status)),
                    _ => return (answers, None),
                },
                _ => return (answers, None),
            }
        }
    }
}
