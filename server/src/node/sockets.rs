//! Caps on the sockets one device and one user hold open on this node. A device needs one
//! socket (two for a moment while it reconnects); without a cap, one token could open
//! hundreds, each costing the node a session until its `hello` timeout at least. A socket is
//! counted from its upgrade (before `hello`) until its session ends.

use std::collections::HashMap;
use std::sync::Arc;

use parking_lot::Mutex;
use protocol::{DeviceId, UserId};

/// Sockets one device may hold open on one node, by default.
pub const PER_DEVICE: u32 = 4;
/// Sockets one user's devices may hold open on one node together, by default.
pub const PER_USER: u32 = 64;

/// Which cap an upgrade would break.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum OverCap {
    /// This device holds its share of sockets here already.
    #[error("this device has {0} connections to this node already")]
    Device(u32),
    /// This user's devices hold their share of sockets here already.
    #[error("this user's devices have {0} connections to this node already")]
    User(u32),
}

#[derive(Default)]
struct UserSockets {
    total: u32,
    devices: HashMap<DeviceId, u32>,
}

/// The sockets open now, by user and device, and the caps.
pub struct SocketCaps {
    per_device: u32,
    per_user: u32,
    open: Mutex<HashMap<UserId, UserSockets>>,
}

/// One counted socket; dropping it (when the session ends) frees its place.
pub struct SocketPermit {
    caps: Arc<SocketCaps>,
    user: UserId,
    device: DeviceId,
}

impl SocketCaps {
    /// Caps of `per_device` sockets per device and `per_user` per user (each at least 1).
    pub fn new(per_device: u32, per_user: u32) -> Arc<Self> {
        Arc::new(SocketCaps {
            per_device: per_device.max(1),
            per_user: per_user.max(1),
            open: Mutex::new(HashMap::new()),
        })
    }

    /// Counts one more socket of `device`, unless that breaks a cap.
    pub fn admit(
        self: &Arc<Self>,
        user: UserId,
        device: &DeviceId,
    ) -> Result<SocketPermit, OverCap> {
        let mut open = self.open.lock();
        let mine = open.entry(user).or_default();
        let of_device = mine.devices.get(device).copied().unwrap_or(0);
        if of_device >= self.per_device {
            return Err(OverCap::Device(of_device));
        }
        if mine.total >= self.per_user {
            return Err(OverCap::User(mine.total));
        }
        mine.total += 1;
        *mine.devices.entry(device.clone()).or_default() += 1;
        Ok(SocketPermit {
            caps: self.clone(),
            user,
            device: device.clone(),
        })
    }

    /// Sockets counted now for `user`.
    pub fn of_user(&self, user: UserId) -> u32 {
        self.open.lock().get(&user).map_or(0, |u| u.total)
    }
}

impl Drop for SocketPermit {
    fn drop(&mut self) {
        let mut open = self.caps.open.lock();
        let Some(mine) = open.get_mut(&self.user) else {
            return;
        };
        mine.total = mine.total.saturating_sub(1);
        if let Some(n) = mine.devices.get_mut(&self.device) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                mine.devices.remove(&self.device);
            }
        }
        if mine.total == 0 {
            open.remove(&self.user);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caps_hold_and_free() -> Result<(), Box<dyn std::error::Error>> {
        let caps = SocketCaps::new(2, 3);
        let (a, b) = (DeviceId::new("a")?, DeviceId::new("b")?);
        let u = UserId(1);
        let a1 = caps.admit(u, &a)?;
        let _a2 = caps.admit(u, &a)?;
        assert_eq!(caps.admit(u, &a).err(), Some(OverCap::Device(2)));
        let _b1 = caps.admit(u, &b)?;
        assert_eq!(caps.admit(u, &b).err(), Some(OverCap::User(3)));
        // Another user is counted apart.
        let _other = caps.admit(UserId(2), &a)?;
        drop(a1);
        assert_eq!(caps.of_user(u), 2);
        let _b2 = caps.admit(u, &b)?;
        assert_eq!(caps.of_user(u), 3);
        Ok(())
    }

    #[test]
    fn nothing_is_left_behind() -> Result<(), Box<dyn std::error::Error>> {
        let caps = SocketCaps::new(4, 64);
        let d = DeviceId::new("d")?;
        let permits: Vec<_> = (0..4)
            .map(|_| caps.admit(UserId(7), &d))
            .collect::<Result<_, _>>()?;
        drop(permits);
        assert!(caps.open.lock().is_empty());
        Ok(())
    }
}
