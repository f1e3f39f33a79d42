//! The `wshub` binary: parse the command line, build a `Config`, run the server.

use clap::Parser;
use wshub::{Cli, Mode};

fn main() {
    let cli = Cli::parse();
    cli.init_logging();
    let config = cli.config().unwrap_or_else(|e| fail(&e));
    let result = match cli.mode() {
        Mode::Hub => wshub::App::new().workers(cli.workers).run(config),
        Mode::Echo => wshub::run(config, |_| wshub::Echo),
        Mode::Relay => wshub::run(config, |_| wshub::Relay),
    };
    if let Err(e) = result {
        fail(&e);
    }
}

fn fail(error: &dyn std::fmt::Display) -> ! {
    eprintln!("wshub: {error}");
    std::process::exit(1);
}
