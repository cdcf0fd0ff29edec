//! The desktop app's entry point; everything is in the library (see `chat_desktop::run`).

// No console window on Windows release builds.
#![cfg_attr(not(debug_assertions), windows_subsystem = "windows")]

fn main() {
    chat_desktop::run()
}
