//! Writing and reading a conversation: send, edit, delete, attachments, typing, read marks,
//! history pages (from the server, or the cache when it cannot be reached).

use client::HistoryRange;
use protocol::model::Event;
use protocol::{ConvId, DeviceId, MessageId, Millis, Seq, limits};
use serde::Serialize;
use tauri::AppHandle;
use tauri::ipc::{InvokeBody, Request};

use super::Caller;
use crate::attachments;
use crate::cache::SearchHit;
use crate::error::{Error, Result};

/// Events per history page.
const PAGE: u32 = 50;

/// Sends a text message (optionally a reply). Returns its client id at once; the outbox
/// sends it when connected, and the events say when it is stored.
#[tauri::command]
pub fn send_message(
    caller: Caller<'_>,
    conv: ConvId,
    text: String,
    reply_to: Option<MessageId>,
) -> Result<String> {
    let text = text.trim_end().to_owned();
    if text.trim().is_empty() {
        return Err(Error::Invalid("An empty message cannot be sent.".into()));
    }
    let client = caller.device.client()?;
    let mut draft = client::Draft::text(conv, text);
    draft.reply_to = reply_to;
    let id = client.send(draft)?;
    caller.device.save_state();
    Ok(id.to_string())
}

/// Changes the text of one of my messages.
#[tauri::command]
pub fn edit_message(
    caller: Caller<'_>,
    conv: ConvId,
    target: MessageId,
    text: String,
) -> Result<String> {
    if text.trim().is_empty() {
        return Err(Error::Invalid(
            "A message cannot be edited to nothing; delete it instead.".into(),
        ));
    }
    let id = caller
        .device
        .client()?
        .edit(conv, target, text.trim_end())?;
    caller.device.save_state();
    Ok(id.to_string())
}

/// Deletes one of my messages.
#[tauri::command]
pub fn delete_message(caller: Caller<'_>, conv: ConvId, target: MessageId) -> Result<String> {
    let id = caller.device.client()?.delete(conv, target)?;
    caller.device.save_state();
    Ok(id.to_string())
}

/// Reacts to a message with an emoji, or takes my reaction back (`on` false). Every device of
/// every member gets it, as an event of the conversation.
#[tauri::command]
pub fn react(
    caller: Caller<'_>,
    conv: ConvId,
    target: MessageId,
    emoji: String,
    on: bool,
) -> Result<String> {
    if !limits::reaction_valid(&emoji) {
        return Err(Error::Invalid(format!(
            "{emoji:?} cannot be a reaction: pick one emoji."
        )));
    }
    let id = caller.device.client()?.react(conv, target, emoji, on)?;
    caller.device.save_state();
    Ok(id.to_string())
}

/// Uploads a file (the raw request body) and sends it as a message. Headers: `x-conv`,
/// `x-name` and `x-caption` (URI-encoded), `x-mime`. The server's limits are checked first
/// and explained when exceeded.
#[tauri::command]
pub async fn send_attachment(caller: Caller<'_>, request: Request<'_>) -> Result<String> {
    let header = |name: &str| {
        request
            .headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
            .ok_or_else(|| Error::Invalid(format!("missing {name}")))
    };
    let conv = ConvId(
        header("x-conv")?
            .parse()
            .map_err(|_| Error::Invalid("bad conversation id".into()))?,
    );
    let name = attachments::safe_file_name(&attachments::percent_decode(&header("x-name")?)?);
    let caption = attachments::percent_decode(&header("x-caption").unwrap_or_default())?;
    let mut mime = header("x-mime").unwrap_or_default();
    if mime.is_empty() || !limits::attachment_type_allowed(&mime) {
        // Any file may travel as bytes; only known types get a preview.
        mime = "application/octet-stream".into();
    }
    let InvokeBody::Raw(bytes) = request.body() else {
        return Err(Error::Invalid("the file must be sent as raw bytes".into()));
    };
    let bytes = bytes.clone();
    let info = caller.state.server_info().await?;
    let size = bytes.len() as u64;
    if size > info.max_attachment_bytes {
        return Err(Error::TooLarge(format!(
            "{name} is {}; this server accepts attachments up to {}.",
            attachments::human_size(size),
            attachments::human_size(info.max_attachment_bytes)
        )));
    }
    if size == 0 {
        return Err(Error::Invalid(format!("{name} is empty.")));
    }
    let client = caller.device.client()?;
    let attachment = client.upload(conv, &name, &mime, bytes).await?;
    let id = client.send_attachment(&attachment, caption)?;
    caller.device.save_state();
    Ok(id.to_string())
}

/// Saves an attachment to the Downloads folder; returns where.
#[tauri::command]
pub async fn save_attachment(
    app: AppHandle,
    caller: Caller<'_>,
    id: String,
    name: String,
) -> Result<String> {
    let path = attachments::save(&app, &caller.state, &caller.device, &id, &name).await?;
    Ok(path.display().to_string())
}

