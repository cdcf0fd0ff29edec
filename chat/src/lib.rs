//! `chat`, a terminal client on the client core, for people and scripts.
//!
//! Code map:
//! - [`cli`]: the command line (clap).
//! - [`profile`]: the profile directory — session, device id, cursors.
//! - [`commands`]: one-shot controller commands (accounts, lists, rooms, history, devices).
//! - [`live`]: commands that connect through the engine — `send`, `watch`, `talk`.
//! - [`render`]: lines for people (names, local times, statuses).

pub mod cli;
pub mod commands;
pub mod live;
pub mod profile;
pub mod render;

use std::process::ExitCode;

use anyhow::Result;
use clap::Parser;

use crate::cli::{Cli, Command};
use crate::commands::Ctx;
use crate::profile::Profile;
use crate::render::Clock;

/// Parses the command line, runs the command, and turns an error into a message and exit
/// code 1 (clap exits with 2 on usage errors).
pub fn main() -> ExitCode {
    // Read the time zone while the process still has one thread (see `Clock::detect`).
    let clock = Clock::detect();
    let cli = Cli::parse();
    init_tracing();
    match run(cli, clock) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            render::err_line(&format!("chat: {e:#}"));
            ExitCode::FAILURE
        }
    }
}

/// Logs go to stderr, quiet unless `CHAT_LOG` (an env-filter, e.g. `client=debug`) says more.
fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("CHAT_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}

fn run(cli: Cli, clock: Clock) -> Result<()> {
    let ctx = Ctx {
        profile: Profile::locate(cli.profile)?,
        json: cli.json,
        clock,
    };
    // Passwords are asked for before the runtime starts: the prompt blocks on the terminal.
    let password = match &cli.command {
        Command::Register { password, .. } => Some(commands::password(password.clone(), true)?),
        Command::Login { password, .. } => Some(commands::password(password.clone(), false)?),
        _ => None,
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(dispatch(&ctx, cli.command, password.unwrap_or_default()))
}

async fn dispatch(ctx: &Ctx, command: Command, password: String) -> Result<()> {
    match command {
        Command::Register {
            server,
            user,
            device_name,
            no_login,
            ..
        } => {
            let info = commands::register(ctx, &server, &user, &password).await?;
            if no_login {
                if ctx.json {
                    render::out_json(&info)?;
                }
                return Ok(());
            }
            commands::login(ctx, &server, &user, &password, &device_name).await
        }
        Command::Login {
            server,
            user,
            device_name,
            ..
        } => commands::login(ctx, &server, &user, &password, &device_name).await,
        Command::Logout => commands::logout(ctx),
        Command::Whoami => commands::whoami(ctx),
        Command::List => commands::list(ctx).await,
        Command::Dm { user } => commands::dm(ctx, &user).await,
        Command::Rooms { query } => commands::rooms(ctx, query.as_deref()).await,
        Command::Room(cmd) => commands::room(ctx, cmd).await,
        Command::History {
            conv,
            limit,
            before,
            after,
        } => commands::history(ctx, &conv, limit, before, after).await,
        Command::Devices => commands::devices(ctx).await,
        Command::Revoke { device } => commands::revoke(ctx, &device).await,
        Command::Nodes => commands::nodes(ctx).await,
        Command::Send(args) => live::send(ctx, args).await,
        Command::Watch { conv, fresh } => live::watch(ctx, conv, fresh).await,
        Command::Talk { conv } => live::talk(ctx, &conv).await,
    }
}
