//! The command line: every subcommand and flag, parsed by clap.

use std::path::PathBuf;
use std::str::FromStr;

use clap::{Args, Parser, Subcommand};
use protocol::{ConvId, DeviceId, MessageId};

/// A terminal chat client: register, log in, list, send, watch, talk.
#[derive(Debug, Parser)]
#[command(name = "chat", version, about, long_about = None)]
pub struct Cli {
    /// Profile directory: the session, the device id and the sync state live here.
    #[arg(long, global = true, env = "CHAT_PROFILE", value_name = "DIR")]
    pub profile: Option<PathBuf>,

    /// Print machine-readable JSON (one object per line for streams) instead of text.
    #[arg(long, global = true)]
    pub json: bool,

    #[command(subcommand)]
    pub command: Command,
}

/// What to do.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create an account, and log this profile's device in with it (one password prompt).
    Register {
        /// Controller URL, e.g. http://127.0.0.1:8080.
        #[arg(long, env = "CHAT_SERVER")]
        server: String,
        /// User name: 3 to 32 of a-z, 0-9, '_', '.', '-'.
        user: String,
        #[command(flatten)]
        password: PasswordArg,
        /// A name for this device, shown in `chat devices`.
        #[arg(long, default_value = "chat-cli")]
        device_name: String,
        /// Only create the account; do not log this profile in.
        #[arg(long)]
        no_login: bool,
    },
    /// Log in on this profile's device and save the session in the profile.
    Login {
        /// Controller URL, e.g. http://127.0.0.1:8080.
        #[arg(long, env = "CHAT_SERVER")]
        server: String,
        /// User name.
        user: String,
        #[command(flatten)]
        password: PasswordArg,
        /// A name for this device, shown in `chat devices`.
        #[arg(long, default_value = "chat-cli")]
        device_name: String,
    },
    /// Forget the saved session (the device id is kept).
    Logout,
    /// Show who this profile is logged in as.
    Whoami,
    /// List my conversations: id, name, unread count, last message.
    List,
    /// Open (or find) the direct conversation with a user and print its id.
    Dm {
        /// The other user.
        user: String,
    },
    /// List public rooms, optionally matching a query.
    Rooms {
        /// Part of a room name.
        query: Option<String>,
    },
    /// Create, join, invite to and leave rooms.
    #[command(subcommand)]
    Room(RoomCommand),
    /// Print a page of a conversation's history.
    History {
        /// Conversation id, or @user for a direct conversation.
        conv: ConvRef,
        /// How many events.
        #[arg(long, default_value_t = 50)]
        limit: u32,
        /// Only events before this seq (to scroll back).
        #[arg(long, conflicts_with = "after")]
        before: Option<u64>,
        /// Only events after this seq.
        #[arg(long)]
        after: Option<u64>,
    },
    /// List my devices.
    Devices,
    /// Revoke one of my devices: its token stops working and its connections close.
    Revoke {
        /// The device id (see `chat devices`).
        device: DeviceId,
    },
    /// List the chat nodes the controller knows.
    Nodes,
    /// Send a message (or a file) and wait for the server's ack.
    Send(SendArgs),
    /// Connect and print events and connection changes as they happen, until Ctrl-C.
    Watch {
        /// Only this conversation (id, or @user).
        conv: Option<ConvRef>,
        /// Ignore the profile's saved cursors (replay recent history) and do not update them.
        #[arg(long)]
        fresh: bool,
    },
    /// Chat interactively in one conversation: incoming messages are printed, each line typed
    /// is sent. End with Ctrl-D, Ctrl-C or /quit.
    Talk {
        /// Conversation id, or @user.
        conv: ConvRef,
    },
}

