//! Runs the reference reverse proxy on its own, for trying a camera (or curl) against it.
//!
//! ```text
//! cargo run --example reverse_proxy -- \
//!     --listen 127.0.0.1:8443 \
//!     --map media.example.com:443=127.0.0.1:5004 \
//!     --user camera:secret:media.example.com:443
//! ```
//!
//! See `--help` for every flag, and `examples/common/reverse_proxy.rs` for what the proxy does.

#[path = "common/mod.rs"]
mod common;

use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::process::ExitCode;

use common::reverse_proxy::{ProxyConfig, ReverseProxy, User};

const HELP: &str = "\
reverse_proxy: the connect-tunnel reference reverse proxy (answers HTTP CONNECT)

USAGE:
    cargo run --example reverse_proxy -- [OPTIONS]

OPTIONS:
    --listen ADDR           Address to listen on [default: 127.0.0.1:8443]
    --map NAME:PORT=ADDR    Add a row to the address mapping table: CONNECT NAME:PORT is
                            relayed to ADDR (host:port). Repeatable. A name not in the
                            table is refused with 403.
    --user USER:PASS:NAMES  Add an identity with Basic credentials USER:PASS that may reach
                            NAMES, a comma-separated list of NAME:PORT (the password cannot
                            contain ':'). Repeatable. With no --user, no credentials are
                            asked for and every mapped name may be reached.
    --plain                 Listen with plain TCP instead of TLS.
    --ca-out FILE           Where to write the PEM of the CA certificate clients must trust
                            [default: <temp dir>/connect-tunnel-proxy-ca.pem]. TLS only.
    -h, --help              Print this help.

Replies: 407 (with Proxy-Authenticate: Basic) for missing or wrong credentials, 403 for a
name outside the table or the identity's list, 502 when the back-end cannot be reached,
then 200 and a byte-for-byte relay that preserves half-close.

Logs go to stderr; set RUST_LOG=debug for more. Stop with Ctrl-C.

EXAMPLE:
    cargo run --example reverse_proxy -- --map media.example.com:443=127.0.0.1:5004 \\
        --user camera:secret:media.example.com:443
    curl -p -x https://camera:secret@localhost:8443 \\
        --proxy-cacert /tmp/connect-tunnel-proxy-ca.pem http://media.example.com:443/
";

struct Args {
    config: ProxyConfig,
    ca_out: PathBuf,
}

fn parse_args(mut args: impl Iterator<Item = String>) -> Result<Option<Args>, String> {
    let mut config = ProxyConfig {
        listen: SocketAddr::from(([127, 0, 0, 1], 8443)),
        ..ProxyConfig::default()
    };
    let mut ca_out = std::env::temp_dir().join("connect-tunnel-proxy-ca.pem");
    while let Some(flag) = args.next() {
        let mut value = |name: &str| args.next().ok_or(format!("{name} needs a value"));
        match flag.as_str() {
            "-h" | "--help" => return Ok(None),
            "--listen" => config.listen = resolve(&value("--listen")?)?,
            "--map" => {
                let spec = value("--map")?;
                let (name, addr) = spec
                    .split_once('=')
                    .ok_or(format!("--map {spec}: expected NAME:PORT=ADDR"))?;
                if !name.contains(':') {
                    return Err(format!("--map {spec}: the public name needs a port"));
                }
                config.mapping.push((name.to_owned(), resolve(addr)?));
            }
            "--user" => {
                let spec = value("--user")?;
                let mut parts = spec.splitn(3, ':');
                let (Some(name), Some(password), Some(names)) =
                    (parts.next(), parts.next(), parts.next())
                else {
                    return Err("--user: expected USER:PASS:NAME:PORT[,NAME:PORT...]".into());
                };
                let allowed: Vec<&str> = names.split(',').filter(|n| !n.is_empty()).collect();
                config.users.push(User::new(name, password, &allowed));
            }
            "--plain" => config.tls = false,
            "--ca-out" => ca_out = PathBuf::from(value("--ca-out")?),
            other => return Err(format!("unknown argument {other:?} (try --help)")),
        }
    }
    Ok(Some(Args { config, ca_out }))
}

fn resolve(addr: &str) -> Result<SocketAddr, String> {
    addr.to_socket_addrs()
        .map_err(|e| format!("{addr}: {e}"))?
        .next()
        .ok_or(format!("{addr}: no address"))
}

fn main() -> ExitCode {
    common::logger::init(log::LevelFilter::Info);
    let args = match parse_args(std::env::args().skip(1)) {
        Ok(Some(args)) => args,
        Ok(None) => {
            print!("{HELP}");
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("reverse_proxy: {e}");
            return ExitCode::from(2);
        }
    };
    if args.config.mapping.is_empty() {
        eprintln!("reverse_proxy: warning: the mapping table is empty; every CONNECT gets 403");
    }
    for (name, addr) in &args.config.mapping {
        println!("map   {name} -> {addr}");
    }
    for user in &args.config.users {
        println!("user  {} may reach {}", user.name, user.allowed.join(", "));
    }
    let proxy = match ReverseProxy::start(args.config) {
        Ok(proxy) => proxy,
        Err(e) => {
            eprintln!("reverse_proxy: cannot start: {e}");
            return ExitCode::FAILURE;
        }
    };
    let scheme = if proxy.is_tls() { "https" } else { "http" };
    println!("proxy {scheme}://{}", proxy.local_addr());
    if proxy.is_tls() {
        if let Err(e) = std::fs::write(&args.ca_out, proxy.ca_pem()) {
            eprintln!("reverse_proxy: cannot write {}: {e}", args.ca_out.display());
            return ExitCode::FAILURE;
        }
        println!(
            "ca    {} (trust this to reach the proxy)",
            args.ca_out.display()
        );
    }
    loop {
        std::thread::park();
    }
}
