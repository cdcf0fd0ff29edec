//! A batch of appends in one transaction: its conversations' heads and member lists read (and
//! where writers run concurrently, locked) first, in id order, each event appended in order with
//! its own result, and the heads it changed written back at its end.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use protocol::{ConvId, UserId};

use super::append::append_one;
use super::{ConvHead, WriteOps};
use crate::store::member_cache::MemberCache;
use crate::store::{Appended, NewEvent, StoreError, StoreResult};

/// Why one event of a batch was not appended.
pub(super) enum Fail {
    /// The event is refused; the batch goes on.
    Refused(StoreError),
    /// A statement failed; the whole transaction is rolled back.
    Db(StoreError),
}

impl From<StoreError> for Fail {
    fn from(e: StoreError) -> Self {
        Fail::Db(e)
    }
}

/// Refuses the event (the batch goes on).
pub(super) fn refuse<T>(e: StoreError) -> Result<T, Fail> {
    Err(Fail::Refused(e))
}

/// A conversation as a batch sees it: its head and members as of the batch's last event.
pub(super) struct ConvState {
    pub head: ConvHead,
    /// Ascending.
    pub members: Arc<[UserId]>,
    /// Whether its head is to be written back.
    pub dirty: bool,
    /// Whether its member list changed (and its epoch with it).
    pub members_changed: bool,
}

/// Conversations a batch touched; `None` for ids that do not exist. Ordered, so that heads are
/// read (and locked) in id order.
pub(super) type States = BTreeMap<ConvId, Option<ConvState>>;

/// The results of a batch, and the member lists it changed, to cache once it committed.
pub(crate) struct BatchOutcome {
    pub results: Vec<StoreResult<Appended>>,
    changed: Vec<(ConvId, i64, Arc<[UserId]>)>,
}

impl BatchOutcome {
    /// Caches the member lists the batch changed. Call only after the commit: until then the
    /// new epochs are not the database's.
    pub(crate) fn remember_members(&self, cache: &MemberCache) {
        for (conv, epoch, members) in &self.changed {
            cache.put(*conv, *epoch, members.clone());
        }
    }
}

/// The members of `conv` at `epoch`: from the cache, else read (under the write lock).
async fn members_at<T: WriteOps>(
    tx: &mut T,
    cache: &MemberCache,
    conv: ConvId,
    epoch: i64,
) -> StoreResult<Arc<[UserId]>> {
    if let Some(m) = cache.get(conv, epoch) {
        return Ok(m);
    }
    let mut ids = tx.member_ids(conv).await?;
    ids.sort_unstable();
    let ids: Arc<[UserId]> = ids.into();
    // Read under the write lock before any change of ours: the committed list at this epoch,
    // safe to share now.
    cache.put(conv, epoch, ids.clone());
    Ok(ids)
}

/// Loads a conversation's state into `states` if it is not there yet (a conversation outside
/// the batch's: the one of a resend's first event).
pub(super) async fn load_state<T: WriteOps>(
    tx: &mut T,
    cache: &MemberCache,
    states: &mut States,
    conv: ConvId,
) -> StoreResult<()> {
    if states.contains_key(&conv) {
        return Ok(());
    }
    let state = match tx.conv_head(conv).await? {
        None => None,
        Some(head) => Some(ConvState {
            members: members_at(tx, cache, conv, head.member_epoch).await?,
            head,
            dirty: false,
            members_changed: false,
        }),
    };
    states.insert(conv, state);
    Ok(())
}

/// Appends a batch inside the backend's transaction: each event in order, each with its own
/// result. Returns `Err` only when a statement failed, and then the transaction must be rolled
/// back; the caller commits otherwise, then calls [`BatchOutcome::remember_members`].
pub(crate) async fn append_batch<T: WriteOps>(
    tx: &mut T,
    cache: &MemberCache,
    batch: Vec<NewEvent>,
) -> StoreResult<BatchOutcome> {
    // Every head first, in id order, with the member lists the cache lacks, in one go where
    // the backend can.
    let mut convs: Vec<ConvId> = batch.iter().map(|e| e.conv).collect();
    convs.sort_unstable();
    convs.dedup();
    let members_of: Vec<ConvId> = convs.iter().copied().filter(|c| !cache.knows(*c)).collect();
    let start = tx.begin_batch(&convs, &members_of, &batch).await?;
    let mut read: HashMap<ConvId, Vec<UserId>> = HashMap::new();
    for (conv, user) in start.members {
        read.entry(conv).or_default().push(user);
    }
    let mut states = States::new();
    for conv in &convs {
        states.insert(*conv, None);
    }
    for (conv, head) in start.heads {
        let members = if members_of.binary_search(&conv).is_ok() {
            let mut ids = read.remove(&conv).unwrap_or_default();
            ids.sort_unstable();
            let ids: Arc<[UserId]> = ids.into();
            // Read under the write lock before any change of ours: the committed list at this
            // epoch, safe to share now.
            cache.put(conv, head.member_epoch, ids.clone());
            ids
        } else {
            members_at(tx, cache, conv, head.member_epoch).await?
        };
        states.insert(
            conv,
            Some(ConvState {
                head,
                members,
                dirty: false,
                members_changed: false,
            }),
        );
    }

    let mut results = Vec::with_capacity(batch.len());
    for ev in batch {
        match append_one(tx, cache, &mut states, ev).await {
            Ok(appended) => results.push(Ok(appended)),
            Err(Fail::Refused(e)) => results.push(Err(e)),
            Err(Fail::Db(e)) => return Err(e),
        }
    }

    let mut dirty = Vec::new();
    let mut changed = Vec::new();
    for (conv, state) in states {
        let Some(state) = state else { continue };
        if state.members_changed {
            changed.push((conv, state.head.member_epoch, state.members));
        }
        if state.dirty && (T::HEADS_IN_ROW || state.members_changed) {
            dirty.push((conv, state.head));
        }
    }
    tx.end_batch(&dirty).await?;
    Ok(BatchOutcome { results, changed })
}
