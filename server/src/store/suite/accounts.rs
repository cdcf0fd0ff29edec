//! Users and devices: registration, lookups, logins, renames and revocations.

use super::*;

/// A login of `device` of `user`, named `name`, at `at`.
fn login<'a>(user: UserId, device: &'a DeviceId, name: &'a str, at: Millis) -> DeviceLogin<'a> {
    DeviceLogin {
        user,
        device,
        name,
        at,
    }
}

/// A user is created once and found by name and by id.
pub async fn users_register_and_are_found(db: &dyn TestDb) -> anyhow::Result<()> {
    let store = db.open().await?;
    let name = unique("ann");
    let at = now();
    let user = |username, password_hash| NewUser {
        username,
        password_hash,
        created_at: at,
    };
    let ann = store.create_user(user(&name, "hash-1")).await?;
    assert_eq!(ann.username, name);
    assert_eq!(ann.password_hash, "hash-1");
    assert_eq!(ann.created_at, at);
    assert_err!(
        store.create_user(user(&name, "hash-2")).await,
        StoreError::Conflict(_)
    );

    assert_eq!(store.user_by_name(&name).await?, Some(ann.clone()));
    assert_eq!(store.user_by_id(ann.id).await?, Some(ann.clone()));
    assert_eq!(store.user_by_name(&unique("nobody")).await?, None);
    assert_eq!(store.user_by_id(UserId(i64::MAX)).await?, None);

    let bob = store.create_user(user(&unique("bob"), "hash-3")).await?;
    assert_ne!(bob.id, ann.id);
    Ok(())
}

/// Logging in creates a device, logging in again renames and re-activates it, revoking bumps
/// its generation for good.
pub async fn devices_log_in_rename_and_revoke(db: &dyn TestDb) -> anyhow::Result<()> {
    let store = db.open().await?;
    let u = user(&*store, "dev").await?;
    let laptop = DeviceId::new("laptop-1")?;
    let phone = DeviceId::new("phone-1")?;

    let first = store
        .login_device(login(u, &laptop, "Laptop", 1_000))
        .await?;
    assert_eq!(
        (first.state, first.generation),
        (DeviceInfoState::Active, 0)
    );
    assert_eq!((first.created_at, first.last_login), (1_000, 1_000));
    assert_eq!(first.name, "Laptop");

    let again = store
        .login_device(login(u, &laptop, "Work laptop", 2_000))
        .await?;
    assert_eq!(again.name, "Work laptop");
    assert_eq!((again.created_at, again.last_login), (1_000, 2_000));
    store.login_device(login(u, &phone, "Phone", 3_000)).await?;

    let listed = store.devices(u).await?;
    let ids: Vec<&str> = listed.iter().map(|d| d.id.as_str()).collect();
    assert_eq!(ids, ["phone-1", "laptop-1"], "most recent login first");

    let revoked = store.revoke_device(u, &laptop).await?;
    assert_eq!(
        (revoked.state, revoked.generation),
        (DeviceInfoState::Revoked, 1)
    );
    assert_eq!(store.device(u, &laptop).await?, Some(revoked));

    let back = store
        .login_device(login(u, &laptop, "Laptop", 4_000))
        .await?;
    assert_eq!(
        (back.state, back.generation),
        (DeviceInfoState::Active, 1),
        "generation survives"
    );

    assert_err!(
        store.revoke_device(u, &DeviceId::new("ghost")?).await,
        StoreError::NotFound
    );
    assert_eq!(store.device(u, &DeviceId::new("ghost")?).await?, None);
    let other = user(&*store, "dev").await?;
    assert_eq!(
        store.device(other, &laptop).await?,
        None,
        "devices are per user"
    );
    assert_err!(
        store.revoke_device(other, &laptop).await,
        StoreError::NotFound
    );
    assert_err!(
        store
            .login_device(login(UserId(i64::MAX), &laptop, "x", 1))
            .await,
        StoreError::NotFound
    );
    Ok(())
}
