//! The commands that are one or two controller requests: accounts, lists, rooms, history,
//! devices, nodes. Text output by default, one JSON object per line with `--json`.

use anyhow::{Context, Result, bail};
use client::{Api, HistoryRange};
use protocol::http::{CreateRoomRequest, DeviceInfoState, NodeState};
use protocol::model::UserInfo;
use protocol::{ConvId, DeviceId, limits};

use crate::cli::{ConvRef, PasswordArg, RoomCommand};
use crate::profile::Profile;
use crate::render::{Clock, Names, conv_label, message_text, out, out_json};

/// What every command gets.
pub struct Ctx {
    pub profile: Profile,
    pub json: bool,
    pub clock: Clock,
}

impl Ctx {
    /// The saved session's API, or a hint to log in.
    pub fn api(&self) -> Result<Api> {
        Ok(self.profile.session()?.api()?)
    }
}

/// The conversation a [`ConvRef`] stands for (opening the direct conversation if needed).
pub async fn resolve(api: &Api, conv: &ConvRef) -> Result<ConvId> {
    match conv {
        ConvRef::Id(id) => Ok(*id),
        ConvRef::Direct(user) => Ok(api
            .open_direct(user)
            .await
            .with_context(|| format!("opening the conversation with {user}"))?
            .id),
    }
}

/// The password from the flag or environment, or asked on the terminal without echo.
pub fn password(arg: PasswordArg, confirm: bool) -> Result<String> {
    if let Some(p) = arg.password {
        return Ok(p);
    }
    let no_tty = "no password given: use --password, CHAT_PASSWORD, or run in a terminal";
    let first = rpassword::prompt_password("password: ").context(no_tty)?;
    if confirm {
        let again = rpassword::prompt_password("again: ").context(no_tty)?;
        if again != first {
            bail!("the passwords do not match");
        }
    }
    Ok(first)
}

/// Creates an account; prints it for people (with `--json`, the login that follows
/// prints the user).
pub async fn register(ctx: &Ctx, server: &str, user: &str, password: &str) -> Result<UserInfo> {
    if !limits::username_valid(user) {
        bail!(
            "{user:?} is not a valid user name: 3 to 32 of a-z, 0-9, '_', '.', '-', starting with a letter or digit"
        );
    }
    if password.chars().count() < limits::PASSWORD_MIN_CHARS {
        bail!(
            "the password must have at least {} characters",
            limits::PASSWORD_MIN_CHARS
        );
    }
    let info = client::register(server, user, password).await?;
    if !ctx.json {
        out(&format!("registered {} (id {})", info.username, info.id))?;
    }
    Ok(info)
}

pub async fn login(
    ctx: &Ctx,
    server: &str,
    user: &str,
    password: &str,
    device_name: &str,
) -> Result<()> {
    let device = ctx.profile.device_id()?;
    let session = client::login(server, user, password, &device, device_name).await?;
    ctx.profile.save_session(&session)?;
    if ctx.json {
        out_json(&session.user)?;
    } else {
        out(&format!(
            "logged in as {} on device {} (profile {})",
            session.user.username,
            session.device,
            ctx.profile.dir().display()
        ))?;
    }
    Ok(())
}

pub fn logout(ctx: &Ctx) -> Result<()> {
    let had = ctx.profile.forget_session()?;
    if !ctx.json {
        out(if had {
            "logged out"
        } else {
            "was not logged in"
        })?;
    }
    Ok(())
}

pub fn whoami(ctx: &Ctx) -> Result<()> {
    let s = ctx.profile.session()?;
    if ctx.json {
        out_json(&serde_json::json!({
            "server": s.server, "user": s.user, "device": s.device, "expires_at": s.expires_at,
        }))?;
    } else {
        out(&format!(
            "{} (id {}) on {}, device {}, token valid until {}",
            s.user.username,
            s.user.id,
            s.server,
            s.device,
            ctx.clock.date_time(s.expires_at)
        ))?;
    }
    Ok(())
}

pub async fn list(ctx: &Ctx) -> Result<()> {
    let session = ctx.profile.session()?;
    let api = session.api()?;
    let convs = api.conversations().await?;
    if ctx.json {
        for c in &convs {
            out_json(c)?;
        }
        return Ok(());
    }
    if convs.is_empty() {
        out("no conversations yet: `chat dm USER` or `chat room create NAME`")?;
        return Ok(());
    }
    let mut names = Names::new(api, session.user.clone());
    names.learn(&convs);
    out(&format!("{:<6} {:<24} {:>6}  LAST", "ID", "NAME", "UNREAD"))?;
    for c in &convs {
        let last = match &c.last_message {
            Some(ev) => {
                let who = names.user(c.id, ev.sender).await;
                let text = match &ev.body {
                    protocol::model::EventBody::Message(m) => message_text(m),
                    _ => String::new(),
                };
                format!(
                    "{} {who}: {}",
                    ctx.clock.date_time(ev.at),
                    shorten(&text, 60)
                )
            }
            None => "-".to_owned(),
        };
        out(&format!(
            "{:<6} {:<24} {:>6}  {last}",
            c.id.to_string(),
            shorten(&conv_label(c), 24),
            c.unread
        ))?;
    }
    Ok(())
}

pub async fn dm(ctx: &Ctx, user: &str) -> Result<()> {
    let conv = ctx.api()?.open_direct(user).await?;
    if ctx.json {
        out_json(&conv)?;
    } else {
        out(&conv.id.to_string())?;
    }
    Ok(())
}

