//! The `wshub` binary: parse the command line, build a `Config`, run the server.

use clap::Parser;
use wshub::cli::{Cli, Mode};

fn main() {
    let cli = Cli::parse();
    cli.init_logging();
    let result = match cli.mode() {
        Mode::Hub => wshub::App::new().workers(cli.workers).run(cli.config()),
        Mode::Echo => wshub::run(cli.config(), |_| wshub::Echo),
        Mode::Relay => wshub::run(cli.config(), |_| wshub::Relay),
    };
    if let Err(e) = result {
        eprintln!("wshub: {e}");
        std::process::exit(1);
    }
}