/// Room management.
#[derive(Debug, Subcommand)]
pub enum RoomCommand {
    /// Create a room and print its id.
    Create {
        /// Its name.
        name: String,
        /// Anyone may join without an invitation.
        #[arg(long)]
        public: bool,
        /// Users to add right away (repeat the flag for several).
        #[arg(long = "member", value_name = "USER")]
        members: Vec<String>,
    },
    /// Join a public room.
    Join {
        /// The room id.
        id: i64,
    },
    /// Add a user to a room.
    Invite {
        /// The room id.
        id: i64,
        /// Who to add.
        user: String,
    },
    /// Leave a room.
    Leave {
        /// The room id.
        id: i64,
    },
}

/// `chat send`.
#[derive(Debug, Args)]
pub struct SendArgs {
    /// Conversation id, or @user for a direct conversation.
    pub conv: ConvRef,
    /// The text (the caption with --file; read from stdin when "-").
    pub text: Option<String>,
    /// Upload this file and send it as an attachment.
    #[arg(long, value_name = "PATH")]
    pub file: Option<PathBuf>,
    /// The file's MIME type (guessed from its extension otherwise).
    #[arg(long, requires = "file")]
    pub mime: Option<String>,
    /// Reply to this message id.
    #[arg(long, value_name = "MESSAGE_ID")]
    pub reply_to: Option<i64>,
    /// Use this client id instead of a fresh one (sending the same id twice stores once).
    #[arg(long)]
    pub client_id: Option<String>,
    /// Seconds to wait for the ack.
    #[arg(long, default_value_t = 15)]
    pub timeout: u64,
}

impl SendArgs {
    /// The message id replied to.
    pub fn reply_to(&self) -> Option<MessageId> {
        self.reply_to.map(MessageId)
    }
}

/// The password, from the flag, the environment, or a prompt.
#[derive(Clone, Debug, Args)]
pub struct PasswordArg {
    /// The password (prefer CHAT_PASSWORD or the prompt: flags show up in `ps`).
    #[arg(long, env = "CHAT_PASSWORD", hide_env_values = true)]
    pub password: Option<String>,
}

/// A conversation as typed by a person: a numeric id, or `@user` for a direct conversation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ConvRef {
    /// A conversation id.
    Id(ConvId),
    /// The direct conversation with this user.
    Direct(String),
}

impl FromStr for ConvRef {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        if let Some(user) = s.strip_prefix('@') {
            if user.is_empty() {
                return Err("a user name must follow '@'".to_owned());
            }
            return Ok(ConvRef::Direct(user.to_owned()));
        }
        s.parse::<i64>()
            .map(|id| ConvRef::Id(ConvId(id)))
            .map_err(|_| format!("{s:?} is neither a conversation id nor @user"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conv_refs() {
        assert_eq!("12".parse(), Ok(ConvRef::Id(ConvId(12))));
        assert_eq!("@bob".parse(), Ok(ConvRef::Direct("bob".into())));
        assert!("@".parse::<ConvRef>().is_err());
        assert!("general".parse::<ConvRef>().is_err());
    }

    #[test]
    fn parses_typical_lines() -> Result<(), clap::Error> {
        let cli =
            Cli::try_parse_from(["chat", "--json", "send", "@bob", "hi", "--client-id", "c1"])?;
        assert!(cli.json);
        match cli.command {
            Command::Send(a) => {
                assert_eq!(a.conv, ConvRef::Direct("bob".into()));
                assert_eq!(a.text.as_deref(), Some("hi"));
                assert_eq!(a.client_id.as_deref(), Some("c1"));
            }
            other => panic!("{other:?}"),
        }
        let cli = Cli::try_parse_from([
            "chat", "room", "create", "lab", "--public", "--member", "a", "--member", "b",
        ])?;
        assert!(matches!(
            cli.command,
            Command::Room(RoomCommand::Create { public: true, ref members, .. }) if members.len() == 2
        ));
        assert!(
            Cli::try_parse_from(["chat", "history", "1", "--before", "3", "--after", "1"]).is_err()
        );
        Ok(())
    }

    #[test]
    fn clap_definition_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}
