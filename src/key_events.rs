//! Which keys changed, told to whoever follows the keys as they change: the
//! key feed's streams to keygate's Envoy module (`grpc::key_feed`,
//! docs/envoy-module.md).
//!
//! [`ReplicaKeyState`](crate::replica_state::ReplicaKeyState) tells it,
//! from the same places that invalidate this replica's cache (the admin
//! call that made a change here, or the PostgreSQL notification that tells
//! every replica), so that a follower hears of a change as soon as this
//! replica's Checks see it. Only ids travel here; a follower reads the key
//! again, after the change committed.

use tokio::sync::broadcast;
use uuid::Uuid;

/// How many changes a slow follower may fall behind before it is told to
/// start again from a snapshot ([`KeyEvent::Everything`]).
const BACKLOG: usize = 4096;

/// What changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyEvent {
    /// One key: issued, updated, rotated, revoked, deleted or purged.
    Key(Uuid),
    /// Every key of one owner (suspended or resumed).
    Owner(String),
    /// Anything may have changed (this replica missed notifications while
    /// its listener was away): followers start again from a snapshot.
    Everything,
}

/// The sending end; cheap to clone.
#[derive(Debug, Clone)]
pub struct KeyEvents {
    sender: broadcast::Sender<KeyEvent>,
}

impl Default for KeyEvents {
    fn default() -> Self {
        Self {
            sender: broadcast::channel(BACKLOG).0,
        }
    }
}

impl KeyEvents {
    pub fn tell(&self, event: KeyEvent) {
        // No follower is no error: nobody needs telling.
        let _ = self.sender.send(event);
    }

    /// Every event told from now on. A follower that falls more than
    /// [`BACKLOG`] behind gets `RecvError::Lagged` and must start again
    /// from a snapshot.
    pub fn follow(&self) -> broadcast::Receiver<KeyEvent> {
        self.sender.subscribe()
    }
}
