//! Each process's cache of member lists, keyed by membership epoch, so that appends to busy
//! conversations cost no member query.

use std::collections::HashMap;
use std::sync::Arc;

use parking_lot::Mutex;
use protocol::{ConvId, UserId};

/// How many conversations' member lists a process keeps before it starts over. A list is one
/// `Arc` per conversation; starting over costs one query per conversation touched next.
const MEMBER_CACHE_CONVERSATIONS: usize = 50_000;

/// Member lists by conversation, each tagged with the membership epoch it was read at.
///
/// `conversations.member_epoch` is bumped in the same transaction as every membership change
/// (and lists are cached only once that transaction committed), so one `(conversation, epoch)`
/// always names the same list, in every process: a cached list is current exactly when its
/// epoch equals the row's, which the store reads anyway. Appends to busy conversations thus
/// cost no member query, while a join made by another process is seen on the next event.
#[derive(Default)]
pub struct MemberCache {
    // A plain mutex: held for a map lookup or insert, never across an await.
    lists: Mutex<HashMap<ConvId, EpochMembers>>,
}

/// A member list and the membership epoch it is of.
type EpochMembers = (i64, Arc<[UserId]>);

impl MemberCache {
    /// The members of `conv` at `epoch`, if known.
    pub(crate) fn get(&self, conv: ConvId, epoch: i64) -> Option<Arc<[UserId]>> {
        match self.lists.lock().get(&conv) {
            Some((e, list)) if *e == epoch => Some(list.clone()),
            _ => None,
        }
    }

    /// Whether some list of `conv` is cached (perhaps of an older epoch).
    pub(crate) fn knows(&self, conv: ConvId) -> bool {
        self.lists.lock().contains_key(&conv)
    }

    /// Remembers the members of `conv` at `epoch` (sorted), unless a later epoch is known.
    pub(crate) fn put(&self, conv: ConvId, epoch: i64, members: Arc<[UserId]>) {
        let mut lists = self.lists.lock();
        if let Some((known, _)) = lists.get(&conv) {
            if *known > epoch {
                return;
            }
        } else if lists.len() >= MEMBER_CACHE_CONVERSATIONS {
            lists.clear();
        }
        lists.insert(conv, (epoch, members));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(v: &[i64]) -> Arc<[UserId]> {
        v.iter().copied().map(UserId).collect()
    }

    #[test]
    fn member_cache_answers_only_for_the_epoch_it_holds() {
        let cache = MemberCache::default();
        cache.put(ConvId(1), 3, ids(&[1, 2]));
        assert_eq!(cache.get(ConvId(1), 3).as_deref(), Some(&ids(&[1, 2])[..]));
        assert!(cache.get(ConvId(1), 4).is_none(), "a newer epoch must miss");
        assert!(cache.get(ConvId(2), 3).is_none());
        // An older list read late (another task) never replaces a newer one.
        cache.put(ConvId(1), 5, ids(&[1, 2, 3]));
        cache.put(ConvId(1), 4, ids(&[1]));
        assert_eq!(
            cache.get(ConvId(1), 5).as_deref(),
            Some(&ids(&[1, 2, 3])[..])
        );
        assert!(cache.get(ConvId(1), 4).is_none());
    }
}
