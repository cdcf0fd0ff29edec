//! The `chat` binary; everything is in the library (see `chat::main`).

fn main() -> std::process::ExitCode {
    chat::main()
}
