//! The devices connected to this node, by user, and each device's outgoing queue.
//!
//! Delivery never blocks and never takes a global lock: the index is sharded by user, readers
//! share a shard, and a frame is pushed into each recipient device's own queue (the same
//! `Bytes` for every device). A queue that reaches its bound means the device does not read
//! fast enough: the device is closed with `TOO_SLOW` and will resync when it comes back, so
//! one slow device can never stall the node or its peers.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures::task::AtomicWaker;
use parking_lot::{Mutex, RwLock};
use protocol::{ConvId, DeviceId, MessageId, Millis, Seq, UserId};
use tokio::sync::Notify;

/// One persisted event as every local recipient gets it: serialized once, shared.
#[derive(Debug)]
pub struct SharedEvent {
    /// The conversation.
    pub conv: ConvId,
    /// Its position.
    pub seq: Seq,
    /// Its id.
    pub id: MessageId,
    /// The `event` frame.
    pub frame: Bytes,
}

/// Why a session is being closed: its verdict. Once a session has one, nothing more it reads
/// is handled, and its connection is gone within a second (see [`super::session`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CloseReason {
    /// The node drains: send `moving`, then close 1012.
    Moving,
    /// The device was revoked.
    Revoked,
    /// The queue overflowed.
    TooSlow,
    /// The device sent a frame over the size limit.
    TooBig,
    /// The device kept sending over the rate limit.
    RateLimited,
    /// The device's token expired: it must log in again.
    Expired,
}

impl CloseReason {
    /// A label for metrics and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            CloseReason::Moving => "moving",
            CloseReason::Revoked => "revoked",
            CloseReason::TooSlow => "too_slow",
            CloseReason::TooBig => "too_big",
            CloseReason::RateLimited => "rate_limited",
            CloseReason::Expired => "expired",
        }
    }
}

/// An item of a device's queue.
#[derive(Debug)]
pub enum Outbound {
    /// A conversation event (ordered and deduplicated by the writer).
    Event(Arc<SharedEvent>),
    /// A frame written as it is (ack, error, presence, typing, read marker).
    Live(Bytes),
    /// Fault injection: write this ack, flush, then kill the process.
    AckThenCrash(Bytes),
    /// Compare the device's positions with the store and send whatever it lacks (after the
    /// bus was down: pub/sub drops what is published while a subscriber is away).
    Resync,
}

/// A device's bounded outgoing queue. It allocates nothing while empty, so idle devices cost
/// a few dozen bytes here.
pub struct DeviceQueue {
    items: Mutex<VecDeque<Outbound>>,
    /// Wakes the writer when an item is queued or a close is decided.
    notify: Notify,
    closing: Mutex<Option<CloseReason>>,
    /// Wakes the session when a close is decided, whatever its writer is waiting on (a write
    /// to a device that does not read never ends by itself).
    decided: AtomicWaker,
    /// When the writer started the write it is in (ms since the epoch; 0: not writing), for
    /// the node's sweep to close a device that accepts nothing ([`Devices::sweep`]).
    writing_since: AtomicI64,
    overflowed: AtomicBool,
    cap: usize,
}

impl DeviceQueue {
    /// A queue holding at most `cap` items.
    pub fn new(cap: usize) -> Self {
        DeviceQueue {
            items: Mutex::new(VecDeque::new()),
            notify: Notify::new(),
            closing: Mutex::new(None),
            decided: AtomicWaker::new(),
            writing_since: AtomicI64::new(0),
            overflowed: AtomicBool::new(false),
            cap,
        }
    }

    /// Queues an item; on overflow, asks the session to close as too slow instead.
    pub fn push(&self, item: Outbound) -> bool {
        let mut q = self.items.lock();
        if q.len() >= self.cap {
            drop(q);
            if !self.overflowed.swap(true, Ordering::Relaxed) {
                metrics::counter!("chat_slow_devices_total").increment(1);
                self.close(CloseReason::TooSlow);
            }
            return false;
        }
        q.push_back(item);
        drop(q);
        self.notify.notify_one();
        true
    }

