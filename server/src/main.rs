//! `sluice`: the broker and its command-line tool.
#![forbid(unsafe_code)]

use std::process::ExitCode;

fn main() -> ExitCode {
    let command = std::env::args().nth(1);
    match command.as_deref() {
        Some("serve") => {
            eprintln!(
                "sluice serve: not yet — the broker lands with issue #4; \
                 the storage engine (sluice-storage) is usable as a library today"
            );
            ExitCode::from(2)
        }
        Some("--version") | Some("-V") => {
            println!("sluice {}", env!("CARGO_PKG_VERSION"));
            ExitCode::SUCCESS
        }
        _ => {
            eprintln!("usage: sluice serve | sluice --version");
            ExitCode::from(2)
        }
    }
}
