//! `hil`: the hardware-in-the-loop harness of connect-tunnel, one binary with subcommands.
//!
//! - `hil camera`: the device side. Streams RTP through an HTTP(S) proxy with CONNECT using
//!   `Connector::run_reconnecting` and `Backoff`, writes a result file.
//! - `hil server`: the media server. Checks sequence numbers, checksums and latency across the
//!   camera's reconnections; answers with receiver reports and a final receipt.
//! - `hil relay`: a TCP relay whose link can be delayed, jittered, rate-limited, cut and reset
//!   while a stream runs (control port).
//! - `hil ctl ADDR COMMAND`: sends one command to a relay's or server's control port.
//! - `hil judge` / `hil table`: checks a scenario's criteria; prints the summary table.
//!
//! See hil-tests/README.md for the scenarios and how the scripts use these.

mod args;
mod camera;
mod ctl;
mod judge;
mod logger;
mod relay;
mod server;
mod wire;

use std::process::ExitCode;

const HELP: &str = "\
hil: hardware-in-the-loop harness for connect-tunnel

    hil camera ...   stream RTP through a proxy (run_reconnecting), write a result file
    hil server ...   media server that checks the stream and reports back through the tunnel
    hil relay ...    TCP relay with switchable delay, jitter, rate limit, cut, reset
    hil ctl ADDR COMMAND...      one command to a relay or server control port
    hil judge ...    check one scenario's criteria, append a summary row
    hil table ROWS   print the summary table

`hil SUBCOMMAND --help` for each. Exit code: 0 ok/pass, 1 fail, 2 usage error.
";

fn main() -> ExitCode {
    let mut argv: Vec<String> = std::env::args().skip(1).collect();
    if argv.is_empty() {
        eprint!("{HELP}");
        return ExitCode::from(2);
    }
    let sub = argv.remove(0);
    let wants_help = argv.iter().any(|a| a == "--help" || a == "-h");
    let (help, name): (&str, &'static str) = match sub.as_str() {
        "camera" => (camera::HELP, "camera"),
        "server" => (server::HELP, "server"),
        "relay" => (relay::HELP, "relay"),
        "judge" | "table" => (judge::HELP, "judge"),
        "ctl" => ("hil ctl ADDR COMMAND [ARGS...]\n", "ctl"),
        "-h" | "--help" | "help" => {
            print!("{HELP}");
            return ExitCode::SUCCESS;
        }
        other => {
            eprintln!("hil: unknown subcommand {other:?}\n\n{HELP}");
            return ExitCode::from(2);
        }
    };
    if wants_help {
        print!("{help}");
        return ExitCode::SUCCESS;
    }
    logger::init(name);
    let args = args::Args::new(argv.clone());
    let result = match sub.as_str() {
        "camera" => camera::main(args),
        "server" => server::main(args),
        "relay" => relay::main(args),
        "judge" => judge::main(args),
        "table" => judge::table(argv),
        "ctl" => ctl::main(argv),
        _ => unreachable!(),
    };
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("hil {sub}: {e}");
            ExitCode::from(2)
        }
    }
}