    /// Asks the session to close (the first reason wins).
    pub fn close(&self, reason: CloseReason) {
        let first = {
            let mut closing = self.closing.lock();
            let first = closing.is_none();
            closing.get_or_insert(reason);
            first
        };
        if first {
            metrics::counter!("chat_sessions_closed_total", "reason" => reason.as_str())
                .increment(1);
        }
        self.notify.notify_one();
        self.decided.wake();
    }

    /// The close asked for, if any.
    pub fn closing(&self) -> Option<CloseReason> {
        *self.closing.lock()
    }

    /// Resolves once a close is asked for, with its reason.
    pub fn decided(&self) -> impl Future<Output = CloseReason> + '_ {
        std::future::poll_fn(move |cx| self.poll_decided(cx))
    }

    /// Ready once a close is asked for, with its reason; otherwise the task is woken then.
    pub fn poll_decided(&self, cx: &mut Context<'_>) -> Poll<CloseReason> {
        if let Some(reason) = self.closing() {
            return Poll::Ready(reason);
        }
        self.decided.register(cx.waker());
        self.closing().map_or(Poll::Pending, Poll::Ready)
    }

    /// The writer starts a write at `now` (ms).
    pub fn writing(&self, now: Millis) {
        self.writing_since.store(now.max(1), Ordering::Relaxed);
    }

    /// The writer's write is done.
    pub fn written(&self) {
        self.writing_since.store(0, Ordering::Relaxed);
    }

    /// Whether the writer has been in one write since `limit` ms before `now` or longer.
    fn stalled(&self, now: Millis, limit: Millis) -> bool {
        let since = self.writing_since.load(Ordering::Relaxed);
        since != 0 && now - since >= limit
    }

    /// Moves everything queued into `out`.
    pub fn take_all(&self, out: &mut Vec<Outbound>) {
        out.extend(self.items.lock().drain(..));
    }

    /// Waits until something is queued or a close is asked for.
    pub async fn ready(&self) {
        if self.items.lock().is_empty() && self.closing().is_none() {
            self.notify.notified().await;
        }
    }
}

/// One connected device.
pub struct DeviceSlot {
    /// Unique per session on this node.
    pub session: u64,
    /// Whose.
    pub user: UserId,
    /// Which.
    pub device: DeviceId,
    /// When its token expires (ms since the epoch): the node's sweep closes it then, so that
    /// no session needs a timer of its own.
    pub expires_at: Millis,
    /// Its outgoing queue.
    pub queue: DeviceQueue,
}

/// What one [`Devices::sweep`] closed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Swept {
    /// Sessions whose token expired.
    pub expired: usize,
    /// Sessions whose device accepted nothing for the stall limit.
    pub stalled: usize,
}

const SHARDS: usize = 32;

type Shard = RwLock<HashMap<UserId, Vec<Arc<DeviceSlot>>>>;

/// The node's connected devices.
pub struct Devices {
    shards: Box<[Shard]>,
    count: AtomicU64,
}

impl Default for Devices {
    fn default() -> Self {
        Devices {
            shards: (0..SHARDS).map(|_| RwLock::new(HashMap::new())).collect(),
            count: AtomicU64::new(0),
        }
    }
}

impl Devices {
    fn shard(&self, user: UserId) -> &Shard {
        &self.shards[(user.0 as u64 % SHARDS as u64) as usize]
    }

    /// Adds a device.
    pub fn add(&self, slot: Arc<DeviceSlot>) {
        self.shard(slot.user)
            .write()
            .entry(slot.user)
            .or_default()
            .push(slot);
        self.count.fetch_add(1, Ordering::Relaxed);
    }

    /// Removes a session's device.
    pub fn remove(&self, user: UserId, session: u64) {
        let mut shard = self.shard(user).write();
        if let Some(list) = shard.get_mut(&user) {
            let before = list.len();
            list.retain(|s| s.session != session);
            if list.len() < before {
                self.count.fetch_sub(1, Ordering::Relaxed);
            }
            if list.is_empty() {
                shard.remove(&user);
            }
        }
    }

    /// Devices connected now.
    pub fn count(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }

    /// Calls `f` for each local device of each recipient; returns how many there were.
    pub fn for_each(&self, recipients: &[UserId], mut f: impl FnMut(&Arc<DeviceSlot>)) -> usize {
        let mut n = 0;
        for user in recipients {
            let shard = self.shard(*user).read();
            if let Some(list) = shard.get(user) {
                for slot in list {
                    f(slot);
                    n += 1;
                }
            }
        }
        n
    }

