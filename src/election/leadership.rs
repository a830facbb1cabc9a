//! What a candidate (and an observer) sees: who leads, and this candidate's own state.

use crate::backend::LeaseInfo;
use crate::context::LeaseContext;
use crate::error::LeaseError;

/// Who leads, as a follower or an observer learns it (from the lease's metadata).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaderInfo {
    /// The leader's identity (the lease's metadata, as UTF-8; invalid bytes are
    /// replaced).
    pub identity: String,
    /// The leader's fencing token: it grows with every term.
    pub token: u64,
}

impl LeaderInfo {
    pub(super) fn from_info(info: LeaseInfo) -> LeaderInfo {
        LeaderInfo {
            identity: String::from_utf8_lossy(&info.metadata).into_owned(),
            token: info.token,
        }
    }
}

/// A candidate's state in an election; see the [module docs](crate::election).
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum Leadership {
    /// This candidate does not lead; it campaigns (waits for the key).
    Follower {
        /// The current leader, when known: `None` while nobody leads, before the first
        /// look, after a backend error, or when the leaser cannot look leases up
        /// ([`LeaseError::Unsupported`]).
        leader: Option<LeaderInfo>,
    },
    /// This candidate leads, while `context` is live.
    Leader {
        /// The term's fencing token: pass it with every write.
        token: u64,
        /// The lease's context: the term ends when it ends.
        context: LeaseContext,
    },
    /// The campaign is over.
    Stopped {
        /// `None` after [`Election::resign`](crate::election::Election::resign) (or a
        /// dropped [`Election`](crate::election::Election)); else why it
        /// could not go on (the leaser stopped, or the options were refused).
        error: Option<LeaseError>,
    },
}

impl Leadership {
    /// `true` while this candidate leads: the state is `Leader` and its context is
    /// live (read now, so it is `false` from the instant the lease ends).
    pub fn is_leader(&self) -> bool {
        matches!(self, Leadership::Leader { context, .. } if !context.is_cancelled())
    }

    /// The term's token while this candidate leads (see [`is_leader`](Self::is_leader)).
    pub fn token(&self) -> Option<u64> {
        match self {
            Leadership::Leader { token, context } if !context.is_cancelled() => Some(*token),
            _ => None,
        }
    }

    /// The leader a follower knows of.
    pub fn leader(&self) -> Option<&LeaderInfo> {
        match self {
            Leadership::Follower { leader } => leader.as_ref(),
            _ => None,
        }
    }

    /// `true` once the campaign is over.
    pub fn is_stopped(&self) -> bool {
        matches!(self, Leadership::Stopped { .. })
    }
}
