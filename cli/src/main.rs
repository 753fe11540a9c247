//! `drctl`: the on-call CLI of drc. See `drctl --help`.

use std::process::ExitCode;

use clap::Parser;
use drctl::{run, Cli};

/// How a process killed by SIGPIPE exits in a shell (128 + 13).
const BROKEN_PIPE_EXIT: i32 = 141;

/// `drctl status | head`: the reader went away. Rust ignores SIGPIPE, so
/// `println!` panics on the broken pipe; end quietly instead, as a process
/// killed by SIGPIPE would.
fn quiet_on_broken_pipe() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let text = info.payload().downcast_ref::<String>().map(String::as_str).unwrap_or_default();
        if text.contains("failed printing to stdout") && text.contains("Broken pipe") {
            std::process::exit(BROKEN_PIPE_EXIT);
        }
        default(info);
    }));
}

fn main() -> ExitCode {
    quiet_on_broken_pipe();
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