pub async fn rooms(ctx: &Ctx, query: Option<&str>) -> Result<()> {
    let rooms = ctx.api()?.rooms(query).await?;
    if ctx.json {
        for r in &rooms {
            out_json(r)?;
        }
        return Ok(());
    }
    if rooms.is_empty() {
        out("no public rooms")?;
        return Ok(());
    }
    out(&format!("{:<6} {:<32} {:>7}", "ID", "NAME", "MEMBERS"))?;
    for r in &rooms {
        out(&format!(
            "{:<6} {:<32} {:>7}",
            r.id.to_string(),
            shorten(&r.name, 32),
            r.member_count
        ))?;
    }
    Ok(())
}

pub async fn room(ctx: &Ctx, cmd: RoomCommand) -> Result<()> {
    let api = ctx.api()?;
    match cmd {
        RoomCommand::Create {
            name,
            public,
            members,
        } => {
            let room = api
                .create_room(&CreateRoomRequest {
                    name,
                    public,
                    members,
                })
                .await?;
            if ctx.json {
                out_json(&room)?;
            } else {
                out(&room.id.to_string())?;
            }
        }
        RoomCommand::Join { id } => {
            let room = api.join_room(ConvId(id)).await?;
            if ctx.json {
                out_json(&room)?;
            } else {
                out(&format!(
                    "joined {} ({} members)",
                    conv_label(&room),
                    room.member_count
                ))?;
            }
        }
        RoomCommand::Invite { id, user } => {
            api.invite(ConvId(id), &user).await?;
            if !ctx.json {
                out(&format!("added {user} to room {id}"))?;
            }
        }
        RoomCommand::Leave { id } => {
            api.leave_room(ConvId(id)).await?;
            if !ctx.json {
                out(&format!("left room {id}"))?;
            }
        }
    }
    Ok(())
}

pub async fn history(
    ctx: &Ctx,
    conv: &ConvRef,
    limit: u32,
    before: Option<u64>,
    after: Option<u64>,
) -> Result<()> {
    let session = ctx.profile.session()?;
    let api = session.api()?;
    let conv = resolve(&api, conv).await?;
    let range = match (before, after) {
        (Some(seq), _) => HistoryRange::Before(seq),
        (None, Some(seq)) => HistoryRange::After(seq),
        (None, None) => HistoryRange::Latest,
    };
    let page = api
        .history(conv, range, Some(limit.clamp(1, limits::HISTORY_PAGE_MAX)))
        .await?;
    if ctx.json {
        for e in &page.events {
            out_json(e)?;
        }
        return Ok(());
    }
    let mut names = Names::new(api, session.user.clone());
    if page.events.is_empty() {
        out("no events")?;
    }
    for e in &page.events {
        let line = names.event_line(&ctx.clock, e, false).await;
        out(&format!("{line}  [id {}]", e.id))?;
    }
    if page.has_more {
        let hint = match (range, page.events.first(), page.events.last()) {
            (HistoryRange::After(_), _, Some(last)) => format!("--after {}", last.seq),
            (_, Some(first), _) => format!("--before {}", first.seq),
            _ => String::new(),
        };
        out(&format!("(more: chat history {conv} {hint})"))?;
    }
    Ok(())
}

pub async fn devices(ctx: &Ctx) -> Result<()> {
    let devices = ctx.api()?.devices().await?;
    if ctx.json {
        for d in &devices {
            out_json(d)?;
        }
        return Ok(());
    }
    out(&format!(
        "{:<38} {:<20} {:<8} LAST LOGIN",
        "ID", "NAME", "STATE"
    ))?;
    for d in &devices {
        let state = match d.state {
            DeviceInfoState::Active => "active",
            DeviceInfoState::Revoked => "revoked",
        };
        let current = if d.current { "  (this device)" } else { "" };
        out(&format!(
            "{:<38} {:<20} {:<8} {}{current}",
            d.id.to_string(),
            shorten(&d.name, 20),
            state,
            ctx.clock.date_time(d.last_login)
        ))?;
    }
    Ok(())
}

pub async fn revoke(ctx: &Ctx, device: &DeviceId) -> Result<()> {
    ctx.api()?.revoke_device(device).await?;
    if !ctx.json {
        out(&format!("revoked {device}"))?;
    }
    Ok(())
}

pub async fn nodes(ctx: &Ctx) -> Result<()> {
    let nodes = ctx.api()?.nodes().await?;
    if ctx.json {
        for n in &nodes.nodes {
            out_json(n)?;
        }
        return Ok(());
    }
    if nodes.nodes.is_empty() {
        out("no nodes")?;
        return Ok(());
    }
    out(&format!(
        "{:<24} {:<9} {:>6} {:>8} {:>9}  WS",
        "NODE", "STATE", "CONNS", "RESERVED", "HEARTBEAT"
    ))?;
    for n in &nodes.nodes {
        let state = match n.state {
            NodeState::Live => "live",
            NodeState::Draining => "draining",
        };
        let age = nodes.now.saturating_sub(n.last_heartbeat);
        out(&format!(
            "{:<24} {:<9} {:>6} {:>8} {:>7}ms  {}",
            n.id.to_string(),
            state,
            n.connections,
            n.reserved,
            age,
            n.ws_url
        ))?;
    }
    Ok(())
}

/// At most `max` characters, with an ellipsis when cut.
pub fn shorten(s: &str, max: usize) -> String {
    let s = s.replace('\n', " ");
    if s.chars().count() <= max {
        return s;
    }
    let mut cut: String = s.chars().take(max.saturating_sub(1)).collect();
    cut.push('…');
    cut
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shortening() {
        assert_eq!(shorten("hello", 10), "hello");
        assert_eq!(shorten("hello world", 6), "hello…");
        assert_eq!(shorten("a\nb", 10), "a b");
    }
}