/// Tells the conversation I am typing (or stopped).
#[tauri::command]
pub fn typing(caller: Caller<'_>, conv: ConvId, active: bool) -> Result<()> {
    caller.device.client()?.typing(conv, active);
    Ok(())
}

/// Marks a conversation read up to `seq`.
#[tauri::command]
pub fn mark_read(caller: Caller<'_>, conv: ConvId, seq: Seq) -> Result<()> {
    caller.device.client()?.mark_read(conv, seq);
    caller.device.cache.set_read(conv, seq)?;
    Ok(())
}

/// A page of history.
#[derive(Debug, Serialize)]
pub struct HistoryView {
    /// Events in ascending `seq`.
    pub events: Vec<Event>,
    /// Whether older events exist.
    pub has_more: bool,
    /// True when the server could not be reached and this came from the cache.
    pub offline: bool,
}

/// A page of a conversation's history before `before` (or the latest), from the server, or
/// from the cache when the server cannot be reached.
#[tauri::command]
pub async fn history(caller: Caller<'_>, conv: ConvId, before: Option<Seq>) -> Result<HistoryView> {
    let device = &caller.device;
    let range = before.map_or(HistoryRange::Latest, HistoryRange::Before);
    let fetched = match caller.api().await {
        Ok(api) => api
            .history(conv, range, Some(PAGE))
            .await
            .map_err(Error::from),
        Err(e) => Err(e),
    };
    match fetched {
        Ok(page) => {
            device.cache.put_events(&page.events)?;
            Ok(HistoryView {
                events: page.events,
                has_more: page.has_more,
                offline: false,
            })
        }
        Err(e) if e.is_offline() || e.kind() == "no_server" => {
            let (events, has_more) = device.cache.events(conv, before, PAGE)?;
            Ok(HistoryView {
                events,
                has_more,
                offline: true,
            })
        }
        Err(e) => Err(e),
    }
}

/// Opens a link from a message in the system's browser (or mail client for `mailto:`). Only
/// those schemes: a message must not be able to start anything else on this computer.
#[tauri::command]
pub fn open_link(url: String) -> Result<()> {
    let lower = url.to_ascii_lowercase();
    if !(lower.starts_with("http://")
        || lower.starts_with("https://")
        || lower.starts_with("mailto:"))
        || url.chars().any(char::is_control)
    {
        return Err(Error::Invalid(format!("{url:?} is not a web or mail link")));
    }
    open::that_detached(&url)
        .map_err(|e| Error::Invalid(format!("no browser could open {url}: {e}")))
}

/// Hits a search returns at most.
const SEARCH_LIMIT: u32 = 50;

/// Messages matching `query` in every conversation this device has cached, newest first.
#[tauri::command]
pub fn search_messages(caller: Caller<'_>, query: String) -> Result<Vec<SearchHit>> {
    Ok(caller.device.cache.search(&query, SEARCH_LIMIT)?)
}

/// When one of my devices running in this app got a message, and through which node.
#[derive(Debug, Serialize)]
pub struct Receipt {
    /// Its window (`main`, `device-2`).
    pub window: String,
    /// Its device id.
    pub device: DeviceId,
    /// Its name.
    pub device_name: String,
    /// When it got the event (`None`: not yet, or only from a history page).
    pub at: Option<Millis>,
    /// The node it was connected to then.
    pub node: Option<String>,
}

/// A message as a tester looks at it: the event itself (sender device, origin node, `seq`,
/// id, time) and when each of my devices in this app got it.
#[derive(Debug, Serialize)]
pub struct MessageInfo {
    /// The event, as this window's cache holds it.
    pub event: Option<Event>,
    /// One per device of mine open in this app, this window's first.
    pub receipts: Vec<Receipt>,
}

/// What the cluster did with one message: see [`MessageInfo`].
#[tauri::command]
pub fn message_info(caller: Caller<'_>, id: MessageId) -> Result<MessageInfo> {
    let event = caller.device.cache.event(id)?;
    let me = caller.device.session_view().map(|s| s.user.id);
    let mut devices = caller.state.all_devices();
    devices.retain(|d| me.is_some() && d.session_view().map(|s| s.user.id) == me);
    devices.sort_by_key(|d| (d.label != caller.device.label, d.label.clone()));
    let mut receipts = Vec::new();
    for d in devices {
        let Some(session) = d.session_view() else {
            continue;
        };
        let (at, node) = d
            .cache
            .receipt(id)?
            .map_or((None, None), |(at, node)| (Some(at), node));
        receipts.push(Receipt {
            window: d.label.clone(),
            device: session.device,
            device_name: session.device_name,
            at,
            node,
        });
    }
    Ok(MessageInfo { event, receipts })
}

/// What the cache holds of a conversation (shown at once, before `history` answers).
#[tauri::command]
pub fn cached_events(caller: Caller<'_>, conv: ConvId) -> Result<Vec<Event>> {
    Ok(caller.device.cache.events(conv, None, PAGE)?.0)
}