    /// Queues an event for every local device of its recipients.
    pub fn deliver_event(&self, recipients: &[UserId], event: &Arc<SharedEvent>) -> usize {
        self.for_each(recipients, |slot| {
            slot.queue.push(Outbound::Event(event.clone()));
        })
    }

    /// Queues a live frame for every local device of the recipients but the session
    /// `except` (the one the frame came from, if any).
    pub fn deliver_live(&self, recipients: &[UserId], frame: &Bytes, except: Option<u64>) -> usize {
        self.for_each(recipients, |slot| {
            if Some(slot.session) != except {
                slot.queue.push(Outbound::Live(frame.clone()));
            }
        })
    }

    /// Queues a live frame for every local device.
    pub fn deliver_all(&self, frame: &Bytes) -> usize {
        let mut n = 0;
        for shard in self.shards.iter() {
            for list in shard.read().values() {
                for slot in list {
                    slot.queue.push(Outbound::Live(frame.clone()));
                    n += 1;
                }
            }
        }
        n
    }

    /// Closes every session of one device.
    pub fn close_device(&self, user: UserId, device: &DeviceId, reason: CloseReason) -> usize {
        let mut n = 0;
        self.for_each(&[user], |slot| {
            if slot.device == *device {
                slot.queue.close(reason);
                n += 1;
            }
        });
        n
    }

    /// Asks every session to catch up with the store.
    pub fn resync_all(&self) -> usize {
        let mut n = 0;
        for shard in self.shards.iter() {
            for list in shard.read().values() {
                for slot in list {
                    slot.queue.push(Outbound::Resync);
                    n += 1;
                }
            }
        }
        n
    }

    /// Closes the sessions whose token expired at `now` (ms), and those whose writer has been
    /// in one write for `stall` (the device reads nothing: too slow).
    pub fn sweep(&self, now: Millis, stall: Duration) -> Swept {
        let stall = Millis::try_from(stall.as_millis()).unwrap_or(Millis::MAX);
        let mut swept = Swept::default();
        for shard in self.shards.iter() {
            for list in shard.read().values() {
                for slot in list.iter().filter(|s| s.queue.closing().is_none()) {
                    if slot.expires_at <= now {
                        slot.queue.close(CloseReason::Expired);
                        swept.expired += 1;
                    } else if slot.queue.stalled(now, stall) {
                        slot.queue.close(CloseReason::TooSlow);
                        swept.stalled += 1;
                    }
                }
            }
        }
        swept
    }

    /// Closes every session.
    pub fn close_all(&self, reason: CloseReason) {
        for shard in self.shards.iter() {
            for list in shard.read().values() {
                for slot in list {
                    slot.queue.close(reason);
                }
            }
        }
    }

