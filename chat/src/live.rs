//! The commands that connect to a chat node through the client engine: `send` (one message,
//! wait for its ack), `watch` (print everything live) and `talk` (interactive).

use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use client::{
    Client, ClientConfig, ClientError, ClientEvent, ClientState, Draft, Status, StopReason,
};
use protocol::{ClientMsgId, ConvId};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};

use crate::cli::{ConvRef, SendArgs};
use crate::commands::{Ctx, resolve};
use crate::render::{Names, conv_label, out, out_json, status_text};

/// How long `talk` waits at the end for messages still in the outbox.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

/// `chat send`.
pub async fn send(ctx: &Ctx, args: SendArgs) -> Result<()> {
    let session = ctx.profile.session()?;
    let api = session.api()?;
    let conv = resolve(&api, &args.conv).await?;
    let text = match args.text.as_deref() {
        Some("-") => {
            let mut text = String::new();
            tokio::io::stdin()
                .read_to_string(&mut text)
                .await
                .context("reading the text from stdin")?;
            text.trim_end_matches(['\n', '\r']).to_owned()
        }
        Some(text) => text.to_owned(),
        None if args.file.is_some() => String::new(),
        None => bail!("nothing to send: give a text, or --file PATH"),
    };
    let draft = match &args.file {
        Some(path) => {
            let attachment = upload(&api, conv, path, args.mime.as_deref()).await?;
            Draft::attachment(&attachment, text)
        }
        None => Draft::text(conv, text),
    };
    let draft = match args.reply_to() {
        Some(id) => draft.reply_to(id),
        None => draft,
    };
    let client_id = match &args.client_id {
        Some(id) => ClientMsgId::new(id.as_str()).context("--client-id")?,
        None => client::new_client_id(),
    };

    // Start at the latest event everywhere: a sender has no use for a replay.
    let state = ClientState::at_latest(&api.conversations().await?);
    let (chat, events) = Client::start(&session, state, ClientConfig::default())?;
    // Nobody reads events here; a closed channel tells the engine not to keep them.
    drop(events);
    let timeout = Duration::from_secs(args.timeout.max(1));
    let result = chat
        .enqueue_and_wait(draft.into_outgoing(client_id.clone()), timeout)
        .await;
    let status = chat.status();
    chat.shutdown().await;
    match result {
        Ok(ack) => {
            if ctx.json {
                out_json(&ack)?;
            } else {
                let dup = if ack.duplicate {
                    " (duplicate: already stored)"
                } else {
                    ""
                };
                out(&format!(
                    "sent to {}: seq {}, id {}, client id {}{dup}",
                    ack.conv, ack.seq, ack.id, ack.client_id
                ))?;
            }
            Ok(())
        }
        Err(ClientError::Timeout(_)) => Err(anyhow!(
            "no ack within {} s ({}); it may or may not be stored: sending again with --client-id {client_id} is safe",
            timeout.as_secs(),
            status_text(&status)
        )),
        Err(e) => Err(e.into()),
    }
}

/// Uploads a file to `conv`, checking the server's limits first for a clear message.
async fn upload(
    api: &client::Api,
    conv: ConvId,
    path: &Path,
    mime: Option<&str>,
) -> Result<protocol::model::Attachment> {
    let bytes = tokio::fs::read(path)
        .await
        .with_context(|| format!("reading {}", path.display()))?;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "file".to_owned());
    let mime = mime.map_or_else(|| guess_mime(path).to_owned(), str::to_owned);
    if let Ok(info) = api.info().await {
        if !type_allowed(&info.attachment_types, &mime) {
            bail!(
                "{mime} files are not accepted by this server (accepted: {}); pass --mime to say what it is",
                info.attachment_types.join(", ")
            );
        }
        if bytes.len() as u64 > info.max_attachment_bytes {
            bail!(
                "{} is {} bytes; this server accepts at most {}",
                path.display(),
                bytes.len(),
                info.max_attachment_bytes
            );
        }
    }
    Ok(api.upload(conv, &name, &mime, bytes).await?)
}

/// `chat watch`.
pub async fn watch(ctx: &Ctx, conv: Option<ConvRef>, fresh: bool) -> Result<()> {
    let session = ctx.profile.session()?;
    let api = session.api()?;
    let only = match &conv {
        Some(c) => Some(resolve(&api, c).await?),
        None => None,
    };
    let state = if fresh {
        ClientState::default()
    } else {
        ctx.profile.load_state()
    };
    let (chat, mut events) = Client::start(&session, state, ClientConfig::default())?;
    let mut names = Names::new(api, session.user.clone());
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    let outcome = loop {
        let event = tokio::select! {
            _ = &mut ctrl_c => break Ok(()),
            event = events.recv() => event,
        };
        let Some(event) = event else {
            break Ok(());
        };
        if let Some(conv) = only
            && !concerns(&event, conv)
        {
            continue;
        }
        let printed = if ctx.json {
            out_json(&event)
        } else {
            match &event {
                ClientEvent::Event(e) => {
                    out(&names.event_line(&ctx.clock, e, only.is_none()).await)
                }
                ClientEvent::Acked(_) => Ok(()),
                other => match names.notice(other).await {
                    Some(line) => out(&line),
                    None => Ok(()),
                },
            }
        };
        if printed.is_err() {
            break Ok(()); // stdout closed (`| head`): stop quietly
        }
        if let ClientEvent::Status(Status::Stopped { reason }) = &event {
            break stopped(reason);
        }
    };
    let state = chat.shutdown().await;
    if !fresh {
        ctx.profile.save_state(&state)?;
    }
    outcome
}

