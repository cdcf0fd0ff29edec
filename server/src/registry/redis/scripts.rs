//! The registry's Lua scripts, each the shared prelude followed by its own file, loaded once
//! per process.

use std::sync::LazyLock;

use redis::Script;

/// Helpers every script starts with.
const PRELUDE: &str = include_str!("prelude.lua");

/// One script per registry change that touches more than one key.
pub(super) struct Scripts {
    pub register: Script,
    pub heartbeat: Script,
    pub set_state: Script,
    pub deregister: Script,
    pub attach: Script,
    pub detach: Script,
    pub assign: Script,
    pub reap: Script,
    pub claim_controller: Script,
    pub release_controller: Script,
}

/// Each script's SHA is computed once; Redis loads a script the first time it is missing
/// (`NOSCRIPT`, e.g. after a restart) and `EVALSHA` runs it after that.
pub(super) static SCRIPTS: LazyLock<Scripts> = LazyLock::new(|| {
    let s = |body: &str| Script::new(&format!("{PRELUDE}{body}"));
    Scripts {
        register: s(include_str!("register.lua")),
        heartbeat: s(include_str!("heartbeat.lua")),
        set_state: s(include_str!("set_state.lua")),
        deregister: s(include_str!("deregister.lua")),
        attach: s(include_str!("attach.lua")),
        detach: s(include_str!("detach.lua")),
        assign: s(include_str!("assign.lua")),
        reap: s(include_str!("reap.lua")),
        claim_controller: s(include_str!("claim_controller.lua")),
        release_controller: s(include_str!("release_controller.lua")),
    }
});