    /// Devices per local user (to replay to a registry that forgot this node).
    pub fn user_counts(&self) -> Vec<(UserId, u32)> {
        self.shards
            .iter()
            .flat_map(|s| {
                s.read()
                    .iter()
                    .map(|(u, l)| (*u, l.len() as u32))
                    .collect::<Vec<_>>()
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn slot(session: u64, user: i64, device: &str, cap: usize) -> Arc<DeviceSlot> {
        expiring(session, user, device, cap, Millis::MAX)
    }

    fn expiring(
        session: u64,
        user: i64,
        device: &str,
        cap: usize,
        expires_at: Millis,
    ) -> Arc<DeviceSlot> {
        Arc::new(DeviceSlot {
            session,
            user: UserId(user),
            device: DeviceId::new(device).expect("valid"),
            expires_at,
            queue: DeviceQueue::new(cap),
        })
    }

    const DAY: Duration = Duration::from_secs(86_400);

    fn swept(expired: usize, stalled: usize) -> Swept {
        Swept { expired, stalled }
    }

    #[test]
    fn the_sweep_closes_expired_sessions_once() {
        let d = Devices::default();
        let (old, new) = (
            expiring(1, 1, "a1", 8, 1_000),
            expiring(2, 2, "b1", 8, 5_000),
        );
        d.add(old.clone());
        d.add(new.clone());
        assert_eq!(d.sweep(999, DAY), swept(0, 0));
        assert_eq!(d.sweep(1_000, DAY), swept(1, 0));
        assert_eq!(old.queue.closing(), Some(CloseReason::Expired));
        assert_eq!(new.queue.closing(), None);
        // Already closing: not counted again.
        assert_eq!(d.sweep(2_000, DAY), swept(0, 0));
    }

    #[test]
    fn the_sweep_closes_a_writer_stuck_in_one_write() {
        let d = Devices::default();
        let (stuck, busy) = (slot(1, 1, "a1", 8), slot(2, 2, "b1", 8));
        d.add(stuck.clone());
        d.add(busy.clone());
        let (stall, limit) = (Duration::from_secs(10), 10_000);
        stuck.queue.writing(1_000);
        busy.queue.writing(1_000);
        busy.queue.written();
        busy.queue.writing(1_000 + limit);
        assert_eq!(d.sweep(1_000 + limit - 1, stall), swept(0, 0));
        assert_eq!(d.sweep(1_000 + limit, stall), swept(0, 1));
        assert_eq!(stuck.queue.closing(), Some(CloseReason::TooSlow));
        assert_eq!(busy.queue.closing(), None);
    }

    #[tokio::test]
    async fn a_decided_close_wakes_whoever_waits_for_it() {
        let s = slot(1, 1, "a", 8);
        let waiter = {
            let s = s.clone();
            tokio::spawn(async move { s.queue.decided().await })
        };
        tokio::task::yield_now().await;
        s.queue.close(CloseReason::Revoked);
        assert_eq!(waiter.await.ok(), Some(CloseReason::Revoked));
        // Already decided: at once, with the first reason.
        s.queue.close(CloseReason::Moving);
        assert_eq!(s.queue.decided().await, CloseReason::Revoked);
    }

    #[test]
    fn delivery_reaches_every_device_of_every_recipient_once() {
        let d = Devices::default();
        let (a1, a2, b1, c1) = (
            slot(1, 1, "a1", 8),
            slot(2, 1, "a2", 8),
            slot(3, 2, "b1", 8),
            slot(4, 3, "c1", 8),
        );
        for s in [&a1, &a2, &b1, &c1] {
            d.add(s.clone());
        }
        assert_eq!(d.count(), 4);
        let ev = Arc::new(SharedEvent {
            conv: ConvId(1),
            seq: 1,
            id: MessageId(1),
            frame: Bytes::from_static(b"x"),
        });
        assert_eq!(d.deliver_event(&[UserId(1), UserId(2)], &ev), 3);
        for (s, want) in [(&a1, 1), (&a2, 1), (&b1, 1), (&c1, 0)] {
            let mut out = Vec::new();
            s.queue.take_all(&mut out);
            assert_eq!(out.len(), want);
        }
        d.remove(UserId(1), 1);
        assert_eq!(d.count(), 3);
        assert_eq!(
            d.deliver_live(&[UserId(1)], &Bytes::from_static(b"y"), None),
            1
        );
        let mut counts = d.user_counts();
        counts.sort();
        assert_eq!(counts, vec![(UserId(1), 1), (UserId(2), 1), (UserId(3), 1)]);
    }

    #[test]
    fn an_overflowing_queue_asks_to_close_as_too_slow() {
        let s = slot(1, 1, "a", 2);
        assert!(s.queue.push(Outbound::Live(Bytes::new())));
        assert!(s.queue.push(Outbound::Live(Bytes::new())));
        assert!(!s.queue.push(Outbound::Live(Bytes::new())));
        assert_eq!(s.queue.closing(), Some(CloseReason::TooSlow));
        // The first reason wins.
        s.queue.close(CloseReason::Moving);
        assert_eq!(s.queue.closing(), Some(CloseReason::TooSlow));
    }

    #[test]
    fn closing_one_device_spares_the_others() {
        let d = Devices::default();
        let (a1, a2) = (slot(1, 1, "a1", 8), slot(2, 1, "a2", 8));
        d.add(a1.clone());
        d.add(a2.clone());
        let dev = DeviceId::new("a2").expect("valid");
        assert_eq!(d.close_device(UserId(1), &dev, CloseReason::Revoked), 1);
        assert_eq!(a1.queue.closing(), None);
        assert_eq!(a2.queue.closing(), Some(CloseReason::Revoked));
    }
}