/// `chat talk`.
pub async fn talk(ctx: &Ctx, conv: &ConvRef) -> Result<()> {
    let session = ctx.profile.session()?;
    let api = session.api()?;
    let conv = resolve(&api, conv).await?;
    let summary = api.conversation(conv).await?;
    let (chat, mut events) =
        Client::start(&session, ctx.profile.load_state(), ClientConfig::default())?;
    let mut names = Names::new(api, session.user.clone());
    names.learn(std::slice::from_ref(&summary));
    crate::render::err_line(&format!(
        "talking in {} as {}; type a message and press Enter. Ctrl-D or /quit to leave.",
        conv_label(&summary),
        session.user.username
    ));
    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    let mut stdin_open = true;
    let mut drain_deadline: Option<tokio::time::Instant> = None;
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    let outcome = loop {
        tokio::select! {
            _ = &mut ctrl_c => break Ok(()),
            line = lines.next_line(), if stdin_open => match line {
                Ok(Some(line)) => {
                    let line = line.trim_end();
                    if line == "/quit" {
                        stdin_open = false;
                        drain_deadline = Some(tokio::time::Instant::now() + DRAIN_TIMEOUT);
                    } else if !line.is_empty()
                        && let Err(e) = chat.send_text(conv, line)
                    {
                        crate::render::err_line(&format!("! not sent: {e}"));
                    }
                }
                Ok(None) | Err(_) => {
                    stdin_open = false;
                    drain_deadline = Some(tokio::time::Instant::now() + DRAIN_TIMEOUT);
                }
            },
            event = events.recv() => {
                let Some(event) = event else { break Ok(()) };
                if let ClientEvent::Status(Status::Stopped { reason }) = &event {
                    crate::render::err_line(&format!("* {}", status_text(&Status::Stopped { reason: reason.clone() })));
                    break stopped(reason);
                }
                if !concerns(&event, conv) {
                    continue;
                }
                let printed = match &event {
                    ClientEvent::Event(e) => {
                        chat.mark_read(conv, e.seq);
                        out(&names.event_line(&ctx.clock, e, false).await)
                    }
                    ClientEvent::Acked(_) | ClientEvent::Welcome(_) => Ok(()),
                    other => match names.notice(other).await {
                        // Connection changes go to stderr, so stdout stays the conversation.
                        Some(line) => {
                            crate::render::err_line(&line);
                            Ok(())
                        }
                        None => Ok(()),
                    },
                };
                if printed.is_err() {
                    break Ok(());
                }
            }
            _ = tick.tick(), if drain_deadline.is_some() => {
                let done = chat.pending() == 0;
                if done || drain_deadline.is_some_and(|d| tokio::time::Instant::now() >= d) {
                    break Ok(());
                }
            }
        }
    };
    let state = chat.shutdown().await;
    if !state.outbox.is_empty() {
        eprintln!(
            "! {} message(s) were not acknowledged and were not sent",
            state.outbox.len()
        );
    }
    ctx.profile.save_state(&state)?;
    outcome
}

/// Whether an event belongs in a view of one conversation (status changes always do).
fn concerns(event: &ClientEvent, conv: ConvId) -> bool {
    match event {
        ClientEvent::Event(e) => e.conv == conv,
        ClientEvent::Acked(a) => a.conv == conv,
        ClientEvent::Typing { conv: c, .. } | ClientEvent::Read { conv: c, .. } => *c == conv,
        _ => true,
    }
}

/// The outcome of an engine that stopped on its own.
fn stopped(reason: &StopReason) -> Result<()> {
    match reason {
        StopReason::Shutdown => Ok(()),
        other => Err(anyhow!("{other}")),
    }
}

/// Whether `mime` is in the server's list (entries ending in `/` accept any subtype).
fn type_allowed(types: &[String], mime: &str) -> bool {
    let mime = mime.split(';').next().unwrap_or_default().trim();
    types.iter().any(|t| {
        if t.ends_with('/') {
            mime.starts_with(t.as_str()) && mime.len() > t.len()
        } else {
            mime.eq_ignore_ascii_case(t)
        }
    })
}

/// A MIME type from a file's extension; `application/octet-stream` when unknown.
fn guess_mime(path: &Path) -> &'static str {
    let ext = path
        .extension()
        .map(|e| e.to_string_lossy().to_ascii_lowercase())
        .unwrap_or_default();
    match ext.as_str() {
        "png" => "image/png",
        "jpg" | "jpeg" => "image/jpeg",
        "gif" => "image/gif",
        "webp" => "image/webp",
        "mp3" => "audio/mpeg",
        "ogg" | "oga" | "opus" => "audio/ogg",
        "wav" => "audio/wav",
        "m4a" => "audio/mp4",
        "mp4" | "m4v" => "video/mp4",
        "webm" => "video/webm",
        "mov" => "video/quicktime",
        "pdf" => "application/pdf",
        "zip" => "application/zip",
        "txt" | "log" | "md" => "text/plain",
        _ => "application/octet-stream",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mime_guesses_are_accepted_by_default() {
        let defaults: Vec<String> = protocol::limits::ATTACHMENT_TYPES
            .iter()
            .map(|s| (*s).to_owned())
            .collect();
        for name in [
            "a.png", "b.JPG", "c.ogg", "d.mp4", "e.pdf", "f.txt", "g.bin", "noext",
        ] {
            let mime = guess_mime(Path::new(name));
            assert!(type_allowed(&defaults, mime), "{name} → {mime}");
            assert_eq!(
                type_allowed(&defaults, mime),
                protocol::limits::attachment_type_allowed(mime)
            );
        }
        assert!(!type_allowed(&defaults, "text/html"));
        assert!(!type_allowed(&defaults, "video/"));
    }
}
