//! Conversations: the list, one summary, members, opening a direct conversation, rooms
//! (create, browse, join, leave, invite). Every answer that names conversations or users also
//! goes into the device's cache, so the next launch shows it at once.

use protocol::ConvId;
use protocol::http::{CreateRoomRequest, RoomListing};
use protocol::model::{ConversationSummary, MemberInfo, UserInfo};

use super::Caller;
use crate::device::Device;
use crate::error::{Error, Result};
use crate::events::{AppEvent, UiEvent};

/// A username as people type it: spaces and a leading `@` do not count.
fn username(name: &str) -> &str {
    name.trim().trim_start_matches('@')
}

/// My conversations, from the server (the cache is updated).
#[tauri::command]
pub async fn conversations(caller: Caller<'_>) -> Result<Vec<ConversationSummary>> {
    let list = caller.api().await?.conversations().await?;
    caller.device.cache.replace_conversations(&list)?;
    Ok(list)
}

/// One conversation, from the server.
#[tauri::command]
pub async fn conversation(caller: Caller<'_>, conv: ConvId) -> Result<ConversationSummary> {
    let summary = caller.api().await?.conversation(conv).await?;
    caller.device.cache.put_conversation(&summary)?;
    Ok(summary)
}

/// A conversation's members, with their read positions and presence.
#[tauri::command]
pub async fn members(caller: Caller<'_>, conv: ConvId) -> Result<Vec<MemberInfo>> {
    let members = caller.api().await?.members(conv).await?;
    let users: Vec<UserInfo> = members.iter().map(|m| m.user.clone()).collect();
    caller.device.cache.put_users(&users)?;
    Ok(members)
}

/// Opens (or finds) the direct conversation with `username`.
#[tauri::command]
pub async fn open_direct(caller: Caller<'_>, username: String) -> Result<ConversationSummary> {
    let username = self::username(&username);
    let summary = caller
        .api()
        .await?
        .open_direct(username)
        .await
        .map_err(|e| Error::from(e).about_user(username))?;
    remember(&caller.device, &summary)?;
    Ok(summary)
}

fn remember(device: &Device, summary: &ConversationSummary) -> Result<()> {
    device.cache.put_conversation(summary)?;
    if let Some(peer) = &summary.peer {
        device.cache.put_users(std::slice::from_ref(peer))?;
    }
    Ok(())
}

/// Creates a room; `members` are usernames to add.
#[tauri::command]
pub async fn create_room(
    caller: Caller<'_>,
    name: String,
    public: bool,
    members: Vec<String>,
) -> Result<ConversationSummary> {
    let request = CreateRoomRequest {
        name: name.trim().to_owned(),
        public,
        members: members
            .iter()
            .map(|m| username(m).to_owned())
            .filter(|m| !m.is_empty())
            .collect(),
    };
    let summary = caller.api().await?.create_room(&request).await?;
    remember(&caller.device, &summary)?;
    Ok(summary)
}

/// Public rooms, optionally filtered by name.
#[tauri::command]
pub async fn public_rooms(caller: Caller<'_>, query: Option<String>) -> Result<Vec<RoomListing>> {
    let query = query.as_deref().map(str::trim).filter(|q| !q.is_empty());
    Ok(caller.api().await?.rooms(query).await?)
}

/// Joins a public room.
#[tauri::command]
pub async fn join_room(caller: Caller<'_>, conv: ConvId) -> Result<ConversationSummary> {
    let summary = caller.api().await?.join_room(conv).await?;
    remember(&caller.device, &summary)?;
    Ok(summary)
}

/// Leaves a room.
#[tauri::command]
pub async fn leave_room(caller: Caller<'_>, conv: ConvId) -> Result<()> {
    caller.api().await?.leave_room(conv).await?;
    caller.device.cache.remove_conversation(conv)?;
    caller.device.emit(UiEvent::App(AppEvent::Removed { conv }));
    Ok(())
}

/// Adds a user to a room I am in.
#[tauri::command]
pub async fn invite(caller: Caller<'_>, conv: ConvId, username: String) -> Result<()> {
    let username = self::username(&username);
    caller
        .api()
        .await?
        .invite(conv, username)
        .await
        .map_err(|e| Error::from(e).about_user(username))
}
